"""nbconv: Numba-accelerated channels-last convolutions, forward and backward, on NumPy arrays."""
from .conv import (Conv1dGrads, Conv2dGrads, ConvGrads, conv1d, conv1d_backward, conv2d, conv2d_backward,
                   conv_transpose1d, conv_transpose2d)

__all__ = ["conv1d", "conv2d", "conv1d_backward", "conv2d_backward", "conv_transpose1d", "conv_transpose2d",
           "ConvGrads", "Conv1dGrads", "Conv2dGrads"]

from ._cuda_status import cuda_available  # noqa: E402
__all__.append("cuda_available")
