"""Learning-rate schedules: their factors against closed forms and PyTorch, warm-up, the
scheduler driving any optimizer, state round trips, bad arguments."""
import math

import numpy as np
import pytest

from cnn_xp import optim, schedules
from cnn_xp.layers import Affine
from cnn_xp.model import Sequential


def factors(schedule):
    return [schedule.factor(step) for step in range(schedule.total_steps)]


def test_constant_is_one_and_warmup_ramps_linearly():
    assert factors(schedules.create("constant", 5)) == [1.0] * 5
    assert factors(schedules.create("constant", 6, warmup_steps=4)) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_decays_by_gamma_every_step_size():
    s = schedules.create("step", 7, step_size=3, gamma=0.5)
    assert factors(s) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    warm = schedules.create("step", 7, step_size=3, gamma=0.5, warmup_steps=2)
    assert factors(warm) == [0.5, 1, 1, 0.5, 0.5, 0.5, 0.25]  # milestones count from the start


def test_cosine_runs_from_one_to_min_factor_after_warmup():
    s = schedules.create("cosine", 11, min_factor=0.1, warmup_steps=1)
    f = factors(s)
    assert f[0] == 1.0 and f[1] == 1.0  # warm-up of one step, then the cosine's start
    assert 0.1 < f[-1] < 0.13  # min_factor would be step 11, one past the end (PyTorch's T_max)
    rest = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    np.testing.assert_allclose(f[1:], rest, rtol=1e-15)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


@pytest.mark.parametrize("total, kwargs", [(235, {}), (100, {"pct_start": 0.25}), (9, {"div_factor": 10.0}),
                                           (50, {"final_div_factor": 100.0})])
def test_onecycle_equals_pytorch_onecyclelr(total, kwargs):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    theirs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=total, cycle_momentum=False, **kwargs)
    ours = schedules.create("onecycle", total, **kwargs)
    for step in range(total):
        assert math.isclose(opt.param_groups[0]["lr"], 0.01 * ours.factor(step), rel_tol=1e-12), step
        opt.step()
        if step < total - 1:
            theirs.step()


def test_onecycle_peaks_where_asked_and_ends_low():
    s = schedules.create("onecycle", 100)
    f = factors(s)
    assert math.isclose(f[0], 1 / 25) and max(f) == f[29] == 1.0  # pct_start 0.3: peak at step 29
    assert math.isclose(f[-1], 1 / 25e4)
    warm = factors(schedules.create("onecycle", 100, warmup_steps=10))
    assert warm[10] == 1.0 and max(warm) == 1.0 and warm[9] < 1.0


def test_steps_past_the_end_keep_the_last_factor():
    s = schedules.create("cosine", 10)
    assert s.factor(10) == s.factor(500) == s.factor(9)


def make_model():
    return Sequential([Affine(3, 2, rng=0, dtype="float64")])


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_scheduler_scales_every_optimizer_and_group(name):
    model = make_model()
    opt = optim.create(name, model, lr=0.1, param_groups=[{"params": ["0.b"], "lr_scale": 0.5}])
    sched = schedules.Scheduler(opt, schedules.create("step", 4, step_size=2, gamma=0.1))
    seen = []
    for _ in range(4):
        seen.append((opt.lr_of("0.W"), opt.lr_of("0.b")))
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, [(0.1, 0.05), (0.1, 0.05), (0.01, 0.005), (0.01, 0.005)], rtol=1e-15)
    assert opt.lr == 0.1  # the base rate stays; the factor moves


def test_scheduler_state_round_trip_continues_identically():
    sched_a = schedules.Scheduler(optim.SGD(make_model(), lr=1.0), schedules.create("cosine", 20, warmup_steps=3))
    for _ in range(7):
        sched_a.step()
    opt_b = optim.SGD(make_model(), lr=1.0)
    sched_b = schedules.Scheduler(opt_b, schedules.from_config(sched_a.state_dict()["schedule"]))
    sched_b.load_state_dict(sched_a.state_dict())
    assert opt_b.lr_factor == sched_a.optimizer.lr_factor
    for _ in range(5):
        sched_a.step()
        sched_b.step()
        assert opt_b.lr_factor == sched_a.optimizer.lr_factor
    other = schedules.Scheduler(optim.SGD(make_model(), lr=1.0), schedules.create("cosine", 21))
    with pytest.raises(ValueError, match="not this one"):
        other.load_state_dict(sched_a.state_dict())


@pytest.mark.parametrize("name, kwargs, message", [
    ("linear", {}, "unknown schedule 'linear'"),
    ("step", {}, "step_size"),
    ("step", {"step_size": 0}, "step_size must be a positive integer"),
    ("step", {"step_size": 2, "gamma": 1.5}, "gamma must be in"),
    ("cosine", {"min_factor": -1.0}, "min_factor"),
    ("cosine", {"warmup_steps": 11}, "warm-up must be 0..10"),
    ("onecycle", {"pct_start": 1.0}, "pct_start"),
    ("onecycle", {"warmup_steps": 10}, "rising phase"),
    ("onecycle", {"div_factor": 0.5}, "div_factor"),
    ("cosine", {"gamma": 0.5}, "cosine schedule"),
])
def test_bad_arguments_are_one_line_value_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        schedules.create(name, 10, **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="at least one step"):
        schedules.create("cosine", 0)
