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

CUDA tensors go to nbconv's CUDA kernels through `__cuda_array_interface__` (no host copies).
"""
import torch
from torch import Tensor, nn

from nbconv import conv as core
from nbconv._shapes import parse_padding, spatial_tuple

__all__ = ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d",
           "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]

# nbconv's array functions (nbconv.conv): the tape-aware wrappers exported by nbconv are not needed here.
_CONV = {1: core.conv1d, 2: core.conv2d}
_CONV_BACKWARD = {1: core.conv1d_backward, 2: core.conv2d_backward}
_CONV_TRANSPOSE = {1: core.conv_transpose1d, 2: core.conv_transpose2d}


# ---------------------------------------------------------------------------------------------
# Tensors <-> arrays, without copies
# ---------------------------------------------------------------------------------------------
def _array(t):
    """A NumPy array (CPU) or numba device array (CUDA) sharing `t`'s memory and strides."""
    t = t.detach()
    if t.device.type == "cuda":
        from numba import cuda
        return cuda.as_cuda_array(t)
    return t.numpy()


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


def _channels_last(t):
    """(N, C, *spatial) tensor -> (N, *spatial, C) array view."""
    return _array(t.movedim(1, -1))


def _hwio(w):
    """(A, B, *kernel) weight -> (*kernel, B, A) array view (OIHW -> HWIO)."""
    nd = w.dim() - 2
    return _array(w.permute(*range(2, nd + 2), 1, 0))


def _from_hwio(a, like):
    """(*kernel, B, A) array -> (A, B, *kernel) tensor view."""
    nd = a.ndim - 2
    return _tensor(a, like).permute(nd + 1, nd, *range(nd))


def _placeholder(shape, like):
    """An array of `shape` whose values nbconv never reads (it needs only the shape): zero strides."""
    return _array(like.new_zeros(()).expand(*shape))


def _pairs(padding):
    """Flat [before0, after0, before1, after1, ...] -> ((before0, after0), ...)."""
    return tuple((padding[2 * i], padding[2 * i + 1]) for i in range(len(padding) // 2))


def _empty_channels_last(like, n, channels, spatial):
    """A fake result with the strides the real one has: (N, *spatial, C) contiguous, viewed as (N, C, *spatial)."""
    return like.new_empty((n, *spatial, channels)).movedim(-1, 1)


# ---------------------------------------------------------------------------------------------
# Custom ops. `padding` is the flat list of (before, after) pairs; every argument is validated by nbconv.
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("nbconv::conv", mutates_args=())
def _conv_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
             dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd = input.dim() - 2
    y = _CONV[nd](_channels_last(input), _hwio(weight), None if bias is None else _array(bias),
                  stride=tuple(stride), padding=_pairs(padding), dilation=tuple(dilation), groups=groups,
                  padding_mode=padding_mode)
    return _tensor(y, input).movedim(-1, 1)


@_conv_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    spatial = [(n + padding[2 * i] + padding[2 * i + 1] - d * (k - 1) - 1) // s + 1
               for i, (n, k, s, d) in enumerate(zip(input.shape[2:], weight.shape[2:], stride, dilation))]
    return _empty_channels_last(input, input.shape[0], weight.shape[0], spatial)


@torch.library.custom_op("nbconv::conv_transpose", mutates_args=())
def _conv_transpose_op(input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                       output_padding: list[int], dilation: list[int], groups: int, padding_mode: str) -> Tensor:
    nd = input.dim() - 2
    x, w = _channels_last(input), _hwio(weight)
    if padding_mode == "zeros":
        y = _CONV_TRANSPOSE[nd](x, w, None if bias is None else _array(bias), stride=tuple(stride),
                                padding=_pairs(padding), output_padding=tuple(output_padding),
                                dilation=tuple(dilation), groups=groups)
        return _tensor(y, input).movedim(-1, 1)
    # Other modes: the input gradient of the forward conv whose input has this op's output shape.
    shape = _conv_transpose_output_shape(input, weight, stride, padding, output_padding, dilation, groups)
    y = _CONV_BACKWARD[nd](x, _placeholder((shape[0], *shape[2:], shape[1]), input), w, stride=tuple(stride),
                           padding=_pairs(padding), dilation=tuple(dilation), groups=groups,
                           padding_mode=padding_mode, needs=("input",)).input
    result = _tensor(y, input).movedim(-1, 1)
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
    nd = input.dim() - 2
    c_out, cg_in, *kernel = weight_shape
    gw = _CONV_BACKWARD[nd](_channels_last(grad_output), _channels_last(input),
                            _placeholder((*kernel, cg_in, c_out), input), stride=tuple(stride),
                            padding=_pairs(padding), dilation=tuple(dilation), groups=groups,
                            padding_mode=padding_mode, needs=("weight",)).weight
    return _from_hwio(gw, input)


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


def _flat_pads(padding, input, weight, stride, dilation):
    pads = parse_padding(padding, tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, dilation)
    return [p for pair in pads for p in pair]


def _convnd(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    input, unbatched = _batched(nd, input, f"conv{nd}d")
    stride, dilation = spatial_tuple(stride, nd, "stride"), spatial_tuple(dilation, nd, "dilation")
    pads = _flat_pads(padding, input, weight, stride, dilation)
    y = _conv_op(input, weight, bias, list(stride), pads, list(dilation), groups, padding_mode)
    return y.squeeze(0) if unbatched else y


def _conv_transposend(nd, input, weight, bias, stride, padding, output_padding, groups, dilation):
    input, unbatched = _batched(nd, input, f"conv_transpose{nd}d")
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


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`torch.nn.functional.conv_transpose1d` (same argument order): weight (C_in, C_out // groups, K)."""
    return _conv_transposend(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`torch.nn.functional.conv_transpose2d` (same argument order): weight (C_in, C_out // groups, KH, KW)."""
    return _conv_transposend(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


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
