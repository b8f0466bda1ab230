"""Where nbconv's CUDA kernels run, what orders them, and who allocates for them (no kernels here).

- Device: numba launches and allocates on its current context's device, so every backend call runs
  inside ``with cuda.gpus[index]`` for the device its arrays live on (:func:`device_of`): a tensor on
  cuda:1 runs on GPU 1, whatever the current device.
- Stream (:func:`producer_stream`, :func:`launch_stream`): the stream that orders a launch after the
  producers of its operands, without blocking the host:
  PyTorch CUDA tensors (their ``__cuda_array_interface__`` is version 2, without a stream): PyTorch's
  current stream on the tensor's device, through ``cuda.external_stream``; objects whose interface
  (version 3) names a stream (CuPy): that stream; numba device arrays: their own ``stream``
  attribute (set by :func:`as_array` for the two cases above, by the backend for its results, or by
  the user); otherwise the default stream. Operands that name several streams: the launch goes to
  the first one and waits for the others' work through events (on the GPU). Results carry the launch
  stream (numba exports it in their own ``__cuda_array_interface__``), so a consumer orders itself
  after nbconv's kernels; and no numba operation on them synchronizes the host (numba synchronizes
  only arrays without a stream).
- Allocation (:func:`allocator`, :func:`empty`): numba allocations, or whatever a caller installs for
  the duration of a block (the PyTorch adapter: PyTorch's caching allocator, so results and
  workspaces are visible to ``torch.cuda.memory_allocated`` and no call pays for ``cuMemAlloc``).

Under Numba's CUDA simulator there is one device and streams are not modelled: the functions
that would create streams return 0 (the default), and ``__cuda_array_interface__`` objects are refused.
"""
import contextlib
import contextvars
from typing import NamedTuple

import numba
import numpy as np

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

_allocator = contextvars.ContextVar("nbconv_cuda_allocator", default=None)


class StreamSpec(NamedTuple):
    """What orders work after an array's producer: kind is "torch" (value: the device index, whose
    PyTorch current stream it is), "handle" (value: a CUDA stream handle from the array interface),
    "numba" (value: a numba stream) or "default" (value: None)."""

    kind: str
    value: object


def _is_numba_array(a):
    return type(a).__module__.startswith("numba.cuda")


def _is_torch_tensor(a):
    return type(a).__module__.startswith("torch") and getattr(getattr(a, "device", None), "type", None) == "cuda"


def producer_stream(a):
    """The StreamSpec of array `a` (a numba device array or an object exposing __cuda_array_interface__);
    pure: it reads attributes only."""
    if _is_torch_tensor(a):
        return StreamSpec("torch", a.device.index)
    if _is_numba_array(a):
        stream = getattr(a, "stream", 0)
        return StreamSpec("numba", stream) if stream else StreamSpec("default", None)
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is not None and iface.get("version", 0) >= 3 and iface.get("stream") is not None:
        return StreamSpec("handle", int(iface["stream"]))
    return StreamSpec("default", None)


def device_of(a):
    """The CUDA device ordinal that array `a`'s memory lives on, or None where that is not known (the
    simulator's arrays). PyTorch tensors and CuPy arrays say so; numba arrays by their context;
    anything else by asking the driver about the pointer."""
    device = getattr(a, "device", None)
    if _is_torch_tensor(a):
        return device.index
    if device is not None and isinstance(getattr(device, "id", None), int):   # CuPy
        return device.id
    if _is_numba_array(a):
        context = getattr(getattr(a, "gpu_data", None), "context", None)
        return None if context is None else context.device.id
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is not None and iface["data"][0]:
        return _pointer_device(iface["data"][0])
    return None


def _pointer_device(ptr):
    """The device ordinal of device pointer `ptr` (cuPointerGetAttribute)."""
    from numba import cuda
    from numba.cuda.cudadrv import driver
    cuda.current_context()   # initialises the driver
    if getattr(driver, "USE_NV_BINDING", True):   # numba-cuda always uses NVIDIA's bindings
        binding = driver.binding
        attr = binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        return int(driver.driver.cuPointerGetAttribute(attr, binding.CUdeviceptr(ptr)))
    import ctypes

    from numba.cuda.cudadrv import enums
    value = ctypes.c_int()
    driver.driver.cuPointerGetAttribute(ctypes.byref(value), enums.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr)
    return value.value


