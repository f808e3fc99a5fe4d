"""One small class per layer, each with forward(x, train=True) and backward(dout)."""
from .activation import ReLU, Sigmoid, Tanh
from .affine import Affine, Flatten
from .base import Layer
from .batchnorm import BatchNorm
from .conv import Conv2D
from .dropout import Dropout
from .loss import SoftmaxCrossEntropy
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Residual

__all__ = ["Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Affine", "Flatten", "ReLU",
           "Sigmoid", "Tanh", "Dropout", "BatchNorm", "Residual", "SoftmaxCrossEntropy"]
