"""asv benchmarks: nbconv's convolutions (time, peak memory, GFLOP/s) and PyTorch's as a reference.

SuiteForward, SuiteBackward and their Torch* references take every shape of the named suite
(nbconv/_bench_suite.py: layers of real networks, also what `python -m nbconv bench` runs) by name.
The per-dimension classes (Conv2dForward, Conv1dForward, ...) keep their tuple parameters from
common.py (the shapes of issues 3 and 10 and a few more) and with them their recorded history.

Every class warms the JIT up in `setup` (asv's `setup_cache` would run in another process, so it
cannot warm a process's dispatchers; on-disk caching makes later processes' warm-up cheap).
The PyTorch classes raise NotImplementedError in `setup`, which asv reports as skipped, when torch
is not installed. PyTorch gets channels_last (channels_last_3d) tensors, its fast layout for
channels-last data.
"""
import time
from collections import namedtuple

import numpy as np

import nbconv
from nbconv import _bench_suite

from .common import (CONV1D_SHAPES, CONV2D_SHAPES, CONV3D_SHAPES, DEPTHWISE_SHAPES, SUITE_NAMES, TRANSPOSE2D_SHAPES,
                     conv1d_data, conv1d_flops, conv2d_data, conv2d_flops, conv3d_data, conv3d_flops,
                     transpose2d_data, transpose2d_flops)

# Generous: the first process after an install compiles every kernel it touches inside `setup`.
TIMEOUT = 600


def best_seconds(fn, min_calls=10, min_total=0.1, max_calls=1000):
    """The fastest of repeated calls of fn(): at least `min_calls` calls and `min_total` seconds."""
    best, total, calls = float("inf"), 0.0, 0
    while calls < max_calls and (calls < min_calls or total < min_total):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, total, calls = min(best, elapsed), total + elapsed, calls + 1
    return best


def _gflops(fn, flops):
    return float(f"{flops / best_seconds(fn) / 1e9:.3g}")  # 3 significant digits: readable tables


class _Benchmark:
    """Shared driver: subclasses set `params`, `prepare(shape)` (sets self.flops) and `compute()`
    (which returns its result, so tests can compare the classes with each other)."""
    param_names = ["shape"]
    timeout = TIMEOUT

    def setup(self, shape):
        self.prepare(shape)
        self.compute()  # JIT warm-up (or a load from the on-disk cache)

    def time_compute(self, shape):
        self.compute()

    def peakmem_compute(self, shape):
        self.compute()

    def track_gflops(self, shape):
        return _gflops(self.compute, self.flops)

    track_gflops.unit = "GFLOP/s"


# What a conv{1,2,3}d benchmark needs, by number of spatial dimensions: common.py's seeded data builder
# and forward FLOP count, nbconv's forward and backward.
_Conv = namedtuple("_Conv", "data flops forward backward")
_CONVS = {
    1: _Conv(conv1d_data, conv1d_flops, nbconv.conv1d, nbconv.conv1d_backward),
    2: _Conv(conv2d_data, conv2d_flops, nbconv.conv2d, nbconv.conv2d_backward),
    3: _Conv(conv3d_data, conv3d_flops, nbconv.conv3d, nbconv.conv3d_backward),
}


class _ConvData(_Benchmark):
    """x, w, bias and grad_out of a convolution: subclasses set `params` (shapes ending in stride, pad,
    groups, as in common.py) and `dims`, the number of spatial dimensions."""
    flops_factor = 1  # the backward classes: 2 (gradients w.r.t. input and weight)

    def prepare(self, shape):
        self.conv = _CONVS[self.dims]
        self.x, self.w, self.b, self.gy = self.conv.data(shape)
        stride, pad, groups = shape[-3:]
        self.options = dict(stride=stride, padding=pad, groups=groups)
        self.flops = self.flops_factor * self.conv.flops(shape)


class _ConvForward(_ConvData):
    """nbconv's forward with bias."""

    def compute(self):
        return self.conv.forward(self.x, self.w, self.b, **self.options)


class _ConvBackward(_ConvData):
    """nbconv's backward: gradients w.r.t. input, weight and bias (twice the forward's FLOPs)."""
    flops_factor = 2

    def compute(self):
        return self.conv.backward(self.gy, self.x, self.w, needs=("input", "weight", "bias"), **self.options)


class Conv2dForward(_ConvForward):
    """nbconv.conv2d with bias."""
    params, dims = [CONV2D_SHAPES], 2


class Conv2dBackward(_ConvBackward):
    """nbconv.conv2d_backward: gradients w.r.t. input, weight and bias (twice the forward's FLOPs)."""
    params, dims = [CONV2D_SHAPES], 2


class DepthwiseForward(Conv2dForward):
    """nbconv.conv2d with groups == C_in == C_out."""
    params = [DEPTHWISE_SHAPES]


class DepthwiseBackward(Conv2dBackward):
    """nbconv.conv2d_backward with groups == C_in == C_out."""
    params = [DEPTHWISE_SHAPES]


class Conv1dForward(_ConvForward):
    """nbconv.conv1d with bias."""
    params, dims = [CONV1D_SHAPES], 1


class Conv1dBackward(_ConvBackward):
    """nbconv.conv1d_backward: gradients w.r.t. input, weight and bias."""
    params, dims = [CONV1D_SHAPES], 1


class Conv3dForward(_ConvForward):
    """nbconv.conv3d with bias."""
    params, dims = [CONV3D_SHAPES], 3


class Conv3dBackward(_ConvBackward):
    """nbconv.conv3d_backward: gradients w.r.t. input, weight and bias (twice the forward's FLOPs)."""
    params, dims = [CONV3D_SHAPES], 3


