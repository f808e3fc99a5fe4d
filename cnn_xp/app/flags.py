"""Command-line flags generated from ``cnn_xp.Recipe``'s fields (one flag per field, or the
field's own repeatable flags), and the recipe overrides read back from parsed arguments.

A value that does not parse is one argparse error naming the flag; a value that parses but
breaks the recipe's check is the recipe's ConfigError naming the flag.
"""
from __future__ import annotations

import argparse

from ..recipe import recipe_fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _typed(parse):
    """An argparse ``type`` from a recipe parser (its ValueError becomes the flag's error)."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_recipe_arguments(parser, skip=("model",)) -> None:
    """One flag per recipe field (``skip``: fields the command spells itself)."""
    group = parser.add_argument_group("recipe (default: the model's zoo entry; `cnn-xp models` lists them)")
    for f in recipe_fields():
        if f.name in skip:
            continue
        meta = f.metadata
        if meta["flags"]:
            for flag, parse, metavar, text in meta["flags"]:
                group.add_argument(flag, dest=f"recipe_{f.name}", action="append", type=_typed(parse),
                                   metavar=metavar, help=text)
            continue
        if meta["action"]:
            group.add_argument(_flag(f.name), dest=f"recipe_{f.name}", action=meta["action"], default=None,
                               help=meta["help"])
            continue
        kwargs = {"type": _typed(meta["parse"])} if meta["parse"] else {}
        group.add_argument(_flag(f.name), dest=f"recipe_{f.name}", metavar=meta["metavar"] or f.name.upper(),
                           help=meta["help"], **kwargs)


def recipe_overrides(args) -> dict:
    """Field -> value for each recipe flag given (repeatable flags collected into their field)."""
    given = {}
    for f in recipe_fields():
        value = getattr(args, f"recipe_{f.name}", None)
        if value is None:
            continue
        if f.name == "optimizer_args":
            value = dict(value)
        elif f.name == "lr_groups":
            value = tuple(value)
        given[f.name] = value
    return given


__all__ = ["add_recipe_arguments", "recipe_overrides"]
