"""The model zoo: the seed articles' networks, each with its own training defaults.

``build(name, seed=0, device="cpu", dtype="float32", input_shape=..., num_classes=...)``
returns a ``Sequential`` with a softmax cross-entropy loss for inputs (N, C, H, W) of
``input_shape`` (C, H, W) (default MNIST's) and scores (N, ``num_classes``). The layers are
the seed's; the channel count of the first conv and the size of each Affine layer come from
a shape pass over the input shape, so the same entry fits greyscale or colour images of
other sizes. An entry whose pooling would shrink the input below one pixel is refused with
a ``ConfigError`` naming the smallest input it takes. Weights are drawn on the host from
``numpy.random.default_rng(seed)`` (same weights on CPU and GPU), biases start at zero, and
the first layer skips its input gradient (``need_input_grad = False``).

``MODELS[name]`` is a :class:`ModelSpec`: a one-line description, the layer builder and the
training defaults (optimizer, learning rate, per-parameter learning-rate groups, schedule,
data augmentation, batch size, epochs, validation split), all overridable from the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Callable

import numpy

from . import init
from .data.descriptions import MNIST, MNIST_TRAIN_SIZE
from .errors import ConfigError
from .layers import (Affine, BatchNorm, Conv2D, Dropout, GlobalAvgPool2D, MaxPool2D, ReLU, Residual,
                     SoftmaxCrossEntropy)
from .model import Sequential

INPUT_SHAPE = MNIST.input_shape  # the default input (C, H, W): the seeds' data set
NUM_CLASSES = len(MNIST.class_names)


class TooSmall(ValueError):
    """A layer's output would have a side below one pixel."""


class Shapes:
    """Builds a zoo entry's layers in order while tracking the sample shape, so each layer's
    input size comes from the layers before it: ``conv(out, k, ...)``, ``pool(k)``,
    ``affine(out, ...)`` (its input size is the flattened shape so far), ``add(layer)``."""

    def __init__(self, input_shape, num_classes: int, rng, dtype):
        self.shape = tuple(int(d) for d in input_shape)
        self.classes, self.rng, self.dtype = int(num_classes), rng, dtype
        self.layers: list = []

    def add(self, layer):
        try:
            shape = tuple(int(d) for d in layer.output_shape(self.shape))
        except ValueError as exc:  # a window larger than its (padded) input
            raise TooSmall(f"{type(layer).__name__}: {exc}") from None
        if any(d < 1 for d in shape):
            raise TooSmall(f"{type(layer).__name__} would output {'x'.join(map(str, shape))}")
        self.shape = shape
        self.layers.append(layer)
        return self

    def conv(self, out_channels, kernel, pad=0, init_=None, bias=True):
        return self.add(Conv2D(self.shape[0], out_channels, kernel, pad=pad, weight_init=init_, rng=self.rng,
                               dtype=self.dtype, bias=bias))

    def pool(self, kernel):
        return self.add(MaxPool2D(kernel))

    def affine(self, out_features, init_=None):
        return self.add(Affine(prod(self.shape), out_features, weight_init=init_, rng=self.rng, dtype=self.dtype))

    def relu(self):
        return self.add(ReLU())


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: how to build the layers and how its seed trained it."""

    name: str
    source: str  # which seed article and what it reports
    layers: Callable  # (Shapes, seed): adds the entry's layers in order
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    init: str  # human-readable name of the weight initialisation
    val_size: int = 0  # images held out of the 60k training set for validation
    split_seed: int = 0  # seed of the train/validation split
    notes: str = ""
    optimizer_kwargs: dict = field(default_factory=dict)
    # parameter groups (cnn_xp.optim): [{"params": [names or patterns], "lr" or "lr_scale": x}]
    lr_groups: tuple = ()
    # learning-rate schedule: {"name": "onecycle", "warmup_epochs": ..., ...} (see app.train), or None
    schedule: dict | None = None
    # random distortions of the training images (cnn_xp.augment strengths), or None
    augment: dict | None = None
    # the training images its epochs and validation size count: on data of another size
    # they scale to as many images seen (cnn_xp.app.data_prep)
    data_size: int = MNIST_TRAIN_SIZE

    def defaults(self) -> dict:
        """The training hyperparameters as a plain dict (JSON-able copies)."""
        return {"optimizer": self.optimizer, "lr": self.lr, "batch_size": self.batch_size,
                "epochs": self.epochs, "val_size": self.val_size, "split_seed": self.split_seed,
                "lr_groups": [dict(g) for g in self.lr_groups],
                "schedule": None if self.schedule is None else dict(self.schedule),
                "augment": None if self.augment is None else dict(self.augment)}


def _one_conv(net: Shapes, seed):
    w = init.uniform(-0.1, 0.1)
    # MNIST: conv 16x28x28 - pool 16x14x14 - FC 512 - FC 10
    net.conv(16, 3, pad=1, init_=w).relu().pool(2).affine(512, w).relu().affine(net.classes, w)


def _simple_convnet(net: Shapes, seed):
    w = init.normal(0.01)
    # MNIST: conv 30x24x24 - pool 30x12x12 - FC 100 - FC 10
    net.conv(30, 5, init_=w).relu().pool(2).affine(100, w).relu().affine(net.classes, w)


def _scaled(initializer, factor: float):
    """``initializer``'s draws times ``factor`` (the same random stream)."""
    def draw(shape, rng):
        return factor * initializer(shape, rng)
    draw.__name__ = f"{factor:g} * {initializer.__name__}"
    return draw