class ConvTranspose2d(_Benchmark):
    """nbconv.conv_transpose2d with bias."""
    params = [TRANSPOSE2D_SHAPES]

    def prepare(self, shape):
        self.x, self.w, self.b = transpose2d_data(shape)
        _, _, _, _, _, _, stride, pad, groups = shape
        self.options = dict(stride=stride, padding=pad, groups=groups)
        self.flops = transpose2d_flops(shape)

    def compute(self):
        return nbconv.conv_transpose2d(self.x, self.w, self.b, **self.options)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("PyTorch is not installed") from None
    return torch


def _torch_activation(torch, a, requires_grad=False):
    """A channels-last array (N, *sizes, C) as PyTorch's (N, C, *sizes) tensor, channels_last
    (channels_last_3d) in memory: a permuted view of a copy."""
    t = torch.from_numpy(np.array(a)).permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t.requires_grad_(requires_grad)


def _torch_weight(torch, w, requires_grad=False):
    """A (*kernel, I, O) weight as an (O, I, *kernel) tensor in PyTorch's channels_last (channels_last_3d)
    weight layout."""
    dims = w.ndim - 2
    layout = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
    t = torch.from_numpy(np.array(w)).permute(dims + 1, dims, *range(dims)).contiguous(memory_format=layout)
    return t.requires_grad_(requires_grad)


class _TorchConvData(_ConvData):
    """The same data as PyTorch tensors and torch.nn.functional's conv of `dims` dimensions."""

    def prepare(self, shape):
        torch = _import_torch()
        super().prepare(shape)
        self.torch = torch
        self.torch_conv = getattr(torch.nn.functional, f"conv{self.dims}d")
        self.tx = _torch_activation(torch, self.x, requires_grad=True)
        self.tw = _torch_weight(torch, self.w, requires_grad=True)
        self.tb = torch.from_numpy(self.b.copy()).requires_grad_(True)
        self.tgy = _torch_activation(torch, self.gy)


class _TorchConvForward(_TorchConvData):
    """PyTorch's forward on channels-last tensors (no autograd graph), the reference."""

    def compute(self):
        with self.torch.no_grad():
            return self.torch_conv(self.tx, self.tw, self.tb, **self.options)


class _TorchConvBackward(_TorchConvData):
    """PyTorch's autograd backward w.r.t. input, weight and bias (the graph is built once)."""
    flops_factor = 2

    def prepare(self, shape):
        super().prepare(shape)
        self.ty = self.torch_conv(self.tx, self.tw, self.tb, **self.options)

    def compute(self):
        return self.torch.autograd.grad(self.ty, (self.tx, self.tw, self.tb), self.tgy, retain_graph=True)


class TorchConv2dForward(_TorchConvForward):
    """torch.nn.functional.conv2d on channels_last tensors (no autograd graph), the reference."""
    params, dims = [CONV2D_SHAPES], 2


class TorchConv2dBackward(_TorchConvBackward):
    """PyTorch's autograd backward of conv2d w.r.t. input, weight and bias (the graph is built once)."""
    params, dims = [CONV2D_SHAPES], 2


class TorchConv3dForward(_TorchConvForward):
    """torch.nn.functional.conv3d on channels_last_3d tensors (no autograd graph), the reference."""
    params, dims = [CONV3D_SHAPES], 3


class TorchConv3dBackward(_TorchConvBackward):
    """PyTorch's autograd backward of conv3d w.r.t. input, weight and bias (the graph is built once)."""
    params, dims = [CONV3D_SHAPES], 3


class TorchConvTranspose2d(ConvTranspose2d):
    """torch.nn.functional.conv_transpose2d on channels_last tensors (no autograd graph)."""

    def prepare(self, shape):
        torch = _import_torch()
        super().prepare(shape)
        self.torch = torch
        self.tx = _torch_activation(torch, self.x)
        # nbconv's (KH, KW, C_out // groups, C_in) is PyTorch's (C_in, C_out // groups, KH, KW) permuted
        self.tw = _torch_weight(torch, self.w)
        self.tb = torch.from_numpy(self.b.copy())

    def compute(self):
        with self.torch.no_grad():
            return self.torch.nn.functional.conv_transpose2d(self.tx, self.tw, self.tb, **self.options)


# ---------------------------------------------------------------- the named suite, by name

class _Suite(_Benchmark):
    """One shape of the named suite (nbconv/_bench_suite.py), in its own dtype: subclasses set `calls`
    (which of the library's (forward, backward) they time) and `backward`."""
    param_names = ["name"]
    params = [SUITE_NAMES]
    backward = False

    def prepare(self, name):
        shape = _bench_suite.by_name(name)
        calls = self.calls(shape, _bench_suite.make_data(shape))
        self.call = calls[1] if self.backward else calls[0]
        self.flops = (2 if self.backward else 1) * shape.flops

    def calls(self, shape, data):
        return _bench_suite.nbconv_calls(shape, data)

    def compute(self):
        return self.call()


class SuiteForward(_Suite):
    """nbconv's forward with bias (convolution or transposed convolution) of each named suite shape."""


class SuiteBackward(_Suite):
    """nbconv's backward of each named suite shape: gradients w.r.t. input, weight and bias (twice the
    forward's FLOPs; a transposed convolution's composed of the public functions as its tape VJP is)."""
    backward = True


class TorchSuiteForward(_Suite):
    """torch.nn.functional's conv / conv_transpose on channels_last (channels_last_3d) tensors, no autograd
    graph, for each named suite shape."""

    def calls(self, shape, data):
        return _bench_suite.torch_calls(_import_torch(), shape, data)


class TorchSuiteBackward(TorchSuiteForward):
    """PyTorch's autograd backward w.r.t. input, weight and bias (the graph is built once) of each named
    suite shape."""
    backward = True
