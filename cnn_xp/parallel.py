"""CPU work on every core, opted into explicitly: ``BatchSlices(model)`` runs a model's
batches in one slice per core, each slice through the layers on its own thread, with BLAS
single-threaded meanwhile. ``Sequential`` itself never slices; the trainer and the
benchmark wrap a CPU model in ``BatchSlices``.

NumPy runs its copies and element-wise passes on one core and BLAS parallelises only the
GEMMs; the compiled kernels and NumPy release the GIL, so slices run side by side.

- Inference (``BatchSlices.predict``): the whole net in slices, for nets of at least
  ``MIN_FLOPS_PER_IMAGE`` that are not mostly fully connected (inference stores nothing
  on the layers, so the slices share the layer objects).
- Training (``BatchSlices.scores_and_loss`` / ``backward``): the leading layers up to the
  first that is not ``batch_sliceable`` (Dropout, BatchNorm) run in slices on
  ``Layer.replica()`` twins sharing the parameters; the rest and the loss run on the whole
  batch, and the parameter gradients are the sums of the slices'. Nets whose sliced work
  would be mostly one fully connected GEMM (``MAX_AFFINE_SHARE``), which BLAS already
  spreads over the cores, are not sliced.

Subnormal floats: ``flush_denormals()`` (the trainer calls it for CPU runs) flushes them to
zero on the calling thread and on every slice thread. A float32 value below 1.2e-38 (Adam's
moment estimates of a dead unit decay there: 0.9^t times a small gradient) then becomes 0
instead of taking the CPU's slow microcoded path; the change to any result is below one
part in 10^38 of the values around it.

Slices hold at least ``MIN_IMAGES_PER_THREAD`` images. Results equal a one-thread run up to
float rounding (the same slicing gives the same bits). ``CNN_XP_THREADS=1`` switches it
off. docs/cpu-results/ has the measurements behind the thresholds.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy

from . import dispatch
from .errors import ConfigError
from .backend import to_device, xp_of
from .layers import Affine

ENV_THREADS = "CNN_XP_THREADS"
MIN_FLOPS_PER_IMAGE = 5_000_000   # forward multiply-adds x 2
MIN_IMAGES_PER_THREAD = 16
MAX_AFFINE_SHARE = 0.75  # no slicing where fully connected layers are more of the work

_executor: ThreadPoolExecutor | None = None
_executor_threads = 0
_flush_denormals = False  # the setting every slice thread starts with (see flush_denormals)
_blas = None  # threadpoolctl.ThreadpoolController (False: not installed), made on first use


class ThreadSettingError(ConfigError):
    """CNN_XP_THREADS is set to something other than a positive integer."""


def thread_setting() -> int | None:
    """``$CNN_XP_THREADS`` parsed (the one place it is read): a positive integer, or None
    when unset or empty; ThreadSettingError for anything else."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ThreadSettingError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
    return int(value)


def cpu_threads() -> int:
    """Cores this process may use, or ``CNN_XP_THREADS`` when set (a positive integer)."""
    setting = thread_setting()
    if setting is not None:
        return setting
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def inference_slices(batch: int, flops_per_image: int, affine_flops_per_image: int) -> int:
    """How many slices (threads) a CPU inference batch is run in, given the net's forward
    FLOPs per image, all and those of its fully connected layers: 1 means no slicing."""
    if flops_per_image < MIN_FLOPS_PER_IMAGE or _mostly_affine(flops_per_image, affine_flops_per_image):
        return 1
    return _slices(batch)


def _mostly_affine(flops_per_image: int, affine_flops_per_image: int) -> bool:
    """A big fully connected GEMM is one BLAS call that already uses every core; sliced, each
    slice streams its whole weight matrix again."""
    return affine_flops_per_image > MAX_AFFINE_SHARE * flops_per_image


