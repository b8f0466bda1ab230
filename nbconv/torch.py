"""PyTorch adapter: nbconv's kernels as `torch.library` custom ops, and drop-in modules.

Layouts are PyTorch's: activations (N, C, *spatial), conv weights (C_out, C_in // groups, *kernel),
transposed-conv weights (C_in, C_out // groups, *kernel). The kernels see channels-last views of
the same memory: `t.movedim(1, -1)` of a channels_last tensor is contiguous, and any other layout is
converted once inside nbconv (which accepts any strides). Results come back without a copy as
channels-last-strided (N, C, *spatial) tensors built on nbconv's (N, *spatial, C) arrays.

Three custom ops (namespace "nbconv"), each differentiable through the others, so double
backward works. With J_w v = conv(v, w) (linear in v, whatever the padding mode) and
K_x u = conv(x, u) (linear in u)::

    conv(x, w, b)           = J_w x + b       grads: x <- conv_transpose(g, w), w <- conv_weight_grad(g, x)
    conv_transpose(x, w, b) = J_w^T x + b     grads: x <- conv(g, w),           w <- conv_weight_grad(x, g)
    conv_weight_grad(g, x)  = K_x^T g         grads: g <- conv(x, u),           x <- conv_transpose(g, u)

(b's gradient is g summed over all but the channel axis). With padding_mode "zeros" conv_transpose
is PyTorch's transposed convolution; with the other modes it also folds the gradient of the padded
border back onto the input positions it copies.

Each op call validates its arguments once (nbconv._shapes.conv_params / transpose_params, with
nbconv's ValueError/TypeError messages naming the argument) and calls nbconv.conv's internal entry
points, which take the parsed ConvParams and shapes: `forward`, `transpose`, `input_grad` and
`weight_grad`. 1, 2 and 3 spatial dims share every line of this module.

CUDA tensors go to nbconv's CUDA kernels through `__cuda_array_interface__` (no host copies).
"""
import torch
from torch import Tensor, nn

from nbconv import conv as core
from nbconv._shapes import check_dtypes, conv_output_shape, conv_params, parse_padding, spatial_tuple, transpose_params

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

_KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


# ---------------------------------------------------------------------------------------------
# Tensors <-> arrays, without copies
# ---------------------------------------------------------------------------------------------
def _array(t, name):
    """A NumPy array (CPU) or numba device array (CUDA) sharing `t`'s memory and strides.

    TypeError naming `name` for a dtype with no NumPy equivalent (bfloat16); every other dtype is
    checked by nbconv (`check_dtypes`)."""
    t = t.detach()
    try:
        if t.device.type == "cuda":
            from numba import cuda
            return cuda.as_cuda_array(t)
        return t.numpy()
    except TypeError:
        raise TypeError(f"{name} has dtype {t.dtype}; nbconv supports float32 or float64") from None


def _tensor(a, like):
    """The array `a` (from nbconv) as a tensor on `like`'s device, sharing its memory."""
    if like.device.type == "cuda":
        # nbconv launches on the default stream (numba synchronizes the inputs' stream when it
        # reads their __cuda_array_interface__); PyTorch's current stream must wait for the result.
        current, default = torch.cuda.current_stream(like.device), torch.cuda.default_stream(like.device)
        if current != default:
            current.wait_stream(default)
        return torch.as_tensor(a, device=like.device)
    return torch.from_numpy(a)


def _channels_last(t, name):
    """(N, C, *spatial) tensor -> (N, *spatial, C) array view."""
    return _array(t.movedim(1, -1), name)


def _hwio(w, name):
    """(A, B, *kernel) weight -> (*kernel, B, A) array view (OIHW -> HWIO)."""
    nd = w.dim() - 2
    return _array(w.permute(*range(2, nd + 2), 1, 0), name)


def _from_channels_last(a, like):
    """(N, *spatial, C) array -> (N, C, *spatial) tensor view (channels_last strides)."""
    return _tensor(a, like).movedim(-1, 1)


def _from_hwio(a, like):
    """(*kernel, B, A) array -> (A, B, *kernel) tensor view."""
    nd = a.ndim - 2
    return _tensor(a, like).permute(nd + 1, nd, *range(nd))


def _empty_channels_last(like, n, channels, spatial):
    """A fake result with the strides the real one has: (N, *spatial, C) contiguous, viewed as (N, C, *spatial)."""
    return like.new_empty((n, *spatial, channels)).movedim(-1, 1)


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


