"""PyTorch adapter: nbconv's kernels as `torch.library` custom ops, and drop-in functions and modules.

Layouts are PyTorch's: activations (N, C, *spatial), conv weights (C_out, C_in // groups, *kernel),
transposed-conv weights (C_in, C_out // groups, *kernel). The kernels see channels-last views of
the same memory: `t.movedim(1, -1)` of a channels_last tensor is contiguous, and any other layout is
converted once inside nbconv (which accepts any strides).

Results follow the input's memory format, as torch.nn's convolutions do: a channels-last-strided
input (channels_last, channels_last_3d, or the same strides in 1-D) gives a channels-last result,
the very tensor the kernel wrote (no copy); any other input gives a contiguous (N, C, *spatial)
result (one copy). Weight gradients are contiguous (C_out, C_in // groups, *kernel). The backward
converts an incoming NCHW gradient to channels-last once (for both of its ops) and returns the
input gradient channels-last (see `_backward_layout`); autograd lays a leaf's .grad out like the leaf.

dtypes: float32 and float64 compute in their own precision; float16 and bfloat16 are storage types
(each operand becomes one channels-last float32 copy, the kernels accumulate in float32, the result
is rounded to the input dtype). All tensor arguments share one dtype and one device. Under
`torch.autocast` the public functions cast their floating inputs (not float64) to the autocast dtype,
as torch.nn.functional's convolutions do.

Three custom ops (namespace "nbconv"), each differentiable through the others, so double
backward works. With J_w v = conv(v, w) (linear in v, whatever the padding mode) and
K_x u = conv(x, u) (linear in u)::

    conv(x, w, b)           = J_w x + b       grads: x <- conv_transpose(g, w), w <- conv_weight_grad(g, x)
    conv_transpose(x, w, b) = J_w^T x + b     grads: x <- conv(g, w),           w <- conv_weight_grad(x, g)
    conv_weight_grad(g, x)  = K_x^T g         grads: g <- conv(x, u),           x <- conv_transpose(g, u)

(b's gradient is g summed over all but the channel axis). With padding_mode "zeros" conv_transpose
is PyTorch's transposed convolution; with the other modes it also folds the gradient of the padded
border back onto the input positions it copies. Each op is bilinear in its two tensor operands, so
its forward-mode derivative (jvp) is the op applied to (tangent, other) plus (other, tangent), plus
the bias tangent.

Transforms. The ops carry `register_autograd` (reverse mode, used by torch.compile/torch.export and
by direct `torch.ops.nbconv` calls) and `register_vmap`. The public functions call them through
three `torch.autograd.Function`s (`_Conv`, `_ConvTranspose`, `_WeightGrad`) with `setup_context`,
`backward`, `jvp` and `vmap` (generate_vmap_rule=False) whose rules are written with the same Functions, so
every torch.func transform (grad, vjp, jvp, vmap, jacrev, jacfwd, hessian) and
`torch.autograd.forward_ad` compose at any depth. Batching rules: a batch of inputs is a bigger N; a
batch of weights (or of weight-gradient operands) is a grouped convolution with groups * B groups.
Dynamo cannot trace an autograd.Function with a custom jvp, so while torch.compile/torch.export
trace (`torch.compiler.is_compiling()`) the functions call the ops directly; forward-mode AD through
the ops themselves, or under torch.compile, raises (a custom op has no jvp hook).

Each op call validates its arguments once (nbconv._shapes.conv_params / transpose_params, with
nbconv's ValueError/TypeError messages naming the argument) and calls nbconv.conv's internal entry
points, which take the parsed ConvParams and shapes: `forward`, `transpose`, `input_grad` and
`weight_grad`. 1, 2 and 3 spatial dims share every line of this module.

CUDA tensors go to nbconv's CUDA kernels through `__cuda_array_interface__` (no host copies), in
numba's context for the tensor's GPU, ordered with PyTorch's current stream (see `_on_device`);
forward and transposed-convolution results are allocated by PyTorch (its caching allocator).
"""
import contextlib
import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad as fwAD

from nbconv import conv as core
from nbconv._shapes import conv_output_shape, conv_params, parse_padding, spatial_tuple, transpose_params

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

_KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_STORAGE_DTYPES = (torch.float16, torch.bfloat16)   # computed in float32
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "float16, bfloat16, float32 or float64"


# ---------------------------------------------------------------------------------------------
# dtypes, devices, layouts: tensors <-> arrays
# ---------------------------------------------------------------------------------------------
def _check_tensors(**tensors):
    """The dtype every (non-None) tensor shares; TypeError naming the argument for an unsupported dtype,
    a dtype mismatch or a device mismatch."""
    dtype = device = first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; nbconv supports {_DTYPE_NAMES}")
        if first is None:
            dtype, device, first = t.dtype, t.device, name
        elif t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has dtype {dtype}; "
                            "all tensors must share one dtype")
        elif t.device != device:
            raise TypeError(f"{name} is on {t.device} but {first} is on {device}; all tensors must be on one device")
    return dtype


def _array(t):
    """A NumPy array (CPU) or numba device array (CUDA) sharing `t`'s memory and strides."""
    t = t.detach()
    if t.device.type == "cuda":
        from numba import cuda
        return cuda.as_cuda_array(t)
    return t.numpy()


def _arrays(*tensors):
    return tuple(None if t is None else _array(t) for t in tensors)


def _operand(t, perm):
    """`t.permute(perm)`, a view of `t` (None stays None); float16/bfloat16 become one C-contiguous float32 copy."""
    if t is None:
        return None
    v = t.detach().permute(perm)
    if v.dtype in _STORAGE_DTYPES:
        v = v.to(torch.float32, memory_format=torch.contiguous_format)
    return v


