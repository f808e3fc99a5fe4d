"""``cnn_xp.Recipe``: one flag per field in ``cnn-xp train --help`` (and nothing else there),
zoo defaults, errors naming the flag, the JSON round trip, the recipe recorded in checkpoints,
summary.json and ``cnn-xp models --json``, and the seed's range."""
import dataclasses
import json
import re

import pytest

from cnn_xp import Recipe
from cnn_xp.app import cli
from cnn_xp.app.run_checkpoint import load_run_checkpoint
from cnn_xp.checkpoint import load_checkpoint
from cnn_xp.errors import ConfigError
from cnn_xp.models import MODELS
from cnn_xp.recipe import MAX_SEED, recipe_fields
from train_helpers import data_dir, isolated, no_plots, train  # noqa: F401 (fixtures)

RUN_FLAGS = {"--resume", "--out", "--device", "--kernels", "--no-download", "--no-progress", "--json"}


def field_flags(f) -> list[str]:
    return [flag for flag, *_ in f.metadata["flags"]] if f.metadata["flags"] else ["--" + f.name.replace("_", "-")]


def help_sections(capsys) -> dict[str, list[str]]:
    """Section title -> the flags its option lines start with, from ``cnn-xp train --help``."""
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    sections = {}
    for block in text.split("\n\n")[1:]:
        title, *lines = block.splitlines()
        sections[title] = [m.group(1) for line in lines if (m := re.match(r"  (--[a-z0-9-]+)", line))]
    return sections


def one_line_error(capsys, code, expected=2) -> str:
    captured = capsys.readouterr()
    assert code == expected, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("cnn-xp: error: ")
    return lines[0]


# -- flags ---------------------------------------------------------------------------------
def test_every_recipe_field_has_its_flags_and_every_recipe_flag_is_a_field(capsys):
    sections = help_sections(capsys)
    recipe_section = [flags for title, flags in sections.items() if title.startswith("recipe")]
    assert len(recipe_section) == 1
    shown = recipe_section[0]
    assert len(shown) == len(set(shown))  # each flag once
    expected = [flag for f in recipe_fields() for flag in field_flags(f)]
    assert shown == expected  # in field order, one (or the field's repeatable ones) per field
    owners = {flag: f.name for f in recipe_fields() for flag in field_flags(f)}
    assert len(owners) == len(expected)  # no flag shared by two fields
    everything = {flag for flags in sections.values() for flag in flags}
    assert everything == set(expected) | RUN_FLAGS


def test_each_recipe_flag_sets_its_own_field():
    """Parsing each flag fills exactly its field's override (and nothing else)."""
    from cnn_xp.app.flags import recipe_overrides

    parser = cli.build_parser()
    values = {"--model": "lenet5", "--dataset": "fashion-mnist", "--data-dir": "d", "--epochs": "3",
              "--batch-size": "7", "--optimizer": "Momentum", "--optimizer-arg": "momentum=0.5", "--lr": "0.1",
              "--lr-group": "0.*=0.01", "--lr-scale": "1.*=0.5", "--schedule": "step", "--warmup-epochs": "0.5",
              "--schedule-epochs": "4", "--step-epochs": "1", "--gamma": "0.5", "--augment": "shift=0.1",
              "--val-size": "9", "--split-seed": "3", "--seed": "4", "--dtype": "float64", "--limit-train": "50",
              "--limit-test": "20", "--channels": "3", "--image-size": "16x12", "--test-fraction": "0.3",
              "--skip-bad": None, "--milestones": "1,2"}
    assert set(values) == {flag for f in recipe_fields() for flag in field_flags(f)}

    def argv(items):
        return [x for flag, value in items for x in ((flag,) if value is None else (flag, value))]

    for flag, value in values.items():
        overrides = recipe_overrides(parser.parse_args(["train", *argv([(flag, value)])]))
        owner = [f.name for f in recipe_fields() if flag in field_flags(f)]
        assert list(overrides) == owner, flag
    every = recipe_overrides(parser.parse_args(["train", *argv(values.items())]))
    assert every["image_size"] == (16, 12) and every["skip_bad"] is True and every["milestones"] == (1.0, 2.0)
    every.pop("milestones")  # --schedule step takes none
    assert every["optimizer"] == "momentum" and every["optimizer_args"] == {"momentum": 0.5}
    assert every["lr_groups"] == ({"params": ["0.*"], "lr": 0.01}, {"params": ["1.*"], "lr_scale": 0.5})
    assert every["augment"]["shift"] == 0.1 and not any(v for k, v in every["augment"].items() if k != "shift")
    assert every["epochs"] == 3 and every["warmup_epochs"] == 0.5
    recipe = Recipe.create(every.pop("model"), **every)
    assert recipe.dataset == "fashion-mnist" and recipe.dtype == "float64" and recipe.limit_test == 20


