"""The recipe: one frozen dataclass holding everything that defines a training run.

``Recipe.create("lenet5", epochs=5, lr=1e-3)`` starts from the zoo entry's defaults
(``cnn_xp.models``), applies the overrides and validates every field. Each field is
declared once below, with its type, its default, its command-line flag, its help text and
its check; ``cnn-xp train``'s flags, ``cnn-xp models``, ``summary.json`` and the metadata of
every checkpoint are generated from it, and a recipe read back from a checkpoint goes
through the same checks. A bad value is a ``ConfigError`` naming the flag (``--lr must be a
positive number, got -1``) or, read from a file, the field (``recipe.lr ...``).

Adding a hyperparameter: add a field here and use it where it acts (the trainer reads the
recipe as a whole); nothing else changes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "step", "multistep", "cosine", "onecycle")
DTYPES = ("float32", "float64")
MAX_SEED = 2**32 - 1


# -- checks: each returns None or what is wrong ------------------------------------------
def _shown(value) -> str:
    """A short one-line account of a value (a recipe read from a file may hold anything)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = " ".join(repr(value).split())
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, (list, tuple, dict)) and len(repr(value)) <= 60 and "\n" not in repr(value):
        return repr(value)
    return f"a {type(value).__name__}"


def _int_check(minimum: int, maximum: int | None = None, optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
                or (maximum is not None and value > maximum):
            span = ("a positive integer" if minimum == 1 and maximum is None else
                    f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}")
            return f"must be {span}, got {_shown(value)}"
        return None
    return check


def _float_check(minimum: float = 0.0, positive: bool = False, maximum: float | None = None, optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and value >= minimum and (value > 0 or not positive) and (maximum is None or value <= maximum))
        if not ok:
            wanted = "a positive number" if positive else f"a number >= {minimum:g}"
            return f"must be {wanted}{'' if maximum is None else f' and <= {maximum:g}'}, got {_shown(value)}"
        return None
    return check


def _choice_check(choices, optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        ok = isinstance(value, type(choices[0])) and not isinstance(value, bool) and value in choices
        return None if ok else f"must be one of {', '.join(map(str, choices))}, got {_shown(value)}"
    return check


def _model_check(value):
    from .models import MODELS

    ok = isinstance(value, str) and value in MODELS
    return None if ok else f"must be one of {', '.join(MODELS)}, got {_shown(value)}"


def _dataset_check(value):
    from .data import is_known
    from .data.sources import DATASETS

    ok = is_known(value) and "\0" not in value
    return None if ok else f"must be one of {', '.join(DATASETS)} or folder:PATH, got {_shown(value)}"


def _size_check(value):
    if value is None:
        return None
    ok = isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in value)
    return None if ok else f"must be HxW with each side in 1..4096, got {_shown(value)}"


def _milestones_check(value):
    if value is None:
        return None
    ok = isinstance(value, tuple) and 0 < len(value) <= 100 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value) \
        and list(value) == sorted(set(value))
    return None if ok else f"must be increasing positive epochs, got {_shown(value)}"


def _bool_check(value):
    return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"


def _str_check(optional: bool = True):
    def check(value):
        if value is None and optional:
            return None
        return None if isinstance(value, str) and value and "\0" not in value else f"must be a path, got {_shown(value)}"
    return check


def _groups_check(value):
    if not isinstance(value, tuple) or not all(isinstance(g, dict) for g in value):
        return f"must be a list of parameter groups, got {_shown(value)}"
    for index, group in enumerate(value):
        if set(group) - {"params", "lr", "lr_scale"} or not isinstance(group.get("params"), list) \
                or not group["params"] or not all(isinstance(p, str) and p for p in group["params"]) \
                or ("lr" in group) == ("lr_scale" in group):
            return f"group {index} must have 'params' (names or patterns) and one of 'lr', 'lr_scale', got {_shown(group)}"
        rate = group.get("lr", group.get("lr_scale"))
        if _float_check(positive=True)(rate):
            return f"group {index} ({','.join(group['params'])}) needs a positive rate, got {_shown(rate)}"
    return None


def _augment_check(value):
    from .augment import check_strengths

    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in value.values()):
        return f"must be augmentation strengths (NAME: number) or none, got {_shown(value)}"
    try:
        check_strengths(value)
    except ValueError as exc:
        return str(exc)
    return None


