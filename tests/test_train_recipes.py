"""The trainer's recipe options end to end on a tiny IDX data set: learning-rate groups,
schedules and augmentation reach the run, are saved in its checkpoint, resume
bit-identically, and bad values are one line with exit status 2."""
import json

import numpy as np
import pytest

from cnn_xp import models
from cnn_xp.checkpoint import load_checkpoint
from train_helpers import data_dir, isolated, train  # noqa: F401 (fixtures)




RECIPES = {
    # model, its optimizer, extra flags
    "cosine+augment+groups": ("simple_convnet", "adam", ("--schedule", "cosine", "--warmup-epochs", "0.5",
                                                         "--augment", "shift=0.1,scale=0.1,rotate=10,shear=10",
                                                         "--lr-scale", "0.*=0.5", "--lr-group", "3.W=0.002")),
    "onecycle (fast_mnist)": ("fast_mnist", "adam", ()),
    "step+warmup (one_conv groups)": ("one_conv", "sgd", ("--schedule", "step", "--step-epochs", "1",
                                                          "--gamma", "0.5", "--warmup-epochs", "1", "--val-size", "0")),
    "lenet5 augmentation": ("lenet5", "adam", ()),
}


@pytest.mark.parametrize("recipe, threads", [(name, "2") for name in RECIPES] + [("cosine+augment+groups", "1")])
def test_resume_with_schedule_augmentation_and_groups_is_bit_identical(data_dir, tmp_path, monkeypatch, recipe,
                                                                        threads):
    """3 epochs in one go == 1 epoch, stop, resume for 2 more: the schedule (planned over 3
    epochs), the augmentation stream and the parameter groups all come back."""
    monkeypatch.setenv("CNN_XP_THREADS", threads)
    model, optimizer, extra = RECIPES[recipe]
    common = ("--batch-size", "50", "--seed", "3", "--optimizer", optimizer, "--limit-train", "120",
              "--limit-test", "20", "--schedule-epochs", "3", *extra)
    assert train(data_dir, tmp_path / "full", "--epochs", "3", *common, model=model) == 0
    assert train(data_dir, tmp_path / "split", "--epochs", "1", *common, model=model) == 0
    assert train(data_dir, tmp_path / "split", "--epochs", "3", "--resume", *common, model=model) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert split.meta["epoch"] == 3
    for key in full.model_state:
        assert np.array_equal(full.model_state[key], split.model_state[key]), key
    assert full.optimizer_state.keys() == split.optimizer_state.keys()
    for key, value in full.optimizer_state.items():
        assert np.array_equal(value, split.optimizer_state[key]), key
    assert full.meta["rng"] == split.meta["rng"] and full.meta.get("schedule") == split.meta.get("schedule")
    hp = full.meta["recipe"]
    if hp["schedule"] != "constant" or hp["warmup_epochs"]:
        assert hp["schedule_epochs"] == 3
        assert full.meta["schedule"]["steps"] == 3 * 3  # 120 images / batch 50 -> 3 steps per epoch
    if hp["augment"] is not None:
        assert "augment" in full.meta["rng"]
    if hp["lr_groups"]:
        assert full.optimizer_state["param_groups"]
    full_rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    split_rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in full_rows] == [r.split(",")[:5] for r in split_rows]


def test_the_options_change_the_training(data_dir, tmp_path):
    """Each option really acts: a run with it ends with other weights than one without."""
    base = ("--epochs", "1", "--limit-train", "100", "--limit-test", "20", "--seed", "1", "--batch-size", "25")
    assert train(data_dir, tmp_path / "plain", *base) == 0
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.npz").model_state["0.W"]
    for name, flags in {"augment": ("--augment", "rotate=20"), "schedule": ("--schedule", "onecycle"),
                        "group": ("--lr-scale", "0.*=0.1")}.items():
        assert train(data_dir, tmp_path / name, *base, *flags) == 0
        assert not np.array_equal(load_checkpoint(tmp_path / name / "checkpoint.npz").model_state["0.W"], plain), name
    # a group scaled by 1 and a zero-strength augmentation are no-ops, bit for bit
    assert train(data_dir, tmp_path / "noop", *base, "--lr-scale", "*=1", "--augment", "shift=0") == 0
    assert np.array_equal(load_checkpoint(tmp_path / "noop" / "checkpoint.npz").model_state["0.W"], plain)


