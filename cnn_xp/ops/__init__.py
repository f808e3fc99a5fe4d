"""The reference: every op once, written against ``xp`` (NumPy or CuPy), NCHW.

This is what both devices run in reference mode (``CNN_XP_KERNELS=reference``), and what
every accelerator in ``cnn_xp.kernels`` is tested against. No device, layout or accelerator
branches live here. ``cnn_xp.dispatch`` lists the ops (groups of these functions).
"""
from .affine import affine_backward, affine_forward
from .activation import dropout_backward, dropout_forward, dropout_forward_philox, relu_backward, relu_forward
from .conv import conv2d_backward, conv2d_forward
from .im2col import col2im, im2col, output_shape, pad_image, pair
from .resample import affine_resample, crop_flip
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .softmax import (cross_entropy, cross_entropy_backward, log_softmax, softmax, softmax_cross_entropy_backward,
                      softmax_cross_entropy_forward)
from .updates import (adagrad_update, adam_update, momentum_update, nesterov_update, rmsprop_update,
                      sgd_update, update_all)

NAME = "reference"

__all__ = [
    "im2col", "col2im", "output_shape", "pair", "pad_image",
    "conv2d_forward", "conv2d_backward",
    "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "relu_forward", "relu_backward", "dropout_forward", "dropout_forward_philox", "dropout_backward",
    "softmax", "log_softmax", "cross_entropy", "cross_entropy_backward", "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "sgd_update", "momentum_update", "nesterov_update", "adagrad_update", "rmsprop_update", "adam_update",
    "update_all", "affine_resample", "crop_flip", "affine_forward", "affine_backward",
]
