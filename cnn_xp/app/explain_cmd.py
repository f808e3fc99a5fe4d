"""``cnn-xp explain``: one figure per image of what a trained model sees in it.

Each image is prepared as ``predict`` prepares it and drawn, with matplotlib, into
``DIR/<image stem>.png``: the model's input, the class probabilities, the saliency map and
Grad-CAM of the predicted class (:mod:`cnn_xp.explain`), and the first channels of every
convolutional layer's feature maps. A bad image gets its one-line error after the good ones
are done, and the exit status is 2, as with ``predict``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

MAX_CHANNELS = 8  # feature maps drawn per conv layer
MAX_BARS = 10  # classes in the probability chart (the most probable when there are more)


def add_parser(subparsers):
    """Add ``explain`` to ``cnn-xp``'s subcommands; returns its parser (``cli`` adds the
    ``--device`` and ``--kernels`` flags every model command has)."""
    p = subparsers.add_parser("explain", help="draw what a model sees in image files (saliency, Grad-CAM, "
                                              "feature maps)")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint.npz or a model.save file")
    p.add_argument("--out", metavar="DIR", default="explain",
                   help="folder for the figures, one <image stem>.png each (default: explain)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    return p


def run(args) -> int:
    """The command: 0, or 2 when an image could not be used (each named in one line)."""
    from ..errors import ImageError, WriteError
    from ..input_files import display_path
    from .evaluate import load_model
    from .predict import preparer

    loaded = load_model(args.checkpoint, getattr(args, "device", "cpu"))
    model, description = loaded.model, loaded.description
    names = loaded.class_names or [str(k) for k in range(int(model.layers[-1].params["b"].shape[0]))]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the output folder {display_path(out)}: {exc.strerror or exc}") from None
    prepare, used, status = preparer(description), set(), 0
    for path in args.images:
        try:
            image = prepare(path)
        except ImageError as exc:  # cnn-xp's one-line error, then on with the others
            print(f"cnn-xp: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            status = 2
            continue
        target = out / _file_name(path, used)
        probs = figure(model, image, names, description, target, title=display_path(path))
        k = int(probs.argmax())
        label = names[k] if names[k] == str(k) else f"{k} ({names[k]})"
        print(f"{display_path(path)}: {label}  p={float(probs[k]):.4f}  -> {display_path(target)}", flush=True)
    return status


def _file_name(path, used: set) -> str:
    """``<stem>.png``, with ``-2``, ``-3``, ... when another image of this call had the stem."""
    stem = Path(os.fspath(path)).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def _display_input(image, description):
    """The prepared input (C, H, W) as a picture: normalisation undone, (H, W) or (H, W, 3) in [0, 1]."""
    import numpy

    img = numpy.asarray(image, dtype=numpy.float64)
    norm = getattr(description, "normalization", None)
    if norm is not None:
        img = img * numpy.asarray(norm["std"])[:, None, None] + numpy.asarray(norm["mean"])[:, None, None]
    else:
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 1:  # not the [0, 1] the data is said to be in: show it scaled
            img = (img - lo) / (hi - lo) if hi > lo else img * 0
    img = numpy.clip(img, 0, 1)
    return img[0] if img.shape[0] != 3 else img.transpose(1, 2, 0)


def _is_conv(layer) -> bool:
    from ..layers import Conv2D, Residual

    return isinstance(layer, (Conv2D, Residual))


def figure(model, image, names, description, path, title: str = ""):
    """Draw the explanation of one prepared input ``image`` (C, H, W) into ``path`` (PNG);
    returns the class probabilities (K,)."""
    import numpy

    from .. import explain
    from ..ops import softmax
    from . import plots

    plt = plots.plt
    x = image[None].astype(model.dtype, copy=False)
    maps = explain.feature_maps(model, x)
    probs = softmax(maps[-1].activation.astype(numpy.float64))[0]
    k = int(probs.argmax())
    sal = numpy.abs(explain.saliency(model, x, k)[0]).max(axis=0)
    try:
        cam_index = explain.cam_layer(model, x.shape[1:])
        cam = explain.grad_cam(model, x, k, layer=cam_index, upsample=True)[0]
    except ValueError:  # no spatial layer (a dense net): no Grad-CAM panel content
        cam_index, cam = None, None
    convs = [m for m, layer in zip(maps, model.layers) if _is_conv(layer) and m.activation.ndim == 4]

    shown = _display_input(image, description)
    grey = shown.ndim == 2
    name = names[k]
    top_height, row_height = 3.4, 1.3
    fig = plt.figure(figsize=(13, top_height + (row_height * len(convs) + 0.5 if convs else 0)),
                     layout="constrained")
    if convs:
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, row_height * len(convs) + 0.5])
    else:
        top, bottom = fig, None
    top.suptitle(f"{title}: {name} (p={probs[k]:.3f})   model: {getattr(model, 'name', None) or 'model'}",
                 fontsize=12, fontweight="bold")
    panels = top.subplots(1, 4, width_ratios=[1, 1.25, 1, 1])

    ax = panels[0]
    ax.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"input {'x'.join(map(str, image.shape))}", fontsize=10)
    _bare(ax)

    ax = panels[1]
    order = numpy.argsort(-probs)[:MAX_BARS] if len(probs) > MAX_BARS else numpy.arange(len(probs))
    rows = numpy.arange(len(order))
    ax.barh(rows, probs[order], color=["tab:orange" if c == k else "tab:blue" for c in order])
    for row, c in zip(rows, order):
        ax.text(min(probs[c], 0.8) + 0.02, row, f"{probs[c]:.2f}", va="center", fontsize=7)
    ax.set_yticks(rows, [str(names[c])[:18] for c in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("class probabilities" + (f" (top {MAX_BARS})" if len(probs) > MAX_BARS else ""), fontsize=10)

    ax = panels[2]
    ax.imshow(sal / sal.max() if sal.max() > 0 else sal, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"saliency of '{name}'\n|d score / d input|", fontsize=10)
    _bare(ax)

    ax = panels[3]  # over the input in grey, so that the heat map's colours stand out
    ax.imshow(shown if grey else shown @ numpy.array([0.299, 0.587, 0.114]), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    if cam is not None:
        overlay = plots.matplotlib.colormaps["jet"](cam)
        overlay[..., 3] = 0.7 * cam  # where the map is zero, the input shows as it is
        ax.imshow(overlay, interpolation="bilinear")
        what = f"at layer {cam_index} ({type(model.layers[cam_index]).__name__})"
        if cam.max() == 0:
            what += "\nzero everywhere: nothing for it"
        ax.set_title(f"Grad-CAM of '{name}'\n{what}", fontsize=10)
    else:
        ax.set_title("Grad-CAM: no layer with\nspatial feature maps", fontsize=10)
    _bare(ax)

    if bottom is not None:
        bottom.suptitle(f"feature maps of each conv layer (first {MAX_CHANNELS} channels, each on its own scale)",
                        fontsize=10)
        grid = bottom.subplots(len(convs), MAX_CHANNELS, squeeze=False)
        for row, fmap in enumerate(convs):
            act = fmap.activation[0]
            for c in range(MAX_CHANNELS):
                ax = grid[row, c]
                _bare(ax)
                if c >= act.shape[0]:
                    ax.axis("off")
                    continue
                ax.imshow(act[c], cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {c}", fontsize=7, pad=2)
                if c == 0:
                    ax.set_ylabel(f"#{fmap.index} {fmap.layer}\n{act.shape[0]}x{act.shape[1]}x{act.shape[2]}",
                                  fontsize=8, rotation=0, ha="right", va="center")
    _save(plots, fig, path)
    return probs


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _save(plots, fig, path) -> None:
    from ..errors import WriteError
    from ..input_files import display_path

    try:
        plots._save(fig, path)
    except OSError as exc:
        raise WriteError(f"cannot write {display_path(path)}: {exc.strerror or exc}") from None


__all__ = ["add_parser", "run", "figure"]
