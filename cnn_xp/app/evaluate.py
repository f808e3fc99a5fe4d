"""``cnn-xp evaluate``, and the loading that ``evaluate`` and ``predict`` share.

Both take a run checkpoint (validated by ``run_checkpoint``'s schema) or a file written by
``model.save`` (validated by ``cnn_xp.saving``): the same checks and messages for either.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from .. import backend
from ..errors import ConfigError


@dataclass
class LoadedModel:
    """A model ready for inference and what its file says about it."""

    model: object
    name: str  # the zoo entry, or "model" for a saved custom model
    epoch: int | None  # the epoch of a run checkpoint
    dataset: str | None  # the data set it was trained on, when known
    class_names: list | None
    description: object = None  # its data's DataDescription, when known
    recipe: object = None  # its Recipe, when known


def load_model(path, device: str) -> LoadedModel:
    """The model in ``path`` on ``device`` (CheckpointError in one line otherwise)."""
    from ..checkpoint import load_checkpoint
    from ..loading import model_from_checkpoint
    from .run_checkpoint import load_run_checkpoint
    from .train import check_device

    check_device(device)
    ckpt = load_checkpoint(path)
    if "epoch" in ckpt.meta or "hyperparameters" in ckpt.meta:  # a run checkpoint
        from .. import Recipe
        from ..data import DataDescription

        ckpt = load_run_checkpoint(path)
        recipe, data = Recipe.from_dict(ckpt.meta["recipe"]), DataDescription.from_dict(ckpt.meta["data"])
        model = recipe.build_model(device, data)
        model.load_state_dict(ckpt.model_state)
        return LoadedModel(model, ckpt.meta["model"], int(ckpt.meta["epoch"]), ckpt.meta["dataset"],
                           list(ckpt.meta["class_names"]), data, recipe)
    model = model_from_checkpoint(ckpt, device, where=str(path))
    recipe = ckpt.meta.get("recipe")
    data = getattr(model, "data", None)
    dataset = data.name if data is not None else recipe.get("dataset") if isinstance(recipe, dict) else None
    names = list(data.class_names) if data is not None else (
        model.class_names if isinstance(model.class_names, list) else None)
    return LoadedModel(model, model.name or "model", None, dataset if isinstance(dataset, str) else None, names,
                       data)


def cmd_evaluate(args) -> int:
    """Overall and per-class test accuracy of a checkpoint on its data set (or --dataset)."""
    from ..training import evaluate
    from .data_prep import load_test_data

    loaded = load_model(args.checkpoint, args.device)
    dataset = args.dataset or loaded.dataset
    from ..data import is_known

    if args.dataset is not None and not is_known(args.dataset):
        raise ConfigError(f"--dataset must be mnist, fashion-mnist, cifar10 or folder:PATH, got {args.dataset!r}")
    if dataset is None:
        raise ConfigError(f"{args.checkpoint} does not say which data set it was trained on; pass --dataset NAME")
    if loaded.dataset is not None and dataset != loaded.dataset:
        print(f"cnn-xp: warning: {args.checkpoint} was trained on {loaded.dataset}; evaluating it on {dataset}, "
              f"whose classes may mean something else", file=sys.stderr)
    options = loaded.recipe.data_options() if loaded.recipe is not None else {}
    same_data = loaded.dataset is not None and dataset == loaded.dataset
    x, t, class_names, _ = load_test_data(dataset, args.data_dir, loaded.model.dtype,
                                          description=loaded.description if same_data else None, options=options,
                                          download=args.download, limit=args.limit_test, progress=not args.json)
    model = loaded.model
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ConfigError(f"{args.checkpoint} takes {'x'.join(map(str, expected))} inputs, {dataset}'s images "
                          f"are {'x'.join(map(str, x.shape[1:]))}")
    outputs = int(model.predict(x[:1]).shape[1]) if len(t) else len(class_names)
    if outputs != len(class_names):
        raise ConfigError(f"{args.checkpoint} has {outputs} outputs, {dataset} has {len(class_names)} classes")
    result = evaluate(model, (x, backend.to_device(t, model.device)), num_classes=len(class_names))
    per_class = dict(zip(class_names, result["per_class"]))
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "model": loaded.name, "epoch": loaded.epoch,
                          "dataset": dataset, "n": result["n"], "loss": result["loss"],
                          "accuracy": result["accuracy"], "per_class": per_class}, indent=2))
        return 0
    epoch = "" if loaded.epoch is None else f" (epoch {loaded.epoch})"
    print(f"{loaded.name}{epoch} on {dataset} test set, {result['n']} images")
    width = max(len(n) for n in class_names)
    counts = result["confusion"].sum(axis=1)
    for name, count in zip(class_names, counts):
        accuracy = per_class[name]
        shown = "   n/a" if accuracy is None else f"{accuracy:.4f}"
        print(f"  class {name:<{width}}  {shown}  ({int(count)} images)")
    correct = int((result["predicted"] == t).sum())
    print(f"test loss: {result['loss']:.4f}")
    print(f"test accuracy: {result['accuracy']:.4f} ({correct}/{result['n']})")
    return 0


__all__ = ["LoadedModel", "load_model", "cmd_evaluate"]