def _slices(batch: int) -> int:
    """One slice per core, each of at least ``MIN_IMAGES_PER_THREAD`` images; 1 without
    threadpoolctl, which keeps BLAS to one thread a slice."""
    slices = max(1, min(cpu_threads(), batch // MIN_IMAGES_PER_THREAD))
    return slices if slices == 1 or _blas_controller() is not None else 1


def _blas_controller():
    """A threadpoolctl.ThreadpoolController (made once), or None without threadpoolctl."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            _blas = ThreadpoolController()
    return _blas or None


def training_slices(batch: int, flops_per_image: int, affine_flops_per_image: int) -> int:
    """How many slices a CPU training batch is run in (see ``SlicedLayers``), given the
    forward FLOPs per image of the layers that would be sliced and of the fully connected
    ones among them: none when those are more than ``MAX_AFFINE_SHARE`` of the work."""
    return 1 if _mostly_affine(flops_per_image, affine_flops_per_image) else _slices(batch)


def _bounds(n: int, slices: int) -> list[tuple[int, int]]:
    edges = [n * k // slices for k in range(slices + 1)]
    return list(zip(edges, edges[1:]))


def _cpu_flush():
    """The CPU accelerator's per-thread flush-to-zero switch, or None without the extension."""
    module, _ = dispatch.accelerator("cpu")
    return getattr(module, "flush_denormals", None)


def _set_thread_denormals(enabled: bool) -> None:
    flush = _cpu_flush()
    if flush is not None:
        flush(enabled)


def flush_denormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero (the CPU's FTZ and DAZ modes) on the calling thread and
    on every slice thread from now on (``enabled=False``: back to IEEE subnormals). Returns
    the calling thread's previous setting; False (and nothing changes) without the compiled
    CPU extension, which is what sets the mode."""
    global _executor, _flush_denormals
    flush = _cpu_flush()
    if flush is None:
        return False
    previous = flush(enabled)
    if enabled != _flush_denormals:
        _flush_denormals = enabled
        if _executor is not None:  # its threads keep their own setting: start new ones
            _executor.shutdown(wait=True)
            _executor = None
    return previous


def _run_parallel(tasks):
    """Call each zero-argument task on the thread pool, BLAS single-threaded, under the caller's
    ``numpy.errstate``; results in order."""
    global _executor, _executor_threads
    if _executor is None or _executor_threads < len(tasks):
        _executor = ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="cnn_xp",
                                       initializer=_set_thread_denormals, initargs=(_flush_denormals,))
        _executor_threads = len(tasks)
    settings = numpy.geterr()  # the caller's floating-point error handling, in every slice thread

    def run(task):
        with numpy.errstate(**settings):
            return task()

    with _blas_controller().limit(limits=1, user_api="blas"):
        return list(_executor.map(run, tasks))


class SlicedLayers:
    """Training forward and backward of a run of batch-sliceable layers (``layers``, in the
    order they run) on slices of the batch, one thread per slice.

    Slice 0 runs on the layers themselves, slice k on ``layer.replica()`` twins that share
    the parameter arrays. The parameter gradients of the whole batch are the sums of the
    slices' (the loss, computed on the whole batch, already carries the 1/N of its mean), so
    after ``backward`` each layer's grads hold exactly those sums."""

    def __init__(self, layers):
        self.layers = list(layers)
        self._twins: list[list] = []
        self._stacks: list[list] = []      # the layer stack of each slice of the last forward
        self._bounds: list[tuple[int, int]] = []

    def _slice_layers(self, slices: int) -> list[list]:
        while len(self._twins) < slices - 1:
            self._twins.append([layer.replica() for layer in self.layers])
        for twins in self._twins:  # follow params / buffers re-bound since (load, astype)
            for layer, twin in zip(self.layers, twins):
                twin.params, twin.buffers = layer.params, layer.buffers
        return [self.layers] + self._twins[: slices - 1]

    def forward(self, x, slices: int):
        """Outputs of the layers for ``x`` (N, ...), computed in ``slices`` slices."""
        self._bounds = _bounds(len(x), slices)
        stacks = self._stacks = self._slice_layers(slices)

        def run(stack, part):
            for layer in stack:
                part = layer.forward(part, train=True)
            return part

        parts = _run_parallel([lambda stack=stack, a=a, b=b: run(stack, x[a:b])
                               for stack, (a, b) in zip(stacks, self._bounds)])
        return xp_of(parts[0]).concatenate(parts)

    def backward(self, dout):
        """dx of the last ``forward`` (None when the first layer skips it); sums the
        slices' parameter gradients into the layers' grads."""
        stacks = self._stacks

        def run(stack, grad):
            for layer in reversed(stack):
                grad = layer.backward(grad)
                if grad is None:
                    break
            return grad

        dxs = _run_parallel([lambda stack=stack, a=a, b=b: run(stack, dout[a:b])
                             for stack, (a, b) in zip(stacks, self._bounds)])
        for i, layer in enumerate(self.layers):
            for key, grad in layer.grads.items():
                for twins in stacks[1:]:
                    grad += twins[i].grads[key]
        return None if dxs[0] is None else xp_of(dxs[0]).concatenate(dxs)


def map_slices(fn, x, slices: int):
    """``fn`` applied to ``slices`` near-equal slices of ``x`` along axis 0 on a thread
    pool, BLAS single-threaded meanwhile; the results concatenated along axis 0."""
    parts = _run_parallel([lambda a=a, b=b: fn(x[a:b]) for a, b in _bounds(len(x), slices)])
    return xp_of(parts[0]).concatenate(parts)


class BatchSlices:
    """A CPU model's training steps and inference in batch slices, one thread per slice.

    Offers the model's ``predict``, ``scores_and_loss``, ``loss`` and ``backward`` with the
    same results (up to float rounding); ``model`` stays usable on its own. Batches too
    small to split (or ``CNN_XP_THREADS=1``) run whole."""

    def __init__(self, model):
        thread_setting()  # a bad CNN_XP_THREADS is refused here, by every command that slices
        self.model = model
        self._lead: SlicedLayers | None = None
        self._sliced_step = False  # whether the last training forward ran in slices
        self._flops_seen: dict = {}  # (sample shape, layer ids) -> _flops' answer

    def _flops(self, x, layers):
        """(forward FLOPs per sample of ``layers``, those of their Affine layers), counted
        once per sample shape."""
        key = (tuple(x.shape[1:]), tuple(map(id, layers)))
        if key not in self._flops_seen:
            per_layer = dict(zip(map(id, self.model.layers), self.model.layer_flops(x.shape[1:])))
            total = sum(per_layer[id(layer)] for layer in layers)
            affine = sum(per_layer[id(layer)] for layer in layers if isinstance(layer, Affine))
            self._flops_seen[key] = (total, affine)
        return self._flops_seen[key]

    def _leading_sliceable(self):
        layers = self.model.layers
        count = 0
        while count < len(layers) and layers[count].batch_sliceable:
            count += 1
        lead = layers[:count]
        if self._lead is None or [id(a) for a in self._lead.layers] != [id(b) for b in lead]:
            self._lead = SlicedLayers(lead) if lead else None
        return self._lead

    def predict(self, x, train: bool = False):
        """Class scores (N, K); inference of large enough nets and batches in slices."""
        x = self.model.as_input(x)
        if train or x.ndim < 2:
            return self.model.predict(x, train=train)
        slices = inference_slices(len(x), *self._flops(x, self.model.layers))
        if slices == 1:
            return self.model.predict(x)
        return map_slices(self.model.predict, x, slices)

    def scores_and_loss(self, x, t, train: bool = True, totals=None, checked: bool = False):
        """(scores, mean loss) of a training batch, its leading layers in slices
        (``totals`` / ``checked`` as ``Sequential.scores_and_loss``)."""
        x = self.model.as_input(x)
        lead = self._leading_sliceable() if train and x.ndim > 1 else None
        slices = training_slices(len(x), *self._flops(x, lead.layers)) if lead else 1
        self._sliced_step = slices > 1
        if not self._sliced_step:
            return self.model.scores_and_loss(x, t, train, totals=totals, checked=checked)
        scores = lead.forward(x, slices)
        for layer in self.model.layers[len(lead.layers):]:
            scores = layer.forward(scores, train=True)
        labels = to_device(t, self.model.device)
        return scores, self.model.loss_layer.forward(scores, labels, totals=totals, checked=checked)

    def loss(self, x, t, train: bool = True):
        return self.scores_and_loss(x, t, train)[1]

    def backward(self, dout=1.0):
        """Gradients of the last ``scores_and_loss`` into every layer's grads; dx or None."""
        if not self._sliced_step:
            return self.model.backward(dout)
        grad = self.model.loss_layer.backward(dout)
        for layer in reversed(self.model.layers[len(self._lead.layers):]):
            grad = layer.backward(grad)
            if grad is None:
                return None
        return self._lead.backward(grad)

    def accuracy(self, x, t, batch_size: int = 1000) -> float:
        """``Sequential.accuracy`` with the batches' inference in slices."""
        n, correct = x.shape[0], 0
        for start in range(0, n, batch_size):
            scores = self.predict(x[start:start + batch_size])
            labels = to_device(t[start:start + batch_size], self.model.device)
            if labels.ndim == 2:
                labels = labels.argmax(axis=1)
            correct += int((scores.argmax(axis=1) == labels).sum())
        return correct / n if n else 0.0


def runner_for(model):
    """What runs ``model``'s training steps and inference: on the CPU a :class:`BatchSlices`
    (every core; one per model, kept on it), elsewhere the model itself. ``fit``,
    ``evaluate`` and prediction all ask here, so the decision is made once."""
    if model.device != "cpu":
        return model
    runner = model.__dict__.get("_batch_slices")
    if runner is None:
        runner = model.__dict__["_batch_slices"] = BatchSlices(model)
    return runner