# -- Recipe.create -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_create_takes_the_zoo_defaults(name):
    spec, recipe = MODELS[name], Recipe.create(name)
    assert recipe.model == name and recipe.dataset == "mnist" and recipe.seed == 0 and recipe.dtype == "float32"
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.epochs) == (
        spec.optimizer.lower(), spec.lr, spec.batch_size, spec.epochs)
    assert (recipe.val_size, recipe.split_seed) == (spec.val_size, spec.split_seed)
    assert recipe.optimizer_args == dict(spec.optimizer_kwargs)
    assert list(recipe.lr_groups) == [dict(g) for g in spec.lr_groups]
    assert recipe.augment == (None if spec.augment is None else dict(spec.augment))
    assert recipe.schedule == (spec.schedule or {}).get("name", "constant")
    assert recipe.schedule_epochs == (None if recipe.schedule == "constant" else spec.epochs)
    assert recipe.data_dir is None and recipe.limit_train is None and recipe.limit_test is None


def test_create_applies_overrides_over_the_zoo():
    recipe = Recipe.create("fast_mnist", lr=0.5, epochs=3)
    assert recipe.lr == 0.5 and recipe.epochs == 3 and recipe.schedule_epochs == 3
    assert recipe.optimizer_args == {"beta1": 0.7, "beta2": 0.9}  # its own optimizer keeps its settings
    assert Recipe.create("fast_mnist", optimizer="sgd").optimizer_args == {}  # another one drops them
    assert Recipe.create("lenet5", augment="none").augment is None
    assert Recipe.create("lenet5", augment=None).augment == dict(MODELS["lenet5"].augment)  # None: the model's
    assert Recipe.create("lenet5", schedule="step", step_epochs=2).gamma == 0.1
    with pytest.raises(TypeError, match="unknown recipe field"):
        Recipe.create("lenet5", learning_rate=0.1)


@pytest.mark.parametrize("overrides, flag", [
    ({"lr": -1.0}, "--lr must be a positive number, got -1.0"),
    ({"lr": float("nan")}, "--lr must be a positive number"),
    ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
    ({"epochs": 2.5}, "--epochs must be a positive integer"),
    ({"optimizer": "lion"}, "--optimizer must be one of sgd"),
    ({"dataset": "cifar"}, "--dataset must be one of"),
    ({"seed": MAX_SEED + 1}, f"--seed must be an integer in 0..{MAX_SEED}, got {MAX_SEED + 1}"),
    ({"seed": -1}, f"--seed must be an integer in 0..{MAX_SEED}"),
    ({"gamma": 0.5}, "--gamma applies to --schedule step or multistep only"),
    ({"schedule": "step"}, "--schedule step needs --step-epochs E"),
    ({"warmup_epochs": 50.0}, "--warmup-epochs must be in [0, 20]"),
    ({"optimizer_args": {"momentum": 0.9}}, "--optimizer-arg momentum is not a setting of adam"),
    ({"lr_groups": ({"params": ["0.W"]},)}, "--lr-group/--lr-scale group 0 must have"),
    ({"augment": {"spin": 3}}, "--augment "),
])
def test_a_bad_value_is_a_config_error_naming_the_flag(overrides, flag):
    with pytest.raises(ConfigError) as info:
        Recipe.create("lenet5", **overrides)
    assert str(info.value).startswith(flag), str(info.value)
    assert isinstance(info.value, ValueError)


def test_an_unknown_model_names_the_model_flag():
    with pytest.raises(ConfigError, match=r"^--model must be one of one_conv"):
        Recipe.create("resnet")


