"""asv benchmarks: nbconv's convolutions (time, peak memory, GFLOP/s) and PyTorch's as a reference.

Every class warms the JIT up in `setup` (asv's `setup_cache` would run in another process, so it
cannot warm a process's dispatchers; on-disk caching makes later processes' warm-up cheap).
The PyTorch classes raise NotImplementedError in `setup`, which asv reports as skipped, when torch
is not installed. PyTorch gets channels_last tensors, its fast layout for NHWC data.
"""
import time

import numpy as np

import nbconv

from .common import (CONV1D_SHAPES, CONV2D_SHAPES, DEPTHWISE_SHAPES, TRANSPOSE2D_SHAPES, conv1d_data,
                     conv1d_flops, conv2d_data, conv2d_flops, transpose2d_data, transpose2d_flops)

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


class _Conv2dData(_Benchmark):
    params = [CONV2D_SHAPES]

    def prepare(self, shape):
        self.x, self.w, self.b, self.gy = conv2d_data(shape)
        _, _, _, _, _, _, stride, pad, groups = shape
        self.options = dict(stride=stride, padding=pad, groups=groups)
        self.flops = conv2d_flops(shape)


class Conv2dForward(_Conv2dData):
    """nbconv.conv2d with bias."""

    def compute(self):
        return nbconv.conv2d(self.x, self.w, self.b, **self.options)


class Conv2dBackward(_Conv2dData):
    """nbconv.conv2d_backward: gradients w.r.t. input, weight and bias (twice the forward's FLOPs)."""

    def prepare(self, shape):
        super().prepare(shape)
        self.flops = 2 * conv2d_flops(shape)

    def compute(self):
        return nbconv.conv2d_backward(self.gy, self.x, self.w, needs=("input", "weight", "bias"),
                                      **self.options)


class DepthwiseForward(Conv2dForward):
    """nbconv.conv2d with groups == C_in == C_out."""
    params = [DEPTHWISE_SHAPES]


class DepthwiseBackward(Conv2dBackward):
    """nbconv.conv2d_backward with groups == C_in == C_out."""
    params = [DEPTHWISE_SHAPES]


class _Conv1dData(_Benchmark):
    params = [CONV1D_SHAPES]

    def prepare(self, shape):
        self.x, self.w, self.b, self.gy = conv1d_data(shape)
        _, _, _, _, _, stride, pad, groups = shape
        self.options = dict(stride=stride, padding=pad, groups=groups)
        self.flops = conv1d_flops(shape)


class Conv1dForward(_Conv1dData):
    """nbconv.conv1d with bias."""

    def compute(self):
        return nbconv.conv1d(self.x, self.w, self.b, **self.options)


class Conv1dBackward(_Conv1dData):
    """nbconv.conv1d_backward: gradients w.r.t. input, weight and bias."""

    def prepare(self, shape):
        super().prepare(shape)
        self.flops = 2 * conv1d_flops(shape)

    def compute(self):
        return nbconv.conv1d_backward(self.gy, self.x, self.w, needs=("input", "weight", "bias"),
                                      **self.options)


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


def _torch_nchw(torch, a, requires_grad=False):
    """An (N, H, W, C) array as a channels_last NCHW tensor (a permuted view of a copy)."""
    return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).requires_grad_(requires_grad)


def _torch_oihw(torch, w, requires_grad=False):
    """A (KH, KW, I, O) weight as an (O, I, KH, KW) tensor in PyTorch's channels_last weight layout."""
    t = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


class _TorchConv2dData(_Conv2dData):
    def prepare(self, shape):
        torch = _import_torch()
        super().prepare(shape)
        self.torch = torch
        self.tx = _torch_nchw(torch, self.x, requires_grad=True)
        self.tw = _torch_oihw(torch, self.w, requires_grad=True)
        self.tb = torch.from_numpy(self.b.copy()).requires_grad_(True)
        self.tgy = _torch_nchw(torch, self.gy)


class TorchConv2dForward(_TorchConv2dData):
    """torch.nn.functional.conv2d on channels_last tensors (no autograd graph), the reference."""

    def compute(self):
        with self.torch.no_grad():
            return self.torch.nn.functional.conv2d(self.tx, self.tw, self.tb, **self.options)


class TorchConv2dBackward(_TorchConv2dData):
    """PyTorch's autograd backward of conv2d w.r.t. input, weight and bias (the graph is built once)."""

    def prepare(self, shape):
        super().prepare(shape)
        self.flops = 2 * conv2d_flops(shape)
        self.ty = self.torch.nn.functional.conv2d(self.tx, self.tw, self.tb, **self.options)

    def compute(self):
        return self.torch.autograd.grad(self.ty, (self.tx, self.tw, self.tb), self.tgy, retain_graph=True)


class TorchConvTranspose2d(ConvTranspose2d):
    """torch.nn.functional.conv_transpose2d on channels_last tensors (no autograd graph)."""

    def prepare(self, shape):
        torch = _import_torch()
        super().prepare(shape)
        self.torch = torch
        self.tx = _torch_nchw(torch, self.x)
        # nbconv's (KH, KW, C_out // groups, C_in) is PyTorch's (C_in, C_out // groups, KH, KW) permuted
        self.tw = _torch_oihw(torch, self.w)
        self.tb = torch.from_numpy(self.b.copy())

    def compute(self):
        with self.torch.no_grad():
            return self.torch.nn.functional.conv_transpose2d(self.tx, self.tw, self.tb, **self.options)