# ---------------------------------------------------------------------------------------------
# Custom ops. `padding` is the flat list of (before, after) pairs. The kernels are nbconv.conv's
# internal entry points, which take parsed ConvParams and shapes (no placeholder arrays).
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("nbconv::conv", mutates_args=())
def _conv_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
             dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd = _check_rank("conv", input)
    _check_same_rank("conv", nd, "weight", weight.shape, f"(C_out, C_in // groups, {_KERNEL[nd]})")
    x, w = _channels_last(input, "input"), _hwio(weight, "weight")
    b = None if bias is None else _array(bias, "bias")
    check_dtypes(input=x, weight=w, bias=b)
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=_pairs(padding, nd),
                         dilation=dilation, groups=groups, padding_mode=padding_mode)
    _check_bias(b, w.shape[-1])
    return _from_channels_last(core.forward(x, w, b, params), input)


@_conv_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    spatial = [(n + padding[2 * i] + padding[2 * i + 1] - d * (k - 1) - 1) // s + 1
               for i, (n, k, s, d) in enumerate(zip(input.shape[2:], weight.shape[2:], stride, dilation))]
    return _empty_channels_last(input, input.shape[0], weight.shape[0], spatial)


@torch.library.custom_op("nbconv::conv_transpose", mutates_args=())
def _conv_transpose_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                       output_padding: list[int], dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd = _check_rank("conv_transpose", input)
    _check_same_rank("conv_transpose", nd, "weight", weight.shape, f"(C_in, C_out // groups, {_KERNEL[nd]})")
    x, w = _channels_last(input, "input"), _hwio(weight, "weight")
    b = None if bias is None else _array(bias, "bias")
    check_dtypes(input=x, weight=w, bias=b)
    params, output_padding, out_shape = transpose_params(
        tuple(x.shape), tuple(w.shape), stride=stride, padding=_pairs(padding, nd), output_padding=output_padding,
        dilation=dilation, groups=groups)
    _check_bias(b, out_shape[-1])
    if padding_mode == "zeros":
        return _from_channels_last(core.transpose(x, w, b, params, output_padding, out_shape), input)
    # Other modes: the input gradient of the forward conv (same weight array) whose input has this op's
    # output shape; that conv's output has x's shape exactly when every output_padding < stride.
    params = conv_params(out_shape, tuple(w.shape), stride=params.stride, padding=params.pads,
                         dilation=params.dilation, groups=params.groups, padding_mode=padding_mode)
    if any(op >= s for op, s in zip(output_padding, params.stride)):
        raise ValueError(f"output_padding {list(output_padding)} must be smaller than stride "
                         f"{list(params.stride)} with padding_mode {padding_mode!r}")
    if bias is not None and bias.device != input.device:  # (the kernels never see this bias)
        raise TypeError(f"bias is on {bias.device} but input is on {input.device}")
    result = _from_channels_last(core.input_grad(x, w, out_shape, params), input)
    if bias is not None:
        result.add_(bias.view(-1, *(1,) * nd))
    return result


def _conv_transpose_output_shape(input, weight, stride, padding, output_padding, dilation, groups):
    spatial = [(n - 1) * s - padding[2 * i] - padding[2 * i + 1] + d * (k - 1) + op + 1
               for i, (n, k, s, d, op) in enumerate(zip(input.shape[2:], weight.shape[2:], stride, dilation,
                                                        output_padding))]
    return (input.shape[0], weight.shape[1] * groups, *spatial)


@_conv_transpose_op.register_fake
def _(input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode):
    n, c, *spatial = _conv_transpose_output_shape(input, weight, stride, padding, output_padding, dilation, groups)
    return _empty_channels_last(input, n, c, spatial)


