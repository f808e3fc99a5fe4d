"""Pure array functions on ``xp`` arrays (NCHW): the math every layer is made of."""
from .conv import conv2d_backward, conv2d_forward
from .im2col import col2im, col2im_t, fold_windows, im2col, output_shape, pair, pad_image, sliding_windows
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .updates import adagrad_update, adam_update, momentum_update, nesterov_update, rmsprop_update, sgd_update
from .softmax import cross_entropy, cross_entropy_backward, log_softmax, softmax, softmax_cross_entropy

NAME = "reference"

__all__ = [
    "sgd_update", "momentum_update", "nesterov_update", "adagrad_update", "rmsprop_update", "adam_update",
    "im2col", "col2im", "col2im_t", "sliding_windows", "fold_windows", "output_shape", "pair", "pad_image",
    "conv2d_forward", "conv2d_backward",
    "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "softmax", "log_softmax", "cross_entropy", "cross_entropy_backward", "softmax_cross_entropy",
]