def _cl(nd):
    """The permutation (N, C, *spatial) -> (N, *spatial, C)."""
    return (0, *range(2, nd + 2), 1)


def _hwio(nd):
    """The permutation (A, B, *kernel) -> (*kernel, B, A) (OIHW -> HWIO)."""
    return (*range(2, nd + 2), 1, 0)


def _tensor(a, like):
    """The array `a` (from nbconv) as a tensor on `like`'s device, sharing its memory."""
    if like.device.type == "cuda":
        return torch.as_tensor(a, device=like.device)
    return torch.from_numpy(a)


def _channels_last_like(t):
    """Whether (N, C, *spatial) `t` is laid out channels-last: not contiguous, more than one channel, and
    the channel stride below every spatial stride (dims of size 1 aside). channels_last and
    channels_last_3d tensors and their slices are; contiguous tensors (also when C == 1) are not."""
    if t.is_contiguous() or t.shape[1] == 1:
        return False
    c = t.stride(1)
    return all(c < s for n, s in zip(t.shape[2:], t.stride()[2:]) if n != 1)


def _result(t, dtype, channels_last):
    """nbconv's (N, *spatial, C) result `t` (compute dtype) as the (N, C, *spatial) tensor in `dtype`: the
    channels-last view itself, or a contiguous copy (the conversion to float16/bfloat16 is that copy)."""
    t = t.movedim(-1, 1)
    # (`to` may return its input when only the memory format differs: contiguous() makes sure, at no extra copy)
    t = t.to(dtype) if channels_last else t.to(dtype, memory_format=torch.contiguous_format).contiguous()
    return t.detach()  # not a view (of nbconv's array): forward-mode AD wants a result with no view base


def _empty_result(like, n, channels, spatial, channels_last):
    """A fake result with the strides the real one has (see `_result`)."""
    if channels_last:
        return like.new_empty((n, *spatial, channels)).movedim(-1, 1)
    return like.new_empty((n, channels, *spatial))


@contextlib.contextmanager
def _on_device(t):
    """Around nbconv's kernels (and the wrapping of tensors as arrays) for tensors on `t`'s device; every
    PyTorch operation on the operands (float32 copies, result allocation) comes before it. Nothing to
    arrange on the CPU. On CUDA: numba's context for that GPU (a cuda:1 tensor runs on GPU 1, not on the
    current device), and ordering with PyTorch's current stream. nbconv launches on the legacy default
    stream, which PyTorch's side streams do not synchronize with: the default stream first waits for the
    work queued on the current stream (the inputs' producers, the float32 copies), and the current stream
    then waits for nbconv's kernels (the results' consumers, and any reuse of the operands' memory by the
    caching allocator, which reuses a block in the order of the stream that allocated it). Both waits are
    GPU-side: the host never blocks. (PyTorch's default stream is the legacy one unless PyTorch was built
    with per-thread default streams.)"""
    if t.device.type != "cuda":
        yield
        return
    from numba import cuda
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    current, default = torch.cuda.current_stream(index), torch.cuda.default_stream(index)
    side = current != default
    with cuda.gpus[index]:
        if side:
            default.wait_stream(current)
        try:
            yield
        finally:
            if side:
                current.wait_stream(default)


# ---------------------------------------------------------------------------------------------
# Validation inside the ops (each op call parses its arguments once, into nbconv's ConvParams).
# The ops are public through torch.ops.nbconv, so they check everything the kernels rely on.
# ---------------------------------------------------------------------------------------------
def _check_rank(op, input):
    """The number of spatial dims of `input` (N, C, *spatial); ValueError unless 1, 2 or 3."""
    if input.dim() not in (3, 4, 5):
        raise ValueError(f"nbconv::{op}: input must be 3-D, 4-D or 5-D (N, C, *spatial), "
                         f"got shape {tuple(input.shape)}")
    return input.dim() - 2


def _check_same_rank(op, nd, name, shape, layout):
    if len(shape) != nd + 2:
        raise ValueError(f"nbconv::{op}: {name} must be {nd + 2}-D {layout} for a {nd}-D convolution, "
                         f"got shape {tuple(shape)}")


def _pairs(padding, nd):
    """Flat [before0, after0, before1, after1, ...] -> ((before0, after0), ...); ValueError on a wrong length."""
    padding = list(padding)
    if len(padding) != 2 * nd:
        raise ValueError(f"padding must be {2 * nd} ints (a (before, after) pair per spatial dim, flattened), "
                         f"got {padding!r}")
    return tuple((padding[2 * i], padding[2 * i + 1]) for i in range(nd))


def _check_bias(bias, c_out):
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},) (C_out), got {tuple(bias.shape)}")


def _nchw(shape):
    """A channels-last shape (N, *spatial, C) in PyTorch's order (N, C, *spatial), for messages."""
    return (shape[0], shape[-1], *shape[1:-1])


def _symbolic(*int_lists):
    """Whether some parameter is a symbolic int (torch.compile with dynamic shapes): the fake implementations
    then give the output size without validating (nbconv's validation wants concrete ints)."""
    return any(not isinstance(v, int) for values in int_lists for v in values)


def _permuted(shape, perm):
    return tuple(shape[i] for i in perm)