def _optimizer_args_check(value):
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return f"must be NAME=VALUE settings, got {_shown(value)}"
    for key, number in value.items():
        if _float_check(minimum=-math.inf)(number):
            return f"{key} must be a finite number, got {_shown(number)}"
    return None


# -- command-line parsers: text -> value (ValueError with the reason) ----------------------
def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _parse_size(text: str) -> tuple:
    height, sep, width = text.lower().partition("x")
    try:
        return int(height), int(width)
    except ValueError:
        raise ValueError(f"expected HxW, e.g. 32x32, got {text!r}") from None


def _parse_milestones(text: str) -> tuple:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected epochs separated by commas, e.g. 82,123, got {text!r}") from None


def _parse_lower(text: str) -> str:
    return text.lower()


def _parse_augment(text: str):
    from .augment import parse_spec

    strengths = parse_spec(text)
    return "none" if strengths is None else strengths


def _parse_group(key: str):
    def parse(text: str) -> dict:
        patterns, sep, value = text.rpartition("=")
        names = [p.strip() for p in patterns.split(",") if p.strip()]
        if not sep or not names:
            raise ValueError(f"expected PARAMS=VALUE, e.g. '0.W,0.b=0.01' or '0.*=0.01', got {text!r}")
        return {"params": names, key: _parse_float(value)}
    return parse


