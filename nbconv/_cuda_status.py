"""Whether a real CUDA GPU is usable (kept apart from nbconv._cuda so asking never imports kernels)."""


def cuda_available():
    """True when a real CUDA GPU can run nbconv's CUDA kernels; False under Numba's CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1), without the CUDA driver, or when numba's CUDA support is missing."""
    try:
        from numba import config
        if config.ENABLE_CUDASIM:
            return False
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # no numba.cuda, no driver, or a driver that fails to initialise
        return False