@pytest.mark.parametrize("argv, line", [
    (["--lr", "0"], "cnn-xp: error: --lr must be a positive number, got 0.0"),
    (["--lr", "fast"], "cnn-xp: error: argument --lr: expected a number, got 'fast'"),
    (["--batch-size", "-3"], "cnn-xp: error: --batch-size must be a positive integer, got -3"),
    (["--optimizer-arg", "beta1"], "cnn-xp: error: argument --optimizer-arg: expected NAME=VALUE"),
])
def test_a_bad_flag_is_one_line_exit_2_and_nothing_is_created(data_dir, tmp_path, capsys, argv, line):
    out = tmp_path / "run"
    line_seen = one_line_error(capsys, train(data_dir, out, *argv))
    assert line_seen.startswith(line), line_seen
    assert not out.exists()


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", [
    *[Recipe.create(name) for name in MODELS],
    Recipe.create("one_conv", lr_groups=({"params": ["0.W"], "lr": 0.01}, {"params": ["2.*"], "lr_scale": 0.5}),
                  schedule="step", step_epochs=1.5, gamma=0.3, warmup_epochs=0.5, augment={"rotate": 5.0},
                  data_dir="some/where", limit_train=100, limit_test=10, dtype="float64", seed=MAX_SEED),
    Recipe.create("fast_mnist", optimizer="momentum", optimizer_args={"momentum": 0.8}, augment="none"),
], ids=lambda r: r.model)
def test_from_dict_of_to_dict_round_trips_through_json(recipe):
    data = json.loads(json.dumps(recipe.to_dict()))
    again = Recipe.from_dict(data)
    assert again == recipe and again.to_dict() == recipe.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Recipe)}


def test_from_dict_checks_like_the_flags_but_names_the_field():
    data = Recipe.create("lenet5").to_dict()
    with pytest.raises(ConfigError, match=r"^ckpt: recipe\.lr must be a positive number, got -2"):
        Recipe.from_dict({**data, "lr": -2}, where="ckpt: recipe")
    with pytest.raises(ConfigError, match="lacks seed"):
        Recipe.from_dict({k: v for k, v in data.items() if k != "seed"})
    with pytest.raises(ConfigError, match="unknown field"):
        Recipe.from_dict({**data, "momentum": 0.9})


@pytest.mark.usefixtures("no_plots")
def test_the_checkpoint_and_summary_record_the_runs_recipe(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1", "--val-size", "20", "--lr", "0.002", "--seed", "3",
                 "--limit-test", "30", "--lr-scale", "0.*=0.5") == 0
    expected = Recipe.create("simple_convnet", dataset="mnist", data_dir=data_dir, epochs=1, val_size=20, lr=0.002,
                             seed=3, limit_test=30, lr_groups=({"params": ["0.*"], "lr_scale": 0.5},)).to_dict()
    expected = json.loads(json.dumps(expected))
    for name in ("checkpoint.npz", "best.npz"):
        assert load_checkpoint(out / name).meta["recipe"] == expected, name
    assert json.loads((out / "summary.json").read_text())["recipe"] == expected
    import cnn_xp

    assert cnn_xp.load(out / "checkpoint.npz").recipe.to_dict() == expected


def test_models_json_lists_each_zoo_recipe(capsys):
    assert cli.main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed) == list(MODELS)
    for name, recipe in listed.items():
        assert recipe == json.loads(json.dumps(Recipe.create(name).to_dict())), name
        assert Recipe.from_dict(recipe) == Recipe.create(name)


# -- seeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [str(2**32), str(2**64), str(10**30)])
def test_seeds_past_2_32_minus_1_are_refused_up_front(data_dir, tmp_path, capsys, seed):
    out = tmp_path / "run"
    line = one_line_error(capsys, train(data_dir, out, "--epochs", "1", "--seed", seed))
    assert line == f"cnn-xp: error: --seed must be an integer in 0..4294967295, got {seed}"
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("no_plots")
def test_the_largest_seed_trains_resumes_and_evaluates(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--seed", str(MAX_SEED), "--limit-train", "100", "--limit-test", "20", "--val-size", "20")
    assert train(data_dir, out, "--epochs", "1", *common, model="deep_convnet") == 0  # dropout seeds too
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    ckpt = load_run_checkpoint(out / "checkpoint.npz")
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["recipe"]["seed"] == MAX_SEED
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--data-dir", data_dir,
                     "--no-download"]) == 0
    assert "test accuracy: " in capsys.readouterr().out