# Seed 004 (the book's DLFS code) uses *non-inverted* dropout: x * mask in training and
# x * (1 - p) at test; our Dropout is inverted (x * mask / (1 - p), identity at test).
# Non-inverted = (1 - p) * inverted, so after its two dropouts (p = 0.5) the seed's net
# computes d2(0.25 * W2 d1(h) + 0.5 * b2) with inverted d1, d2: our net with FC2's weights
# W2' = 0.25 * W2 and bias b2' = 0.5 * b2 is the same function, in training and at test.
# Under AdaGrad (a step of about lr per parameter, whatever the gradient's scale) the
# seed's steps on W2, b2 are steps of lr/4 and lr/2 on W2', b2': so FC2 starts at 0.25 x He
# and its parameters learn at 0.25 / 0.5 of the rate. That is seed 004's training, step for
# step (up to AdaGrad's eps, 1e-7, meeting gradients scaled 4x and 2x).
DEEP_FC2 = 18  # index of the last Affine layer in _deep_convnet
DEEP_NONINVERTED_GROUPS = ({"params": [f"{DEEP_FC2}.W"], "lr_scale": 0.25},
                           {"params": [f"{DEEP_FC2}.b"], "lr_scale": 0.5})


def _deep_convnet(net: Shapes, seed):
    """Seed 004's pseudocode, unpadded variant: 1x28x28 -> 16x26x26 -> 16x24x24 -> 16x12x12
    -> 32x10x10 -> 32x8x8 -> 32x4x4 -> 64x4x4 -> 64x4x4 -> 64x2x2 -> FC 50 -> FC 10.
    The report's He-initialisation list names 64*4*4 inputs for the first FC layer: that is
    the padded variant (pads 1,1,1,2,1,1, as in DLFS ch. 8); we use the pseudocode's
    unpadded shapes, so the FC layer sees 64*2*2 = 256 inputs. FC2 starts at 0.25 x He:
    with DEEP_NONINVERTED_GROUPS that is the seed's non-inverted dropout (see above)."""
    he = init.he()
    net.conv(16, 3, init_=he).relu().conv(16, 3, init_=he).relu().pool(2)
    net.conv(32, 3, init_=he).relu().conv(32, 3, init_=he).relu().pool(2)
    net.conv(64, 3, pad=1, init_=he).relu().conv(64, 3, pad=1, init_=he).relu().pool(2)
    net.affine(50, he).relu().add(Dropout(0.5, seed=seed * 2 + 1))
    net.affine(net.classes, _scaled(he, 0.25)).add(Dropout(0.5, seed=seed * 2 + 2))  # index DEEP_FC2


def _lenet5(net: Shapes, seed):
    he = init.he()
    # MNIST: conv 6x28x28 - pool 6x14x14 - conv 16x10x10 - pool 16x5x5 - FC 120 - FC 84 - FC 10
    net.conv(6, 5, pad=2, init_=he).relu().pool(2).conv(16, 5, init_=he).relu().pool(2)
    net.affine(120, he).relu().affine(84, he).relu().affine(net.classes, he)


def _fast_mnist(net: Shapes, seed):
    he = init.he()
    # MNIST: conv 24x24x24 - pool 24x12x12 - conv 32x10x10 - pool 32x5x5 - FC 256 - FC 10
    net.conv(24, 5, init_=he).pool(2).relu().conv(32, 3, init_=he).pool(2).relu()
    net.affine(256, he).relu().affine(net.classes, he)


