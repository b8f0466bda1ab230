"""What a CUDA device array is, and whether a GPU is usable (a leaf: imports nothing of nbconv).

Kept apart from the CUDA backend so that asking never imports numba.cuda or compiles a kernel.
"""


def is_device_array(a):
    """True for numba device arrays (real or simulated) and objects exposing __cuda_array_interface__."""
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("numba.cuda")


def as_device_array(a):
    """`a` as a numba device array: itself, or a zero-copy view of a __cuda_array_interface__ object."""
    if type(a).__module__.startswith("numba.cuda"):   # numba's device arrays, real or simulated
        return a
    from numba import cuda
    if not hasattr(cuda, "as_cuda_array"):
        raise TypeError(f"{type(a).__name__} exposes __cuda_array_interface__, which Numba's CUDA simulator "
                        "cannot read: pass numba device arrays (cuda.to_device) under the simulator")
    return cuda.as_cuda_array(a)


def cuda_available() -> bool:
    """Whether a real CUDA GPU can run nbconv's CUDA kernels.

    False under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), without the CUDA driver, or when
    numba's CUDA support is missing. Never raises, never compiles a kernel.

    Returns
    -------
    bool

    Examples
    --------
    >>> import nbconv
    >>> isinstance(nbconv.cuda_available(), bool)
    True
    """
    try:
        from numba import config
        if config.ENABLE_CUDASIM:
            return False
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # no numba.cuda, no driver, or a driver that fails to initialise
        return False