def _parse_setting(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected NAME=VALUE, e.g. 'momentum=0.8' or 'beta2=0.99', got {text!r}")
    return key.strip(), _parse_float(value)


def _opt(default=None, *, help: str, check, parse=None, metavar=None, zoo: bool = False, flags=None,
         on_resume: str = "refuse", flag_action=None):
    """A recipe field. ``zoo``: the default comes from the model's zoo entry. ``flags``:
    ``[(flag, parse, metavar, help)]`` for fields set by repeatable flags. ``on_resume``: ``apply`` (a new
    value given with --resume is used and recorded) or ``refuse``."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "check": check, "parse": parse, "metavar": metavar,
                                      "zoo": zoo, "flags": flags, "on_resume": on_resume, "action": flag_action})


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run; see the module docstring."""

    model: str = _opt(help="the zoo model (cnn-xp models lists them)", check=_model_check, metavar="NAME")
    dataset: str = _opt("mnist", help="data set: mnist, fashion-mnist, cifar10, or folder:PATH (one subfolder "
                                      "of images per class; PATH/train and PATH/test when present)",
                        check=_dataset_check, metavar="NAME")
    data_dir: str | None = _opt(help="folder holding the data set's files (searched first; it must exist)",
                                check=_str_check(), metavar="DIR", on_resume="apply")
    channels: int | None = _opt(help="folder data sets: 1 (grey) or 3 (colour) channels (default: from the images)",
                                check=_choice_check((1, 3), optional=True), parse=_parse_int, metavar="C")
    image_size: tuple | None = _opt(help="folder data sets: resize every image to HxW, e.g. 32x32 (default: the "
                                         "images' one size)", check=_size_check, parse=_parse_size, metavar="HxW")
    test_fraction: float = _opt(0.2, help="folder data sets without train/ and test/: the fraction of each class "
                                          "held out as the test split", check=_float_check(positive=True,
                                                                                          maximum=0.9),
                                parse=_parse_float, metavar="F")
    skip_bad: bool = _opt(False, help="folder data sets: skip unreadable image files (counted) instead of stopping",
                          check=_bool_check, flag_action="store_true")
    epochs: int = _opt(help="epochs to train (with --resume: the new total)", zoo=True, check=_int_check(1),
                       parse=_parse_int, on_resume="apply")
    batch_size: int = _opt(help="mini-batch size", zoo=True, check=_int_check(1), parse=_parse_int)
    optimizer: str = _opt(help="sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw", zoo=True,
                          check=_choice_check(OPTIMIZER_NAMES), parse=_parse_lower, metavar="NAME")
    optimizer_args: dict = _opt(dict, help="optimizer settings (default: the model's, for its own optimizer)",
                                zoo=True, check=_optimizer_args_check,
                                flags=[("--optimizer-arg", _parse_setting, "NAME=VALUE",
                                        "an optimizer setting, e.g. momentum=0.8, beta1=0.7, eps=1e-7, "
                                        "weight_decay=5e-4; repeatable (default: the model's, for its own "
                                        "optimizer)")])
    lr: float = _opt(help="learning rate", zoo=True, check=_float_check(positive=True), parse=_parse_float)
    lr_groups: tuple = _opt(tuple, help="parameter groups with their own learning rates", zoo=True,
                            check=_groups_check,
                            flags=[("--lr-group", _parse_group("lr"), "PARAMS=LR",
                                    "a parameter group with its own learning rate, e.g. '0.W,0.b=0.001' or "
                                    "'0.*=0.001' (names as in model.summary(): layer index.W/b); repeatable; "
                                    "replaces the model's groups"),
                                   ("--lr-scale", _parse_group("lr_scale"), "PARAMS=FACTOR",
                                    "a parameter group whose learning rate is FACTOR times --lr, e.g. "
                                    "'0.*=0.00128'; repeatable; replaces the model's groups")])
    schedule: str = _opt(help="learning-rate schedule: constant, step, cosine or onecycle", zoo=True,
                         check=_choice_check(SCHEDULE_NAMES), parse=_parse_lower, metavar="NAME")
    warmup_epochs: float = _opt(0.0, help="linear warm-up over E epochs (may be fractional); for onecycle, "
                                          "its rising phase", check=_float_check(), parse=_parse_float, metavar="E")
    schedule_epochs: int | None = _opt(help="epochs the schedule is planned over (default: --epochs)",
                                       check=_int_check(1, optional=True), parse=_parse_int, metavar="N")
    step_epochs: float | None = _opt(help="--schedule step: multiply the learning rate by --gamma every E epochs",
                                     check=_float_check(positive=True, optional=True), parse=_parse_float,
                                     metavar="E")
    milestones: tuple | None = _opt(help="--schedule multistep: the epochs at which the learning rate is "
                                         "multiplied by --gamma, e.g. 82,123", check=_milestones_check,
                                    parse=_parse_milestones, metavar="E,E,...")
    gamma: float | None = _opt(help="--schedule step or multistep: the decay factor (default 0.1)",
                               check=_float_check(positive=True, maximum=1.0, optional=True), parse=_parse_float)
    augment: dict | None = _opt(help="random affine distortions of the training images, e.g. "
                                     "'shift=0.1,scale=0.1,rotate=10,shear=10' (shift: fraction of the size; "
                                     "rotate, shear: degrees), random crops and flips, e.g. 'crop=4,flip=1' "
                                     "(crop: zero padding in pixels), both, or 'none'", zoo=True,
                                check=_augment_check,
                                parse=_parse_augment, metavar="SPEC")
    val_size: int = _opt(help="training images held out for validation; 0 validates on the test set "
                              "(default: the model's, scaled down with --limit-train)", zoo=True,
                         check=_int_check(0), parse=_parse_int)
    split_seed: int = _opt(help="seed of the train/validation split", zoo=True, check=_int_check(0, MAX_SEED),
                           parse=_parse_int)
    seed: int = _opt(0, help="seed of the weights, batch order, augmentation and dropout",
                     check=_int_check(0, MAX_SEED), parse=_parse_int)
    dtype: str = _opt("float32", help="float32 or float64", check=_choice_check(DTYPES), parse=_parse_lower)
    limit_train: int | None = _opt(help="use only the first N training images", check=_int_check(1, optional=True),
                                   parse=_parse_int, metavar="N")
    limit_test: int | None = _opt(help="use only the first N test images", check=_int_check(1, optional=True),
                                  parse=_parse_int, metavar="N")

    # -- building and checking -------------------------------------------------------------
    @classmethod
    def create(cls, model: str, **overrides) -> "Recipe":
        """The zoo entry ``model``'s recipe with ``overrides`` (field name -> value; None
        means the default; ``augment="none"`` turns the model's augmentation off). Naming another optimizer than the model's drops the model's
        optimizer settings; naming another schedule drops its schedule options."""
        error = _model_check(model)
        if error:
            raise ConfigError(f"--model {error}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        values = zoo_defaults(model)
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("augment") in ("none", False):
            given["augment"] = None  # no augmentation (None keeps the model's)
        if "optimizer" in given and str(given["optimizer"]).lower() != values["optimizer"] \
                and "optimizer_args" not in given:
            values["optimizer_args"] = {}
        if "schedule" in given and str(given["schedule"]).lower() != values["schedule"]:
            for key in ("milestones", "step_epochs", "gamma"):  # the model's options of its own schedule
                if key not in given:
                    values.pop(key, None)
        values.update(given)
        if isinstance(values.get("lr_groups"), list):
            values["lr_groups"] = tuple(values["lr_groups"])
        if values["schedule"] != "constant" and values.get("schedule_epochs") is None:
            values["schedule_epochs"] = values["epochs"]
        if values["schedule"] in ("step", "multistep") and values.get("gamma") is None:
            values["gamma"] = 0.1
        return cls(**values)

    def __post_init__(self):
        self.check(flag_of)

    def check(self, label) -> None:
        """ConfigError naming ``label(field)`` for the first bad field or combination."""
        for f in dataclasses.fields(self):
            if f.name == "model" and self.model is None:
                raise ConfigError(f"{label('model')} is required")
            problem = f.metadata["check"](getattr(self, f.name))
            if problem:
                raise ConfigError(f"{label(f.name)} {problem}")
        self._check_combinations(label)

    def _check_combinations(self, label) -> None:
        name = self.schedule
        if name == "step" and self.step_epochs is None:
            raise ConfigError(f"{label('schedule')} step needs {label('step_epochs')} E (the learning rate is "
                              f"multiplied by {label('gamma')} every E epochs)")
        if name == "multistep" and self.milestones is None:
            raise ConfigError(f"{label('schedule')} multistep needs {label('milestones')} E,E,... (the epochs at "
                              f"which the learning rate is multiplied by {label('gamma')})")
        owners = {"step_epochs": ("step",), "milestones": ("multistep",), "gamma": ("step", "multistep")}
        for key, schedules_ in owners.items():
            if getattr(self, key) is not None and name not in schedules_:
                raise ConfigError(f"{label(key)} applies to {label('schedule')} {' or '.join(schedules_)} only, "
                                  f"not to {name}")
        horizon = self.schedule_epochs if self.schedule_epochs is not None else self.epochs
        if self.warmup_epochs > horizon or (name == "onecycle" and self.warmup_epochs >= horizon):
            raise ConfigError(f"{label('warmup_epochs')} must be in [0, {horizon}{')' if name == 'onecycle' else ']'} "
                              f"(the schedule's {horizon} epochs), got {self.warmup_epochs:g}")
        from .optim import OPTIMIZERS
        import inspect

        allowed = [p for p in inspect.signature(OPTIMIZERS[self.optimizer]).parameters
                   if p not in ("model", "lr", "param_groups")]
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(OPTIMIZERS[self.optimizer]).parameters.values()):
            return  # a factory taking any keyword: the optimizer itself checks its settings
        for key in self.optimizer_args:
            if key not in allowed:
                raise ConfigError(f"{label('optimizer_args')} {key} is not a setting of {self.optimizer} "
                                  f"({', '.join(allowed) or 'it has none'})")

    # -- what it builds ----------------------------------------------------------------
    def build_model(self, device: str = "cpu", data=None):
        """The zoo model, freshly initialised from ``seed`` in ``dtype`` on ``device``, for the
        data ``data`` describes (a ``DataDescription``; default: MNIST's shape and classes)."""
        from . import models

        shape = {} if data is None else {"input_shape": data.input_shape, "num_classes": data.num_classes}
        return models.build(self.model, seed=self.seed, device=device, dtype=self.dtype, **shape)

    def data_options(self) -> dict:
        """The options of ``cnn_xp.data.load_data`` this recipe sets."""
        return {"channels": self.channels, "image_size": self.image_size, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed, "skip_bad": self.skip_bad}

    def build_optimizer(self, model):
        """The recipe's optimizer for ``model``: its rate, settings and parameter groups
        (ConfigError naming the flag when a group names no parameter or a setting is out of range)."""
        from .optim import OPTIMIZERS, resolve_param_groups

        kwargs = dict(self.optimizer_args)
        if self.lr_groups:
            groups = [dict(g) for g in self.lr_groups]
            try:
                resolve_param_groups([name for name, _, _ in model.params_and_grads()], groups)
            except ValueError as exc:
                raise ConfigError(f"--lr-group/--lr-scale: {exc}") from None
            kwargs["param_groups"] = groups
        try:
            return OPTIMIZERS[self.optimizer](model, lr=float(self.lr), **kwargs)
        except ValueError as exc:
            raise ConfigError(f"--optimizer-arg: {exc}") from None

    # -- views -----------------------------------------------------------------------------
    def schedule_spec(self) -> dict | None:
        """``fit``'s ``schedule`` argument (in epochs), or None for a constant rate."""
        if self.schedule == "constant" and not self.warmup_epochs:
            return None
        spec = {"name": self.schedule, "epochs": self.schedule_epochs or self.epochs,
                "warmup_epochs": self.warmup_epochs}
        if self.schedule == "step":
            spec.update(step_epochs=self.step_epochs, gamma=self.gamma)
        if self.schedule == "multistep":
            spec.update(milestones=list(self.milestones), gamma=self.gamma)
        return spec

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able: every field (lr_groups as a list)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["lr_groups"] = [dict(g) for g in self.lr_groups]
        out["optimizer_args"] = dict(self.optimizer_args)
        out["augment"] = None if self.augment is None else dict(self.augment)
        out["image_size"] = None if self.image_size is None else list(self.image_size)
        out["milestones"] = None if self.milestones is None else list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, data, where: str = "recipe") -> "Recipe":
        """A recipe read back (e.g. from a checkpoint); ConfigError naming ``where.field``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object of recipe fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or unknown:
            raise ConfigError(f"{where} lacks {', '.join(missing)}" if missing else
                              f"{where} has unknown field(s) {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values["lr_groups"], list):
            values["lr_groups"] = tuple(values["lr_groups"])
        for key in ("image_size", "milestones"):
            if isinstance(values[key], list):
                values[key] = tuple(values[key])
        recipe = object.__new__(cls)
        for key, value in values.items():
            object.__setattr__(recipe, key, value)
        recipe.check(lambda name: f"{where}.{name}")
        return recipe

    def describe(self) -> str:
        """One line: the optimizer and its rate, batch, epochs, schedule, augmentation."""
        parts = [f"{self.optimizer} lr {self.lr:g}"]
        parts += [f"{k}={v:g}" for k, v in self.optimizer_args.items()]
        parts += [f"lr {'x' if 'lr_scale' in g else ''}{g.get('lr_scale', g.get('lr')):g} for {','.join(g['params'])}"
                  for g in self.lr_groups]
        parts.append(f"batch {self.batch_size}, {self.epochs} epochs")
        spec = self.schedule_spec()
        if spec:
            parts.append(f"{self.schedule} schedule over {spec['epochs']} epochs"
                         + (f" ({self.warmup_epochs:g} of warm-up)" if self.warmup_epochs else ""))
        if self.augment:
            parts.append("augment " + ",".join(f"{k}={v:g}" for k, v in self.augment.items() if v))
        if self.val_size:
            parts.append(f"validation {self.val_size}")
        return ", ".join(parts)


def flag_of(name: str) -> str:
    """The command-line flag that sets the recipe field ``name``."""
    for f in dataclasses.fields(Recipe):
        if f.name == name and f.metadata["flags"]:
            return "/".join(flag for flag, *_ in f.metadata["flags"])
    return "--" + name.replace("_", "-")


def zoo_defaults(model: str) -> dict:
    """The recipe fields a zoo entry sets (its optimizer, rate, groups, schedule, ...)."""
    from .models import MODELS

    spec = MODELS[model]
    schedule = dict(spec.schedule or {"name": "constant"})
    options = {key: tuple(value) if isinstance(value, (list, tuple)) else value
               for key, value in schedule.items() if key != "name"}
    return {"model": model, "optimizer": spec.optimizer.lower(), "optimizer_args": dict(spec.optimizer_kwargs),
            "lr": spec.lr, "lr_groups": tuple(dict(g) for g in spec.lr_groups),
            "schedule": schedule["name"], **options,
            "augment": None if spec.augment is None else dict(spec.augment),
            "batch_size": spec.batch_size, "epochs": spec.epochs, "val_size": spec.val_size,
            "split_seed": spec.split_seed}


def recipe_fields():
    """The dataclass fields of :class:`Recipe`, in order (for flag generation)."""
    return dataclasses.fields(Recipe)


__all__ = ["Recipe", "zoo_defaults", "recipe_fields", "MAX_SEED"]