def choose_stream(handles):
    """(index of the launch stream, indices whose streams it must wait for) among the operands' stream
    handles (0: the default stream): the first non-default stream, waiting for every other distinct one."""
    chosen = next((i for i, h in enumerate(handles) if h), None)
    if chosen is None:
        return None, []
    seen, waits = {handles[chosen]}, []
    for i, h in enumerate(handles):
        if h not in seen:
            seen.add(h)
            waits.append(i)
    return chosen, waits


def default_stream():
    """numba's default stream as a stream object (so arrays carrying it never synchronize the host), or
    0 under the simulator."""
    if SIMULATOR:
        return 0
    from numba import cuda
    if numba.config.CUDA_PER_THREAD_DEFAULT_STREAM:
        return cuda.per_thread_default_stream()
    return cuda.legacy_default_stream()


def _handle(stream):
    return int(stream) if stream else 0


def launch_stream(arrays):
    """The stream to launch on for these numba device arrays (see the module docstring), after making it
    wait on the GPU for every other stream they name (0 under the simulator)."""
    if SIMULATOR:
        return 0
    from numba import cuda
    streams = [getattr(a, "stream", 0) for a in arrays if a is not None]
    chosen, waits = choose_stream([_handle(s) for s in streams])
    if chosen is None:
        return default_stream()
    stream = streams[chosen]
    for i in waits:
        event = cuda.event(timing=False)
        event.record(stream=streams[i] or default_stream())
        event.wait(stream=stream)
    return stream


@contextlib.contextmanager
def placement(*arrays):
    """Inside: numba's context is the device of the first array whose device is known; yields the launch
    stream for these arrays (see launch_stream)."""
    device = next((d for d in (device_of(a) for a in arrays if a is not None) if d is not None), None)
    if SIMULATOR or device is None:
        yield launch_stream(arrays)
        return
    from numba import cuda
    with cuda.gpus[device]:
        yield launch_stream(arrays)


def as_array(a):
    """`a` as a numba device array without a copy, on its own device, carrying the stream that orders work
    after its producer (see the module docstring). The host is never synchronized."""
    if a is None or _is_numba_array(a):
        return a
    from numba import cuda
    if SIMULATOR or not hasattr(cuda, "from_cuda_array_interface"):
        raise TypeError(f"{type(a).__name__} exposes __cuda_array_interface__, which Numba's CUDA simulator "
                        "cannot read: pass numba device arrays (cuda.to_device) under the simulator")
    device = device_of(a)
    with (cuda.gpus[device] if device is not None else contextlib.nullcontext()):
        array = cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
        spec = producer_stream(a)
        if spec.kind == "torch":
            import torch
            handle = torch.cuda.current_stream(spec.value).cuda_stream
            array.stream = cuda.external_stream(handle) if handle else default_stream()
        elif not array.stream:
            array.stream = default_stream()
    return array


@contextlib.contextmanager
def allocator(allocate):
    """Within the block (this thread or task), nbconv's CUDA results and workspaces are
    `allocate(shape, dtype)`: a C-contiguous array of that shape and NumPy dtype on the current device,
    as a numba device array or any object exposing __cuda_array_interface__ (e.g. a PyTorch tensor,
    whose memory then stays with PyTorch's caching allocator). The object is kept alive by the array
    nbconv returns."""
    token = _allocator.set(allocate)
    try:
        yield
    finally:
        _allocator.reset(token)


def empty(shape, dtype, stream):
    """A new uninitialised C-contiguous device array on the current device, carrying `stream`."""
    from numba import cuda
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    allocate = _allocator.get()
    if allocate is None:
        return cuda.device_array(shape, dtype=dtype, stream=stream)
    obj = allocate(shape, dtype)
    array = obj if _is_numba_array(obj) else cuda.from_cuda_array_interface(
        obj.__cuda_array_interface__, owner=obj, sync=False)
    if tuple(array.shape) != shape or np.dtype(array.dtype) != dtype or not array.is_c_contiguous():
        raise ValueError(f"the installed allocator returned {np.dtype(array.dtype)}{tuple(array.shape)} "
                         f"(C-contiguous: {array.is_c_contiguous()}) for {dtype}{shape}")
    if not SIMULATOR:
        array.stream = stream
    return array