def _conv_plan(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """Validate an nbconv::conv call from shapes and dtypes alone (the op and its fake implementation
    share it, so fake tensors get the real op's errors): (nd, dtype, ConvParams, x and w shapes
    channels-last, result shape channels-last)."""
    nd = _check_rank("conv", input)
    _check_same_rank("conv", nd, "weight", weight.shape, f"(C_out, C_in // groups, {_KERNEL[nd]})")
    dtype = _check_tensors(input=input, weight=weight, bias=bias)
    x_shape, w_shape = _permuted(input.shape, _cl(nd)), _permuted(weight.shape, _hwio(nd))
    params = conv_params(x_shape, w_shape, stride=stride, padding=_pairs(padding, nd), dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    _check_bias(bias, w_shape[-1])
    return nd, dtype, params, x_shape, w_shape, conv_output_shape(x_shape, w_shape, params)


def _conv_transpose_plan(input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode):
    """Validate an nbconv::conv_transpose call from shapes and dtypes alone (shared with its fake):
    (nd, dtype, ConvParams, output_padding, result shape channels-last); with a padding mode other than
    "zeros", the ConvParams are the forward convolution's (whose input gradient this op is)."""
    nd = _check_rank("conv_transpose", input)
    _check_same_rank("conv_transpose", nd, "weight", weight.shape, f"(C_in, C_out // groups, {_KERNEL[nd]})")
    dtype = _check_tensors(input=input, weight=weight, bias=bias)
    x_shape, w_shape = _permuted(input.shape, _cl(nd)), _permuted(weight.shape, _hwio(nd))
    params, output_padding, out_shape = transpose_params(
        x_shape, w_shape, stride=stride, padding=_pairs(padding, nd), output_padding=output_padding,
        dilation=dilation, groups=groups)
    _check_bias(bias, out_shape[-1])
    if padding_mode != "zeros":
        # the input gradient of the forward conv (same weight) whose input has this op's output shape; that
        # conv's output has x's shape exactly when every output_padding < stride
        params = conv_params(out_shape, w_shape, stride=params.stride, padding=params.pads,
                             dilation=params.dilation, groups=params.groups, padding_mode=padding_mode)
        if any(op >= s for op, s in zip(output_padding, params.stride)):
            raise ValueError(f"output_padding {list(output_padding)} must be smaller than stride "
                             f"{list(params.stride)} with padding_mode {padding_mode!r}")
    return nd, dtype, params, output_padding, out_shape


# ---------------------------------------------------------------------------------------------
# Custom ops. `padding` is the flat list of (before, after) pairs. The kernels are nbconv.conv's
# internal entry points, which take parsed ConvParams and shapes (no placeholder arrays).
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("nbconv::conv", mutates_args=())
def _conv_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
             dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd, dtype, params, _, _, out_shape = _conv_plan(input, weight, bias, stride, padding, dilation, groups,
                                                    padding_mode)
    x, w, b = _operand(input, _cl(nd)), _operand(weight, _hwio(nd)), _operand(bias, (0,))
    out = x.new_empty(out_shape)  # by PyTorch's allocator
    with _on_device(input):
        x, w, b, out_array = _arrays(x, w, b, out)
        core.forward(x, w, b, params, out_array)
    return _result(out, dtype, _channels_last_like(input))


@_conv_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    if _symbolic(stride, padding, dilation, [groups]):  # traced with dynamic shapes: the output-size rule only
        n, c_out = input.shape[0], weight.shape[0]
        spatial = [(size + padding[2 * i] + padding[2 * i + 1] - d * (k - 1) - 1) // s + 1
                   for i, (size, k, s, d) in enumerate(zip(input.shape[2:], weight.shape[2:], stride, dilation))]
    else:
        *_, (n, *spatial, c_out) = _conv_plan(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return _empty_result(input, n, c_out, spatial, _channels_last_like(input))


@torch.library.custom_op("nbconv::conv_transpose", mutates_args=())
def _conv_transpose_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                       output_padding: list[int], dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd, dtype, params, output_padding, out_shape = _conv_transpose_plan(
        input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode)
    x, w, b = _operand(input, _cl(nd)), _operand(weight, _hwio(nd)), _operand(bias, (0,))
    if padding_mode == "zeros":
        out = x.new_empty(out_shape)  # by PyTorch's allocator
        with _on_device(input):
            x, w, b, out_array = _arrays(x, w, b, out)
            core.transpose(x, w, b, params, output_padding, out_shape, out_array)
        return _result(out, dtype, _channels_last_like(input))
    # Other modes: the input gradient of the forward conv (params are that conv's).
    with _on_device(input):
        x, w = _arrays(x, w)
        out = _tensor(core.input_grad(x, w, out_shape, params), input)
    if b is not None:
        out.add_(b)
    return _result(out, dtype, _channels_last_like(input))


@_conv_transpose_op.register_fake
def _(input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode):
    if _symbolic(stride, padding, output_padding, dilation, [groups]):  # dynamic shapes: the output-size rule
        n, c = input.shape[0], weight.shape[1] * groups
        spatial = [(size - 1) * s - padding[2 * i] - padding[2 * i + 1] + d * (k - 1) + op + 1
                   for i, (size, k, s, d, op) in enumerate(zip(input.shape[2:], weight.shape[2:], stride, dilation,
                                                                output_padding))]
    else:
        *_, (n, *spatial, c) = _conv_transpose_plan(input, weight, bias, stride, padding, output_padding, dilation,
                                                    groups, padding_mode)
    return _empty_result(input, n, c, spatial, _channels_last_like(input))


@torch.library.custom_op("nbconv::conv_weight_grad", mutates_args=())
def _conv_weight_grad_op(grad_output: Tensor, input: Tensor, weight_shape: list[int], stride: list[int],
                         padding: list[int], dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd, dtype, params, w_shape = _weight_grad_plan(grad_output, input, weight_shape, stride, padding, dilation,
                                                   groups, padding_mode)
    gy, x = _operand(grad_output, _cl(nd)), _operand(input, _cl(nd))
    with _on_device(input):
        gy, x = _arrays(gy, x)
        gw = _tensor(core.weight_grad(gy, x, w_shape, params), input)
    # (*kernel, C_in // groups, C_out) -> contiguous (C_out, C_in // groups, *kernel), like a weight
    return gw.permute(nd + 1, nd, *range(nd)).to(dtype, memory_format=torch.contiguous_format).contiguous().detach()


def _weight_grad_plan(grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode):
    """Validate an nbconv::conv_weight_grad call from shapes and dtypes alone (shared with its fake):
    (nd, dtype, ConvParams, weight shape channels-last)."""
    nd = _check_rank("conv_weight_grad", input)
    _check_same_rank("conv_weight_grad", nd, "weight_shape", weight_shape, f"(C_out, C_in // groups, {_KERNEL[nd]})")
    _check_same_rank("conv_weight_grad", nd, "grad_output", grad_output.shape, f"(N, C_out, {_SPATIAL[nd]})")
    if any(size < 1 for size in weight_shape):
        raise ValueError(f"weight_shape must be positive sizes, got {list(weight_shape)}")
    dtype = _check_tensors(grad_output=grad_output, input=input)
    c_out, cg_in, *kernel = weight_shape
    w_shape = (*kernel, cg_in, c_out)
    x_shape = _permuted(input.shape, _cl(nd))
    params = conv_params(x_shape, w_shape, stride=stride, padding=_pairs(padding, nd), dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    y_shape = conv_output_shape(x_shape, w_shape, params)
    if _permuted(grad_output.shape, _cl(nd)) != y_shape:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)} but the convolution's output has shape "
                         f"{_nchw(y_shape)} (input.shape={tuple(input.shape)}, weight_shape={list(weight_shape)})")
    return nd, dtype, params, w_shape


@_conv_weight_grad_op.register_fake
def _(grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode):
    if not _symbolic(weight_shape, stride, padding, dilation, [groups]):
        _weight_grad_plan(grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode)
    return input.new_empty(weight_shape)


# ---------------------------------------------------------------------------------------------
# Autograd. The rules are written once over a set of three callables (`_Ops`): the custom ops
# themselves (`_RAW`, registered on the ops) or the autograd.Functions below (`_DIFF`), so that what
# a rule computes is differentiable again by whichever mechanism called it.
# ---------------------------------------------------------------------------------------------
class _Ops(NamedTuple):
    conv: object
    conv_transpose: object
    weight_grad: object


def _backward_layout(grad):
    """The incoming gradient laid out channels-last (one copy) unless it already is: the backward's two ops then
    share that one conversion (nbconv's kernels work channels-last) instead of converting it twice, and the
    input gradient comes out channels-last, without a copy back to NCHW, for the ops before to take as is.
    (A leaf's .grad is laid out like the leaf by autograd in any case.) Unchanged where strides cannot be
    queried (inside torch.func.vmap) and for a single channel."""
    try:
        if grad.shape[1] == 1 or _channels_last_like(grad):
            return grad
    except RuntimeError:
        return grad
    return grad.movedim(1, -1).contiguous().movedim(-1, 1)


def _bias_grad(grad):
    return grad.sum(dim=(0, *range(2, grad.dim())))


def _forward_output_padding(in_spatial, kernel, stride, padding, dilation):
    """output_padding that makes conv_transpose return the forward conv's input size."""
    return [(n + padding[2 * i] + padding[2 * i + 1] - d * (k - 1) - 1) % s
            for i, (n, k, s, d) in enumerate(zip(in_spatial, kernel, stride, dilation))]


def _adjoint_operand(g, padding, output_padding, stride):
    """(g', padding') such that conv(g', ., padding') has exactly the transposed conv's input size.

    conv_transpose adds output_padding rows at the end; when output_padding >= stride (possible
    with dilation > stride) whole output steps are extra: they come off the after-padding, and
    what is left over comes off g (rows the convolution would never read)."""
    padding = list(padding)
    for i, (op, s) in enumerate(zip(output_padding, stride)):
        after = padding[2 * i + 1] - s * (op // s)
        if after < 0:
            g = g.narrow(2 + i, 0, g.shape[2 + i] + after)
            after = 0
        padding[2 * i + 1] = after
    return g, padding


def _add(a, b):
    """a + b where either may be None (a missing tangent)."""
    return b if a is None else a if b is None else a + b


def _bias_tangent(db, shape):
    """The tangent of `+ bias` alone: db broadcast over an (N, C, *spatial) output of `shape`."""
    return db.reshape(1, -1, *(1,) * (len(shape) - 2)).expand(shape).contiguous()


# conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)
def _conv_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(input, weight)
    ctx.params = stride, padding, dilation, groups, padding_mode
    ctx.has_bias = bias is not None


def _conv_backward(ops, ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups, padding_mode = ctx.params
    gx = gw = gb = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad = _backward_layout(grad)
    if ctx.needs_input_grad[0]:
        output_padding = _forward_output_padding(input.shape[2:], weight.shape[2:], stride, padding, dilation)
        gx = ops.conv_transpose(grad, weight, None, stride, padding, output_padding, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        gw = ops.weight_grad(grad, input, list(weight.shape), stride, padding, dilation, groups, padding_mode)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gx, gw, gb, None, None, None, None, None


def _conv_jvp(ops, ctx, dx, dw, db, *_):
    input, weight = ctx.saved_tensors
    params = ctx.params
    t = None if dx is None else ops.conv(dx, weight, db, *params)
    t = _add(t, None if dw is None else ops.conv(input, dw, db if t is None else None, *params))
    return _bias_tangent(db, ctx.out_shape) if t is None else t


def _conv_vmap(ops, info, in_dims, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    if w_dim is None:  # the same weights for every batch entry: a bigger N
        y = ops.conv(_fold_batch(input, x_dim), weight, bias if b_dim is None else None, stride, padding,
                     dilation, groups, padding_mode)
        y = _unfold_batch(y, x_dim, size)
        return (y, 0 if x_dim is not None else None) if b_dim is None else _add_batched_bias(y, x_dim, bias, b_dim)
    # a batch of weights: one grouped convolution with groups * B groups, the batch beside the channels
    y = ops.conv(_channels_batch(input, x_dim, size), _front(weight, w_dim, size).flatten(0, 1),
                 None if bias is None else _front(bias, b_dim, size).flatten(), stride, padding, dilation,
                 groups * size, padding_mode)
    return y.unflatten(1, (size, -1)), 1


# conv_transpose(input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode)
def _conv_transpose_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(input, weight)
    ctx.params = stride, padding, output_padding, dilation, groups, padding_mode
    ctx.has_bias = bias is not None


def _conv_transpose_backward(ops, ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, output_padding, dilation, groups, padding_mode = ctx.params
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad = _backward_layout(grad)
    g, pads = _adjoint_operand(grad, padding, output_padding, stride)
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = ops.conv(g, weight, None, stride, pads, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        gw = ops.weight_grad(input, g, list(weight.shape), stride, pads, dilation, groups, padding_mode)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gx, gw, gb, None, None, None, None, None, None


def _conv_transpose_jvp(ops, ctx, dx, dw, db, *_):
    input, weight = ctx.saved_tensors
    params = ctx.params
    t = None if dx is None else ops.conv_transpose(dx, weight, db, *params)
    t = _add(t, None if dw is None else ops.conv_transpose(input, dw, db if t is None else None, *params))
    return _bias_tangent(db, ctx.out_shape) if t is None else t


def _conv_transpose_vmap(ops, info, in_dims, input, weight, bias, stride, padding, output_padding, dilation,
                         groups, padding_mode):
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    if w_dim is None:
        y = ops.conv_transpose(_fold_batch(input, x_dim), weight, bias if b_dim is None else None, stride, padding,
                               output_padding, dilation, groups, padding_mode)
        y = _unfold_batch(y, x_dim, size)
        return (y, 0 if x_dim is not None else None) if b_dim is None else _add_batched_bias(y, x_dim, bias, b_dim)
    y = ops.conv_transpose(_channels_batch(input, x_dim, size), _front(weight, w_dim, size).flatten(0, 1),
                           None if bias is None else _front(bias, b_dim, size).flatten(), stride, padding,
                           output_padding, dilation, groups * size, padding_mode)
    return y.unflatten(1, (size, -1)), 1


# conv_weight_grad(grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode)
def _weight_grad_setup(ctx, inputs, output):
    grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.params = stride, padding, dilation, groups, padding_mode


def _weight_grad_backward(ops, ctx, grad):
    grad_output, input = ctx.saved_tensors
    stride, padding, dilation, groups, padding_mode = ctx.params
    g_grad_output = g_input = None
    if ctx.needs_input_grad[0]:
        g_grad_output = ops.conv(input, grad, None, stride, padding, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        output_padding = _forward_output_padding(input.shape[2:], grad.shape[2:], stride, padding, dilation)
        g_input = ops.conv_transpose(grad_output, grad, None, stride, padding, output_padding, dilation, groups,
                                     padding_mode)
    return g_grad_output, g_input, None, None, None, None, None, None


def _weight_grad_jvp(ops, ctx, dg, dx, *_):
    grad_output, input = ctx.saved_tensors
    shape, params = list(ctx.out_shape), ctx.params
    return _add(None if dg is None else ops.weight_grad(dg, input, shape, *params),
                None if dx is None else ops.weight_grad(grad_output, dx, shape, *params))


def _weight_grad_vmap(ops, info, in_dims, grad_output, input, weight_shape, stride, padding, dilation, groups,
                      padding_mode):
    g_dim, x_dim = in_dims[:2]
    size = info.batch_size
    # per batch entry a different operand pair: a grouped weight gradient with groups * B groups
    shape = [weight_shape[0] * size, *weight_shape[1:]]
    gw = ops.weight_grad(_channels_batch(grad_output, g_dim, size), _channels_batch(input, x_dim, size), shape,
                         stride, padding, dilation, groups * size, padding_mode)
    return gw.unflatten(0, (size, -1)), 0


# batching helpers: physical tensors with the vmapped dim `dim` (None: not batched)
def _front(t, dim, size):
    """t with its batch dim first (expanded to `size` entries when it has none)."""
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _fold_batch(t, dim):
    """(B, N, ...) -> (B * N, ...) (unbatched t unchanged)."""
    return t if dim is None else t.movedim(dim, 0).flatten(0, 1)


def _unfold_batch(y, dim, size):
    return y if dim is None else y.unflatten(0, (size, -1))


def _channels_batch(t, dim, size):
    """(B, N, C, *spatial) -> (N, B * C, *spatial): the batch entries side by side as channel groups."""
    return _front(t, dim, size).movedim(0, 1).flatten(1, 2)


def _add_batched_bias(y, y_dim, bias, b_dim):
    """y (batched at 0 when y_dim is not None) + a batched bias (B, C): (result, its batch dim 0)."""
    b = bias.movedim(b_dim, 0)
    nd = y.dim() - 2 - (y_dim is not None)
    return y + b.reshape(b.shape[0], 1, b.shape[1], *(1,) * nd), 0


_RAW = _Ops(_conv_op, _conv_transpose_op, _conv_weight_grad_op)


def _refusing_tangents(op, autograd_kernel):
    """`op`'s autograd kernel, refusing forward-mode tangents. A torch.library custom op has no jvp hook:
    its autograd kernel runs the op without the tangent, so torch.func.jvp / forward_ad would get zeros
    or None. This kernel is where every tangent is still visible (plain forward_ad, torch.func.jvp and
    jacfwd, and torch.compile tracing them), so it raises there instead."""
    def kernel(keyset, *args, **kwargs):
        if any(isinstance(a, Tensor) and fwAD.unpack_dual(a).tangent is not None for a in args):
            raise RuntimeError(
                f"{op._qualname}: forward-mode AD (torch.func.jvp/jacfwd/hessian, torch.autograd.forward_ad) is not "
                "supported through the custom op itself, nor under torch.compile/torch.export; call nbconv.torch's "
                "functions or modules in eager mode, whose autograd.Functions carry jvp rules")
        return autograd_kernel(keyset, *args, **kwargs)
    return kernel


def _register(op, setup, backward, vmap):
    op.register_autograd(lambda ctx, grad: backward(_RAW, ctx, grad), setup_context=setup)
    if hasattr(op, "register_vmap"):  # torch >= 2.5
        op.register_vmap(lambda info, in_dims, *args: vmap(_RAW, info, in_dims, *args))
    # Wrap the autograd kernel that custom_op registered (rebuilt from the op's registration by the torch
    # function custom_op itself uses) with the tangent check. Replacing a kernel warns, as expected here.
    try:
        from torch._library.autograd import make_autograd_impl
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            op._lib.impl(op._name, _refusing_tangents(op, make_autograd_impl(op._opoverload, op)), "Autograd",
                         with_keyset=True, allow_override=True)
    except (ImportError, TypeError, AttributeError):  # a torch without these internals (tested with 2.13): no check
        pass


_register(_conv_op, _conv_setup, _conv_backward, _conv_vmap)
_register(_conv_transpose_op, _conv_transpose_setup, _conv_transpose_backward, _conv_transpose_vmap)
_register(_conv_weight_grad_op, _weight_grad_setup, _weight_grad_backward, _weight_grad_vmap)


class _Function(torch.autograd.Function):
    """One custom op as an autograd.Function whose rules call the Functions (`_DIFF`): what the public
    functions call outside torch.compile. Subclasses name the op and its rules (the same rule functions
    the op registers, there over `_RAW`). forward/setup_context/backward/jvp/vmap are classmethods so
    that the subclasses share them; torch.autograd.Function calls them as it calls staticmethods."""

    _op = _setup = _backward = _jvp = _vmap = None
    generate_vmap_rule = False

    @classmethod
    def forward(cls, *args):
        return cls._op(*args)

    @classmethod
    def setup_context(cls, ctx, inputs, output):
        cls._setup(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])
        ctx.out_shape = tuple(output.shape)

    @classmethod
    def backward(cls, ctx, grad):
        return cls._backward(_DIFF, ctx, grad)

    @classmethod
    def jvp(cls, ctx, *tangents):
        return cls._jvp(_DIFF, ctx, *tangents)

    @classmethod
    def vmap(cls, info, in_dims, *args):
        return cls._vmap(_DIFF, info, in_dims, *args)


class _Conv(_Function):
    _op, _setup, _backward, _jvp, _vmap = map(staticmethod, (
        _conv_op, _conv_setup, _conv_backward, _conv_jvp, _conv_vmap))


class _ConvTranspose(_Function):
    _op, _setup, _backward, _jvp, _vmap = map(staticmethod, (
        _conv_transpose_op, _conv_transpose_setup, _conv_transpose_backward, _conv_transpose_jvp,
        _conv_transpose_vmap))


class _WeightGrad(_Function):
    _op, _setup, _backward, _jvp, _vmap = map(staticmethod, (
        _conv_weight_grad_op, _weight_grad_setup, _weight_grad_backward, _weight_grad_jvp, _weight_grad_vmap))


_DIFF = _Ops(_Conv.apply, _ConvTranspose.apply, _WeightGrad.apply)


def _ops():
    """The Functions in eager mode; the custom ops while torch.compile/torch.export trace (Dynamo
    cannot trace an autograd.Function with a custom jvp; the ops' registered autograd serves there)."""
    return _RAW if torch.compiler.is_compiling() else _DIFF


def _autocast(input, *tensors):
    """`tensors` as torch.autocast casts a convolution's arguments: floating tensors other than float64 to the
    autocast dtype of input's device type, when autocast is enabled there."""
    device = input.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# ---------------------------------------------------------------------------------------------
# torch.nn.functional-style functions
# ---------------------------------------------------------------------------------------------
def _batched(nd, input, name):
    """(input with a batch axis, whether one was added): like PyTorch, unbatched inputs are accepted."""
    if input.dim() == nd + 1:
        return input.unsqueeze(0), True
    if input.dim() != nd + 2:
        raise ValueError(f"{name}: expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input, "
                         f"got shape {tuple(input.shape)}")
    return input, False


def _check_weight(nd, weight, name, layout):
    if weight.dim() != nd + 2:
        raise ValueError(f"{name}: weight must be {nd + 2}-D {layout}, got shape {tuple(weight.shape)}")


def _flat_pads(padding, input, weight, stride, dilation):
    """The op's flat padding list: every padding form (ints, pairs, "same", "valid") resolved to pairs."""
    pads = parse_padding(padding, tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, dilation)
    return [p for pair in pads for p in pair]


# The functions below only bring the arguments into the ops' schema (lists of ints; "same" resolved
# against the input's size); the op validates them, once, against the shapes.
def _convnd(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    input, unbatched = _batched(nd, input, f"conv{nd}d")
    _check_weight(nd, weight, f"conv{nd}d", f"(C_out, C_in // groups, {_KERNEL[nd]})")
    stride, dilation = spatial_tuple(stride, nd, "stride"), spatial_tuple(dilation, nd, "dilation")
    pads = _flat_pads(padding, input, weight, stride, dilation)
    input, weight, bias = _autocast(input, input, weight, bias)
    y = _ops().conv(input, weight, bias, list(stride), pads, list(dilation), groups, padding_mode)
    return y.squeeze(0) if unbatched else y


def _conv_transposend(nd, input, weight, bias, stride, padding, output_padding, groups, dilation):
    input, unbatched = _batched(nd, input, f"conv_transpose{nd}d")
    _check_weight(nd, weight, f"conv_transpose{nd}d", f"(C_in, C_out // groups, {_KERNEL[nd]})")
    stride, dilation = spatial_tuple(stride, nd, "stride"), spatial_tuple(dilation, nd, "dilation")
    output_padding = spatial_tuple(output_padding, nd, "output_padding", minimum=0)
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose{nd}d: padding must be an int or a tuple of ints, got {padding!r}")
    pads = _flat_pads(padding, input, weight, stride, dilation)
    input, weight, bias = _autocast(input, input, weight, bias)
    y = _ops().conv_transpose(input, weight, bias, list(stride), pads, list(output_padding), list(dilation), groups,
                              "zeros")
    return y.squeeze(0) if unbatched else y


_IN = {1: "L", 2: "H, W", 3: "D, H, W"}
_SAME = """
    "same" with stride > 1 means ceil(size / stride) outputs with the extra padding element after,
    as in TensorFlow (PyTorch refuses strided "same")."""
_MEMORY = {1: "channels-last strides", 2: "channels_last", 3: "channels_last_3d"}
_EXAMPLES = {
    "conv1": """\
>>> import torch, nbconv.torch
>>> x = torch.arange(5.).reshape(1, 1, 5)
>>> nbconv.torch.conv1d(x, torch.ones(1, 1, 3), padding="same")
tensor([[[1., 3., 6., 9., 7.]]])""",
    "conv2": """\
>>> import torch, nbconv.torch
>>> x = torch.arange(16.).reshape(1, 1, 4, 4)
>>> nbconv.torch.conv2d(x, torch.ones(1, 1, 2, 2), stride=2)
tensor([[[[10., 18.],
          [42., 50.]]]])""",
    "conv3": """\
>>> import torch, nbconv.torch
>>> x = torch.ones(1, 1, 3, 3, 3)
>>> nbconv.torch.conv3d(x, torch.ones(1, 1, 2, 2, 2), stride=2, padding=1)[0, 0]
tensor([[[1., 2.],
         [2., 4.]],
<BLANKLINE>
        [[2., 4.],
         [4., 8.]]])""",
}


def _function_doc(kind, nd):
    """The docstring of conv{nd}d or conv_transpose{nd}d (numpydoc, one template per kind)."""
    spatial, kernel = _IN[nd], _KERNEL[nd]
    out = ", ".join(f"{axis}_out" for axis in spatial.split(", "))
    ints = f"int or tuple of {nd} ints"
    strings, same = ("", "") if kind != "conv" else (', "valid" or "same"', _SAME)
    common = f"""stride : {ints}, default 1
    Step between windows, per spatial dim; each >= 1.
padding : {ints}{strings}, default 0
    Implicit zero padding on both sides of each spatial dim.{same}"""
    rest = f"""dilation : {ints}, default 1
    Spacing between kernel taps; each >= 1.
groups : int, default 1
    Channel groups; divides C_in and C_out."""
    if kind == "conv":
        summary = f"`torch.nn.functional.conv{nd}d` computed by nbconv's kernels (same arguments and layouts)."
        weight = f"weight : Tensor, shape (C_out, C_in // groups, {kernel})"
        middle = f"{common}\n{rest}"
        example = _EXAMPLES[f"conv{nd}"]
    else:
        summary = (f"`torch.nn.functional.conv_transpose{nd}d` computed by nbconv's kernels (same arguments, "
                   "in the same order, and layouts).")
        weight = f"weight : Tensor, shape (C_in, C_out // groups, {kernel})"
        middle = f"""{common}
output_padding : {ints}, default 0
    Extra positions at the end of each spatial dim; smaller than stride or dilation.
groups : int, default 1
    Channel groups; divides C_in and C_out.
dilation : {ints}, default 1
    Spacing between kernel taps; each >= 1."""
        shape = ", ".join(["2"] * nd)
        example = f""">>> import torch, nbconv.torch
>>> x, w = torch.ones(1, 1, {shape}), torch.ones(1, 1, {shape})
>>> y = nbconv.torch.conv_transpose{nd}d(x, w, stride=2)
>>> y.shape, torch.equal(y, torch.nn.functional.conv_transpose{nd}d(x, w, stride=2))
(torch.Size([1, 1, {', '.join(['4'] * nd)}]), True)"""
    return f"""{summary}

Parameters
----------
input : Tensor, shape (N, C_in, {spatial}) or (C_in, {spatial})
    float16, bfloat16, float32 or float64, on the CPU or a CUDA device (unbatched input is accepted,
    as in PyTorch).
{weight}
bias : Tensor, shape (C_out,), optional
{middle}

Returns
-------
Tensor, shape (N, C_out, {out}) (no N for unbatched input)
    In input's dtype, on its device, with its memory format ({_MEMORY[nd]} or contiguous).
    Differentiable through torch.autograd (double backward included) and the torch.func transforms.

Raises
------
ValueError
    Shapes or parameters that do not fit, naming the argument and quoting the values.
TypeError
    An unsupported dtype, or tensors of different dtypes or devices.

Examples
--------
{example}"""


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
           padding: int | tuple[int, ...] | str = 0, dilation: int | tuple[int, ...] = 1, groups: int = 1) -> Tensor:
    return _convnd(1, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
           padding: int | tuple[int, ...] | str = 0, dilation: int | tuple[int, ...] = 1, groups: int = 1) -> Tensor:
    return _convnd(2, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
           padding: int | tuple[int, ...] | str = 0, dilation: int | tuple[int, ...] = 1, groups: int = 1) -> Tensor:
    return _convnd(3, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
                     padding: int | tuple[int, ...] = 0, output_padding: int | tuple[int, ...] = 0, groups: int = 1,
                     dilation: int | tuple[int, ...] = 1) -> Tensor:
    return _conv_transposend(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
                     padding: int | tuple[int, ...] = 0, output_padding: int | tuple[int, ...] = 0, groups: int = 1,
                     dilation: int | tuple[int, ...] = 1) -> Tensor:
    return _conv_transposend(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
                     padding: int | tuple[int, ...] = 0, output_padding: int | tuple[int, ...] = 0, groups: int = 1,
                     dilation: int | tuple[int, ...] = 1) -> Tensor:
    return _conv_transposend(3, input, weight, bias, stride, padding, output_padding, groups, dilation)


for _nd in (1, 2, 3):
    globals()[f"conv{_nd}d"].__doc__ = _function_doc("conv", _nd)
    globals()[f"conv_transpose{_nd}d"].__doc__ = _function_doc("transpose", _nd)


# ---------------------------------------------------------------------------------------------
# Modules: subclasses of torch.nn's, so constructor, parameters, initialisation, state_dict and
# isinstance checks are PyTorch's own; only the computation changes. padding_mode is handled by
# the kernels (no padded copy of the input in PyTorch).
# ---------------------------------------------------------------------------------------------
class Conv1d(nn.Conv1d):
    """Drop-in `torch.nn.Conv1d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv1d`).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.Conv1d(3, 8, 3, padding=1)
    >>> layer(torch.ones(2, 3, 5)).shape, isinstance(layer, torch.nn.Conv1d)
    (torch.Size([2, 8, 5]), True)
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _convnd(1, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class Conv2d(nn.Conv2d):
    """Drop-in `torch.nn.Conv2d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv2d`).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.Conv2d(3, 8, 3, padding=1)
    >>> layer(torch.ones(2, 3, 5, 5)).shape, isinstance(layer, torch.nn.Conv2d)
    (torch.Size([2, 8, 5, 5]), True)
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _convnd(2, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class Conv3d(nn.Conv3d):
    """Drop-in `torch.nn.Conv3d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv3d`).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.Conv3d(3, 8, 3, padding=1)
    >>> layer(torch.ones(2, 3, 5, 5, 5)).shape, isinstance(layer, torch.nn.Conv3d)
    (torch.Size([2, 8, 5, 5, 5]), True)
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _convnd(3, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class _TransposeMixin:
    _nd = None

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._nd, self.dilation)
        return _conv_transposend(self._nd, input, self.weight, self.bias, self.stride, self.padding,
                                 output_padding, self.groups, self.dilation)


class ConvTranspose1d(_TransposeMixin, nn.ConvTranspose1d):
    """Drop-in `torch.nn.ConvTranspose1d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv_transpose1d`). padding_mode must be "zeros", as in PyTorch (ValueError otherwise).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.ConvTranspose1d(3, 8, 2, stride=2)
    >>> layer(torch.ones(2, 3, 5)).shape, isinstance(layer, torch.nn.ConvTranspose1d)
    (torch.Size([2, 8, 10]), True)
    """

    _nd = 1


class ConvTranspose2d(_TransposeMixin, nn.ConvTranspose2d):
    """Drop-in `torch.nn.ConvTranspose2d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv_transpose2d`). padding_mode must be "zeros", as in PyTorch (ValueError otherwise).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.ConvTranspose2d(3, 8, 2, stride=2)
    >>> layer(torch.ones(2, 3, 5, 5)).shape, isinstance(layer, torch.nn.ConvTranspose2d)
    (torch.Size([2, 8, 10, 10]), True)
    """

    _nd = 2


class ConvTranspose3d(_TransposeMixin, nn.ConvTranspose3d):
    """Drop-in `torch.nn.ConvTranspose3d` computed by nbconv.

    A subclass of it: the constructor's arguments, the parameters and their initialisation, the
    state_dict and isinstance checks are PyTorch's; only the computation changes (see
    :func:`conv_transpose3d`). padding_mode must be "zeros", as in PyTorch (ValueError otherwise).

    Examples
    --------
    >>> import torch, nbconv.torch
    >>> layer = nbconv.torch.ConvTranspose3d(3, 8, 2, stride=2)
    >>> layer(torch.ones(2, 3, 5, 5, 5)).shape, isinstance(layer, torch.nn.ConvTranspose3d)
    (torch.Size([2, 8, 10, 10, 10]), True)
    """

    _nd = 3
