"""``cnn-xp export``: a run checkpoint or a ``model.save`` file as an ONNX model.

    cnn-xp export --checkpoint runs/lenet5-mnist-.../checkpoint.npz --to onnx --out lenet5.onnx

The file (written atomically) computes the class scores that ``model.predict`` gives, for a
dynamic batch of float32 images; its metadata holds the class names and the data's
normalisation (JSON). ``--include-preprocessing`` puts the normalisation into the graph,
so it takes pixels scaled to [0, 1]. See ``cnn_xp.export``.
"""
from __future__ import annotations

from ..errors import ConfigError

FORMATS = ("onnx",)


def add_parser(subparsers) -> None:
    """Add the ``export`` command to ``cnn-xp``'s subparsers (its handler is :func:`run`)."""
    p = subparsers.add_parser("export", help="write a checkpoint or saved model as an ONNX model")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint.npz or a model.save file")
    p.add_argument("--to", dest="format", choices=FORMATS, default="onnx", help="the format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (e.g. model.onnx)")
    p.add_argument("--include-preprocessing", action="store_true",
                   help="bake the data's per-channel normalisation into the graph: it then takes pixels in [0, 1]")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="the ONNX opset (default: 17)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..export import DEFAULT_OPSET, save_onnx
    from ..input_files import display_path
    from .evaluate import load_model

    loaded = load_model(args.checkpoint, "cpu")
    description = loaded.description
    input_shape = description.input_shape if description is not None else getattr(loaded.model, "input_shape", None)
    if input_shape is None:
        raise ConfigError(f"{args.checkpoint} does not say which inputs its model takes (no input_shape); save it "
                          f"with model.input_shape set")
    normalization = description.normalization if description is not None else None
    proto = save_onnx(loaded.model, args.out, input_shape, class_names=loaded.class_names, normalization=normalization,
              include_preprocessing=args.include_preprocessing,
              opset=DEFAULT_OPSET if args.opset is None else args.opset)
    shape = "x".join(map(str, input_shape))
    takes = "pixels in [0, 1]" if args.include_preprocessing or normalization is None else "normalised input"
    print(f"wrote {display_path(args.out)}: {loaded.name}, input (batch, {shape}) of {takes}, "
          f"output (batch, {proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value}) class scores")
    return 0


__all__ = ["add_parser", "run"]
