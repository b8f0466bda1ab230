"""nbconv: Numba-accelerated channels-last convolutions, forward and backward, on NumPy arrays."""
__version__ = "0.1.0"
from . import optim
from ._device import cuda_available
from .conv import Conv1dGrads, Conv2dGrads, Conv3dGrads, ConvGrads
from .ops import (avg_pool1d, avg_pool2d, avg_pool3d, batch_norm, concatenate, conv1d, conv1d_backward, conv2d,
                  conv2d_backward, conv3d, conv3d_backward, conv_transpose1d, conv_transpose2d, conv_transpose3d,
                  cross_entropy, dropout, linear, log_softmax, max_pool1d, max_pool2d, max_pool3d, pad, relu, softmax,
                  stack)
from .tape import Function, GradcheckError, Tensor, grad, gradcheck, gradgradcheck, no_grad

__all__ = ["conv1d", "conv2d", "conv3d", "conv1d_backward", "conv2d_backward", "conv3d_backward",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "ConvGrads", "Conv1dGrads", "Conv2dGrads", "Conv3dGrads",
           "Tensor", "Function", "no_grad", "grad", "gradcheck", "gradgradcheck", "GradcheckError",
           "relu", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "batch_norm", "linear", "log_softmax", "softmax", "cross_entropy", "dropout", "concatenate", "stack", "pad",
           "optim", "cuda_available"]