def _resnet20(net: Shapes, seed):
    """He et al. (2016), section 4.2, n = 3: conv 3x3x16 - BN - ReLU, three stages of three
    residual blocks (16, 32 and 64 channels; the second and third start with stride 2 and a
    1x1 projection shortcut), global average pooling, FC. CIFAR-10: 3x32x32 -> 16x32x32 ->
    32x16x16 -> 64x8x8 -> 64 -> 10; 0.27M parameters. Every conv is followed by a BatchNorm and
    has no bias of its own."""
    he = init.he()
    net.conv(16, 3, pad=1, init_=he, bias=False).add(BatchNorm(16, dtype=net.dtype)).relu()
    for channels, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            net.add(Residual(net.shape[0], channels, stride if block == 0 else 1, weight_init=he, rng=net.rng,
                             dtype=net.dtype))
    net.add(GlobalAvgPool2D()).affine(net.classes, he)


MODELS: dict[str, ModelSpec] = {
    "one_conv": ModelSpec(
        name="one_conv",
        source="seed 000: one conv layer, validation 0.987 by epoch 20, test accuracy 0.987 on MNIST",
        layers=_one_conv, optimizer="sgd", lr=0.5, batch_size=100, epochs=40,
        init="U(-0.1, 0.1) weights, zero biases", val_size=10_000, split_seed=1,
        lr_groups=({"params": ["0.W", "0.b"], "lr_scale": 1 / 784},),
        augment={"shift": 0.1},
        notes="conv 3x3x16 pad 1 - ReLU - maxpool 2 - FC 512 - ReLU - FC 10; seed 000's recipe: SGD lr 0.5 "
              "with the conv kernel's and bias's steps divided by 28*28 (a parameter group with lr_scale "
              "1/784), batch 100, trained on a 50k/10k train/validation split (split seed 1), plus random "
              "shifts of up to 10% of the image (2.8 px) each way, 40 epochs. The seed's own recipe (no "
              "shifts, --augment none) gives 98.5% here (three seeds; 98.54% after 100 epochs); its 98.7% "
              "is one run, 98.65%, which scripts/replay_seed000.py reproduces by replaying the seed's "
              "random draws (docs/mnist.md)."),
    "simple_convnet": ModelSpec(
        name="simple_convnet",
        source="seed 002 (SimpleConvNet): 98.96% test accuracy on MNIST",
        layers=_simple_convnet, optimizer="adam", lr=1e-3, batch_size=100, epochs=20,
        init="N(0, 0.01^2) weights, zero biases", schedule={"name": "cosine"},
        notes="conv 30x5x5 - ReLU - maxpool 2 - FC 100 - ReLU - FC 10; the seed's Adam 1e-3, batch 100, "
              "20 epochs, with a cosine schedule added: at a constant rate the last epochs overfit "
              "(98.87% mean of 3 seeds here), with the cosine 98.99% (docs/mnist.md)."),
    "deep_convnet": ModelSpec(
        name="deep_convnet",
        source="seed 004: 99.30% test accuracy on MNIST (lr 1e-2, batch 500, 8 epochs; 99.37% in its log)",
        layers=_deep_convnet, optimizer="adagrad", lr=0.01, batch_size=500, epochs=24,
        init="He: N(0, 2/fan_in) weights (FC2: 0.25 x), zero biases",
        lr_groups=DEEP_NONINVERTED_GROUPS,
        notes="3x3 convs 16,16 (no pad) - pool - 32,32 (no pad) - pool - 64,64 (pad 1) - pool "
              "- FC 50 - ReLU - dropout 0.5 - FC 10 - dropout 0.5, ReLU after every conv; the "
              "shapes of seed 004's pseudocode (1x28x28 -> ... -> 64x2x2). The seed's dropout is "
              "non-inverted (x*mask in training, x*0.5 at test); FC2 at 0.25 x He with learning "
              "rates 0.25 (W) and 0.5 (b) of lr is exactly that under AdaGrad (models.py explains). "
              "The seed's 8 epochs reach about 99.1% here; 24 epochs (the nearest recipe that reaches "
              "its 99.30%, docs/mnist.md) are the default."),
    "lenet5": ModelSpec(
        name="lenet5",
        source="seed 001 (LeNet-5): 0.8% test error on MNIST (LeCun et al. 1998, with distortions)",
        layers=_lenet5, optimizer="adam", lr=1e-3, batch_size=100, epochs=20,
        init="He: N(0, 2/fan_in) weights, zero biases",
        schedule={"name": "cosine"},
        augment={"shift": 0.1, "scale": 0.1, "rotate": 10.0, "shear": 10.0},
        notes="LeNet-5 with modern parts (ReLU, max pooling): conv 6x5x5 pad 2 - ReLU - pool 2 "
              "- conv 16x5x5 - ReLU - pool 2 - FC 120 - ReLU - FC 84 - ReLU - FC 10. The seed "
              "gives no training recipe; as LeCun et al. reached 0.8% only with distorted training "
              "images, every training image is distorted afresh each epoch (shift up to 10% of the "
              "size, zoom 0.9-1.1, rotation and shear up to 10 degrees); Adam 1e-3 with a cosine "
              "schedule, batch 100, He init are our choice."),
    "fast_mnist": ModelSpec(
        name="fast_mnist",
        source="issue 15's time-to-99% anchor (not a seed): 98.87-99.02% test accuracy after one epoch",
        layers=_fast_mnist, optimizer="adam", lr=0.01, batch_size=256, epochs=1,
        init="He: N(0, 2/fan_in) weights, zero biases",
        optimizer_kwargs={"beta1": 0.7, "beta2": 0.9}, schedule={"name": "onecycle"},
        notes="conv 24x5x5 - maxpool 2 - ReLU - conv 32x3x3 - maxpool 2 - ReLU - FC 256 - ReLU - FC 10; "
              "Adam lr 0.01, betas (0.7, 0.9), one-cycle schedule (peak at 30%), batch 256: the recipe "
              "that reaches 99% test accuracy in the least time on a 2-core CPU."),
    "resnet20": ModelSpec(
        name="resnet20",
        source="He et al. 2016 (not a seed): ResNet-20, 91.25% test accuracy on CIFAR-10 (table 6; unmeasured here)",
        layers=_resnet20, optimizer="momentum", lr=0.1, batch_size=128, epochs=164,
        init="He: N(0, 2/fan_in) convs and FC, BatchNorm gamma 1 and beta 0, zero biases",
        optimizer_kwargs={"momentum": 0.9, "weight_decay": 1e-4},
        schedule={"name": "multistep", "milestones": (82, 123)}, augment={"crop": 4, "flip": 1},
        data_size=50_000,
        notes="ResNet-20 for 3x32x32 images (any input of at least 4x4): the paper's recipe for CIFAR-10, "
              "SGD with momentum 0.9 and weight decay 1e-4, lr 0.1 divided by 10 at epochs 82 and 123 (32k "
              "and 48k iterations of batch 128), 164 epochs, 4-pixel padding with random crops and "
              "horizontal flips; the inputs are normalised per channel (the paper subtracts the per-pixel "
              "mean). The paper's 91.25% is its figure, not measured with cnn_xp."),
}