@torch.library.custom_op("nbconv::conv_weight_grad", mutates_args=())
def _conv_weight_grad_op(grad_output: Tensor, input: Tensor, weight_shape: list[int], stride: list[int],
                         padding: list[int], dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd = _check_rank("conv_weight_grad", input)
    _check_same_rank("conv_weight_grad", nd, "weight_shape", weight_shape, f"(C_out, C_in // groups, {_KERNEL[nd]})")
    _check_same_rank("conv_weight_grad", nd, "grad_output", grad_output.shape, f"(N, C_out, {_SPATIAL[nd]})")
    if any(size < 1 for size in weight_shape):
        raise ValueError(f"weight_shape must be positive sizes, got {list(weight_shape)}")
    c_out, cg_in, *kernel = weight_shape
    w_shape = (*kernel, cg_in, c_out)
    gy, x = _channels_last(grad_output, "grad_output"), _channels_last(input, "input")
    check_dtypes(grad_output=gy, input=x)
    params = conv_params(tuple(x.shape), w_shape, stride=stride, padding=_pairs(padding, nd), dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    y_shape = conv_output_shape(tuple(x.shape), w_shape, params)
    if tuple(gy.shape) != y_shape:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)} but the convolution's output has shape "
                         f"{_nchw(y_shape)} (input.shape={tuple(input.shape)}, weight_shape={list(weight_shape)})")
    return _from_hwio(core.weight_grad(gy, x, w_shape, params), input)


@_conv_weight_grad_op.register_fake
def _(grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode):
    c_out, cg_in, *kernel = weight_shape
    nd = len(kernel)
    return input.new_empty((*kernel, cg_in, c_out)).permute(nd + 1, nd, *range(nd))


# ---------------------------------------------------------------------------------------------
# Autograd: every gradient is one of the three ops (or a sum), so it is differentiable again.
# ---------------------------------------------------------------------------------------------
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