def test_zoo_defaults_carry_their_recipes(data_dir, tmp_path):
    assert models.MODELS["one_conv"].lr_groups == ({"params": ["0.W", "0.b"], "lr_scale": 1 / 784},)
    assert models.MODELS["one_conv"].lr == 0.5 and models.MODELS["one_conv"].optimizer == "sgd"
    assert models.MODELS["lenet5"].augment is not None
    assert models.MODELS["fast_mnist"].schedule["name"] == "onecycle"
    assert train(data_dir, tmp_path / "oc", "--epochs", "1", "--limit-train", "100", "--limit-test", "20",
                 "--val-size", "20", model="one_conv") == 0
    summary = json.loads((tmp_path / "oc" / "summary.json").read_text())
    assert summary["recipe"]["lr_groups"] == [{"params": ["0.W", "0.b"], "lr_scale": 1 / 784}]
    state = load_checkpoint(tmp_path / "oc" / "checkpoint.npz").optimizer_state
    assert state["param_groups"] == [{"patterns": ["0.W", "0.b"], "lr_scale": 1 / 784}]


def test_augment_none_turns_off_the_zoo_default(data_dir, tmp_path):
    assert train(data_dir, tmp_path / "l", "--epochs", "1", "--limit-train", "60", "--limit-test", "20",
                 "--augment", "none", model="lenet5") == 0
    ckpt = load_checkpoint(tmp_path / "l" / "checkpoint.npz")
    assert ckpt.meta["recipe"]["augment"] is None and "augment" not in ckpt.meta["rng"]


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("flags, needle", [
    (["--schedule", "linear"], "--schedule must be one of constant, step, multistep, cosine, onecycle, got 'linear'"),
    (["--schedule", "step"], "--schedule step needs --step-epochs"),
    (["--gamma", "0.5"], "--gamma applies to --schedule step or multistep only"),
    (["--gamma", "2", "--schedule", "step", "--step-epochs", "1"], "--gamma must be a positive number and <= 1, got 2"),
    (["--warmup-epochs", "5"], "--warmup-epochs must be in [0, 2]"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--schedule-epochs", "0"], "--schedule-epochs"),
    (["--augment", "rotate=181"], "rotate must be a number in [0, 180]"),
    (["--augment", "shift=0.6"], "shift must be a number in [0, 0.5]"),
    (["--augment", "spin=3"], "unknown augmentation 'spin'"),
    (["--augment", "rotate"], "expected NAME=VALUE"),
    (["--lr-group", "9.W=0.1"], "names no parameter of this model"),
    (["--lr-scale", "0.W"], "expected PARAMS=VALUE"),
    (["--lr-group", "0.W=0"], "group 0 (0.W) needs a positive rate"),
    (["--lr-group", "0.*=0.1", "--lr-scale", "0.b=2"], "0.b is in parameter groups 0 and 1"),
])
def test_bad_recipe_flags_are_one_line_exit_2(data_dir, tmp_path, capsys, flags, needle):
    err = one_line_error(capsys, train(data_dir, tmp_path / "bad", "--epochs", "2", *flags))
    assert needle in err
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made


def test_resume_refuses_other_recipe_flags(data_dir, tmp_path, capsys):
    common = ("--limit-train", "60", "--limit-test", "20", "--schedule", "cosine", "--schedule-epochs", "2")
    assert train(data_dir, tmp_path / "r", "--epochs", "1", *common) == 0
    capsys.readouterr()
    for flags, needle in ((("--schedule", "onecycle"), "--schedule onecycle differs from the run's cosine"),
                          (("--warmup-epochs", "1"), "--warmup-epochs 1.0 differs from the run's 0.0"),
                          (("--augment", "rotate=5"), "--augment"),
                          (("--lr-scale", "0.*=2"), "--lr-group/--lr-scale")):
        argv = ["--epochs", "2", "--resume", "--limit-train", "60", "--limit-test", "20", *flags]
        assert needle in one_line_error(capsys, train(data_dir, tmp_path / "r", *argv))
    assert train(data_dir, tmp_path / "r", "--epochs", "2", "--resume", *common) == 0  # the same flags: fine


def test_recipe_schedule_keeps_the_models_options():
    from cnn_xp import Recipe

    assert Recipe.create("fast_mnist", epochs=2).schedule_spec() == {"name": "onecycle", "epochs": 2,
                                                                     "warmup_epochs": 0.0}
    assert Recipe.create("fast_mnist", schedule="cosine", warmup_epochs=0.25).schedule_spec() == {
        "name": "cosine", "epochs": 1, "warmup_epochs": 0.25}
    assert Recipe.create("fast_mnist", schedule="constant").schedule_spec() is None