def get_spec(name: str) -> ModelSpec:
    """The zoo entry ``name``; KeyError with the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def build_optimizer(name: str, model):
    """The zoo entry's optimizer for ``model``: its optimizer, learning rate, settings and
    parameter groups (the recipe's schedule and augmentation are ``fit``'s)."""
    from . import optim

    spec = get_spec(name)
    groups = {"param_groups": [dict(g) for g in spec.lr_groups]} if spec.lr_groups else {}
    return optim.create(spec.optimizer, model, lr=spec.lr, **spec.optimizer_kwargs, **groups)


def build(name: str, seed: int = 0, device: str = "cpu", dtype: str = "float32", input_shape=INPUT_SHAPE,
          num_classes: int = NUM_CLASSES) -> Sequential:
    """A freshly initialised zoo model for ``input_shape`` (C, H, W) and ``num_classes`` on
    ``device`` (weights drawn on the host from ``seed``); ConfigError when the input is too
    small for the entry, naming the smallest input it takes."""
    spec = get_spec(name)
    try:
        layers = _layers(spec, seed, dtype, input_shape, num_classes)
    except TooSmall as exc:
        channels = int(input_shape[0])
        side = smallest_side(name, channels)
        raise ConfigError(f"{name} cannot take {'x'.join(map(str, input_shape))} inputs ({exc}); its smallest "
                          f"input is {channels}x{side}x{side}") from None
    model = Sequential(layers, loss=SoftmaxCrossEntropy(), device=device, dtype=dtype)  # first layer: no dx
    model.name = name
    model.input_shape = tuple(int(d) for d in input_shape)
    return model


def _layers(spec: ModelSpec, seed, dtype, input_shape, num_classes) -> list:
    net = Shapes(input_shape, num_classes, numpy.random.default_rng(seed), dtype)
    spec.layers(net, int(seed))
    return net.layers


def smallest_side(name: str, channels: int = 1, limit: int = 512) -> int:
    """The smallest square input side the zoo entry ``name`` takes."""
    for side in range(1, limit + 1):
        try:
            _layers(get_spec(name), 0, "float32", (channels, side, side), 2)
            return side
        except TooSmall:
            continue
    raise ValueError(f"{name} takes no input up to {limit}x{limit}")
