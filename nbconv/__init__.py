"""nbconv: Numba-accelerated channels-last convolutions, forward and backward, on NumPy arrays."""
from .conv import Conv1dGrads, Conv2dGrads, ConvGrads
from .ops import (avg_pool2d, batch_norm, conv1d, conv1d_backward, conv2d, conv2d_backward, conv_transpose1d,
                  conv_transpose2d, cross_entropy, linear, log_softmax, max_pool2d, relu)
from .tape import Function, GradcheckError, Tensor, gradcheck, no_grad

__all__ = ["conv1d", "conv2d", "conv1d_backward", "conv2d_backward", "conv_transpose1d", "conv_transpose2d",
           "ConvGrads", "Conv1dGrads", "Conv2dGrads",
           "Tensor", "Function", "no_grad", "gradcheck", "GradcheckError",
           "relu", "max_pool2d", "avg_pool2d", "batch_norm", "linear", "log_softmax", "cross_entropy"]

from ._cuda_status import cuda_available  # noqa: E402
__all__.append("cuda_available")