def _conv_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(input, weight)
    ctx.params = stride, padding, dilation, groups, padding_mode
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups, padding_mode = ctx.params
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        output_padding = _forward_output_padding(input.shape[2:], weight.shape[2:], stride, padding, dilation)
        gx = _conv_transpose_op(grad, weight, None, stride, padding, output_padding, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        gw = _conv_weight_grad_op(grad, input, list(weight.shape), stride, padding, dilation, groups, padding_mode)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gx, gw, gb, None, None, None, None, None


def _conv_transpose_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, output_padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(input, weight)
    ctx.params = stride, padding, output_padding, dilation, groups, padding_mode
    ctx.has_bias = bias is not None


def _conv_transpose_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, output_padding, dilation, groups, padding_mode = ctx.params
    g, pads = _adjoint_operand(grad, padding, output_padding, stride)
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = _conv_op(g, weight, None, stride, pads, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        gw = _conv_weight_grad_op(input, g, list(weight.shape), stride, pads, dilation, groups, padding_mode)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gx, gw, gb, None, None, None, None, None, None


def _weight_grad_setup(ctx, inputs, output):
    grad_output, input, weight_shape, stride, padding, dilation, groups, padding_mode = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.params = stride, padding, dilation, groups, padding_mode


def _weight_grad_backward(ctx, grad):
    grad_output, input = ctx.saved_tensors
    stride, padding, dilation, groups, padding_mode = ctx.params
    g_grad_output = g_input = None
    if ctx.needs_input_grad[0]:
        g_grad_output = _conv_op(input, grad, None, stride, padding, dilation, groups, padding_mode)
    if ctx.needs_input_grad[1]:
        output_padding = _forward_output_padding(input.shape[2:], grad.shape[2:], stride, padding, dilation)
        g_input = _conv_transpose_op(grad_output, grad, None, stride, padding, output_padding, dilation, groups,
                                     padding_mode)
    return g_grad_output, g_input, None, None, None, None, None, None


torch.library.register_autograd("nbconv::conv", _conv_backward, setup_context=_conv_setup)
torch.library.register_autograd("nbconv::conv_transpose", _conv_transpose_backward,
                                setup_context=_conv_transpose_setup)
torch.library.register_autograd("nbconv::conv_weight_grad", _weight_grad_backward, setup_context=_weight_grad_setup)


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
    y = _conv_op(input, weight, bias, list(stride), pads, list(dilation), groups, padding_mode)
    return y.squeeze(0) if unbatched else y


def _conv_transposend(nd, input, weight, bias, stride, padding, output_padding, groups, dilation):
    input, unbatched = _batched(nd, input, f"conv_transpose{nd}d")
    _check_weight(nd, weight, f"conv_transpose{nd}d", f"(C_in, C_out // groups, {_KERNEL[nd]})")
    stride, dilation = spatial_tuple(stride, nd, "stride"), spatial_tuple(dilation, nd, "dilation")
    output_padding = spatial_tuple(output_padding, nd, "output_padding", minimum=0)
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose{nd}d: padding must be an int or a tuple of ints, got {padding!r}")
    pads = _flat_pads(padding, input, weight, stride, dilation)
    y = _conv_transpose_op(input, weight, bias, list(stride), pads, list(output_padding), list(dilation), groups,
                           "zeros")
    return y.squeeze(0) if unbatched else y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`torch.nn.functional.conv1d` on nbconv's kernels: input (N, C_in, L), weight (C_out, C_in // groups, K).

    padding: an int, a 1-tuple, "valid" or "same" (for stride > 1, "same" means output ceil(L / stride)
    with the extra padding element after, as in TensorFlow; PyTorch refuses strided "same").
    """
    return _convnd(1, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`torch.nn.functional.conv2d` on nbconv's kernels: input (N, C_in, H, W), weight (C_out, C_in // groups, KH, KW).

    padding: an int, a pair, "valid" or "same" (see `conv1d` for strided "same"). Returns a
    channels_last-strided tensor.

    >>> import torch, nbconv.torch
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> nbconv.torch.conv2d(x, torch.ones(1, 1, 2, 2), stride=2)
    tensor([[[[10., 18.],
              [42., 50.]]]])
    """
    return _convnd(2, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`torch.nn.functional.conv3d` on nbconv's kernels: input (N, C_in, D, H, W), weight
    (C_out, C_in // groups, KD, KH, KW).

    padding: an int, a triple, "valid" or "same" (see `conv1d` for strided "same"). Returns a
    channels_last_3d-strided tensor.

    >>> import torch, nbconv.torch
    >>> x = torch.ones(1, 1, 3, 3, 3)
    >>> nbconv.torch.conv3d(x, torch.ones(1, 1, 2, 2, 2), stride=2, padding=1)[0, 0]
    tensor([[[1., 2.],
             [2., 4.]],
    <BLANKLINE>
            [[2., 4.],
             [4., 8.]]])
    """
    return _convnd(3, input, weight, bias, stride, padding, dilation, groups, "zeros")


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`torch.nn.functional.conv_transpose1d` (same argument order): weight (C_in, C_out // groups, K)."""
    return _conv_transposend(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`torch.nn.functional.conv_transpose2d` (same argument order): weight (C_in, C_out // groups, KH, KW)."""
    return _conv_transposend(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`torch.nn.functional.conv_transpose3d` (same argument order): weight (C_in, C_out // groups, KD, KH, KW)."""
    return _conv_transposend(3, input, weight, bias, stride, padding, output_padding, groups, dilation)


# ---------------------------------------------------------------------------------------------
# Modules: subclasses of torch.nn's, so constructor, parameters, initialisation, state_dict and
# isinstance checks are PyTorch's own; only the computation changes. padding_mode is handled by
# the kernels (no padded copy of the input in PyTorch).
# ---------------------------------------------------------------------------------------------
class Conv1d(nn.Conv1d):
    """Drop-in `torch.nn.Conv1d` computed by nbconv."""

    def _conv_forward(self, input, weight, bias):
        return _convnd(1, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class Conv2d(nn.Conv2d):
    """Drop-in `torch.nn.Conv2d` computed by nbconv (outputs are channels_last-strided)."""

    def _conv_forward(self, input, weight, bias):
        return _convnd(2, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class Conv3d(nn.Conv3d):
    """Drop-in `torch.nn.Conv3d` computed by nbconv (outputs are channels_last_3d-strided)."""

    def _conv_forward(self, input, weight, bias):
        return _convnd(3, input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                       self.padding_mode)


class _TransposeMixin:
    _nd = None

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._nd, self.dilation)
        return _conv_transposend(self._nd, input, self.weight, self.bias, self.stride, self.padding,
                                 output_padding, self.groups, self.dilation)


class ConvTranspose1d(_TransposeMixin, nn.ConvTranspose1d):
    """Drop-in `torch.nn.ConvTranspose1d` computed by nbconv."""

    _nd = 1


class ConvTranspose2d(_TransposeMixin, nn.ConvTranspose2d):
    """Drop-in `torch.nn.ConvTranspose2d` computed by nbconv."""

    _nd = 2


class ConvTranspose3d(_TransposeMixin, nn.ConvTranspose3d):
    """Drop-in `torch.nn.ConvTranspose3d` computed by nbconv."""

    _nd = 3
