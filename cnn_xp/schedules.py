"""Learning-rate schedules, independent of the optimizer: a factor per training step.

A schedule is a pure function ``factor(step) -> float`` of the step count (batches done
so far, from 0), planned over ``total_steps``; a :class:`Scheduler` applies it to any
optimizer by setting ``optimizer.lr_factor`` (which multiplies every parameter group's
learning rate), as PyTorch's ``LambdaLR`` does. Call ``scheduler.step()`` after each
``optimizer.step()``, as in PyTorch. Its state is the step count alone, so a restored
scheduler continues with bit-identical learning rates.

Schedules (``create(name, ...)``):

* ``constant``: 1.
* ``step``: ``gamma ** (step // step_size)`` (PyTorch's ``StepLR``, here per step; the
  trainer passes ``step_size`` as epochs times batches per epoch).
* ``cosine``: from 1 to ``min_factor`` along half a cosine (``CosineAnnealingLR``).
* ``onecycle``: Smith & Topin's one cycle with PyTorch's defaults: from ``1/div_factor``
  up to 1 along a cosine over the first ``pct_start`` of the run, then down to
  ``1/(div_factor * final_div_factor)`` (``OneCycleLR`` with ``anneal_strategy="cos"``;
  the momentum is not cycled).

Warm-up: ``warmup_steps`` > 0 ramps the factor linearly, ``(step + 1) / warmup_steps``,
then the schedule runs over the remaining steps. For ``onecycle`` the warm-up *is* its
rising phase: ``warmup_steps`` sets that phase's length instead of ``pct_start``.
A step at or past ``total_steps`` keeps the final factor.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "multistep", "cosine", "onecycle")


class Schedule:
    """Base: ``factor(step)`` for ``step`` >= 0; subclasses define ``_main(progress, step)``
    on the steps after the warm-up, ``progress = (step - warmup_steps) / (total_steps -
    warmup_steps)`` in [0, 1) (as PyTorch's ``T_max``: the end value would be step
    ``total_steps``, one past the last step)."""

    name = "constant"

    def __init__(self, total_steps: int, warmup_steps: int = 0):
        if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps!r}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warm-up must be 0..{int(total_steps)} steps (the whole schedule), got {warmup_steps!r}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def factor(self, step: int) -> float:
        step = min(max(int(step), 0), self.total_steps - 1)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        rest = self.total_steps - self.warmup_steps
        return self._main((step - self.warmup_steps) / rest, step)

    def _main(self, progress: float, step: int) -> float:
        return 1.0

    def config(self) -> dict:
        """The constructor's arguments (JSON-able), ``name`` included."""
        return {"name": self.name, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    name = "constant"


class Step(Schedule):
    """``gamma ** (step // step_size)`` after the warm-up (steps counted from the start)."""

    name = "step"

    def __init__(self, total_steps, step_size: int, gamma: float = 0.1, warmup_steps: int = 0):
        super().__init__(total_steps, warmup_steps)
        if isinstance(step_size, bool) or int(step_size) != step_size or step_size < 1:
            raise ValueError(f"step schedule: step_size must be a positive integer, got {step_size!r}")
        if not (math.isfinite(gamma) and 0 < gamma <= 1):
            raise ValueError(f"step schedule: gamma must be in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def _main(self, progress, step):
        return self.gamma ** (step // self.step_size)

    def config(self):
        return {**super().config(), "step_size": self.step_size, "gamma": self.gamma}


class MultiStep(Schedule):
    """``gamma ** (number of milestones passed)``: the rate falls by ``gamma`` at each
    milestone step (e.g. He et al.'s ResNet schedule: 0.1 at 32k and 48k iterations)."""

    name = "multistep"

    def __init__(self, total_steps, milestones, gamma: float = 0.1, warmup_steps: int = 0):
        super().__init__(total_steps, warmup_steps)
        milestones = list(milestones)
        if not milestones or any(isinstance(m, bool) or int(m) != m or m < 1 for m in milestones) \
                or milestones != sorted(set(milestones)):
            raise ValueError(f"multistep schedule: milestones must be increasing positive step counts, "
                             f"got {milestones!r}")
        if not (math.isfinite(gamma) and 0 < gamma <= 1):
            raise ValueError(f"multistep schedule: gamma must be in (0, 1], got {gamma!r}")
        self.milestones, self.gamma = [int(m) for m in milestones], float(gamma)

    def _main(self, progress, step):
        return self.gamma ** sum(step >= m for m in self.milestones)

    def config(self):
        return {**super().config(), "milestones": list(self.milestones), "gamma": self.gamma}


class Cosine(Schedule):
    """``min_factor + (1 - min_factor) * (1 + cos(pi * progress)) / 2``."""

    name = "cosine"

    def __init__(self, total_steps, min_factor: float = 0.0, warmup_steps: int = 0):
        super().__init__(total_steps, warmup_steps)
        if not (math.isfinite(min_factor) and 0 <= min_factor <= 1):
            raise ValueError(f"cosine schedule: min_factor must be in [0, 1], got {min_factor!r}")
        self.min_factor = float(min_factor)

    def _main(self, progress, step):
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def config(self):
        return {**super().config(), "min_factor": self.min_factor}


def _cos_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class OneCycle(Schedule):
    """Up from ``1/div_factor`` to 1, then down to ``1/(div_factor * final_div_factor)``,
    both halves along a cosine, as PyTorch's ``OneCycleLR``: the peak is at step
    ``pct_start * total_steps - 1``, or at step ``warmup_steps`` when that is given."""

    name = "onecycle"

    def __init__(self, total_steps, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, warmup_steps: int = 0):
        if not (isinstance(pct_start, (int, float)) and math.isfinite(pct_start) and 0 < pct_start < 1):
            raise ValueError(f"onecycle schedule: pct_start must be in (0, 1), got {pct_start!r}")
        for key, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1):
                raise ValueError(f"onecycle schedule: {key} must be a number >= 1, got {value!r}")
        super().__init__(total_steps, 0)
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"onecycle schedule: its rising phase (warm-up) must be 0..{int(total_steps) - 1} "
                             f"steps, got {warmup_steps!r}")
        self.pct_start, self.div_factor, self.final_div_factor = float(pct_start), float(div_factor), float(final_div_factor)
        self.onecycle_warmup = int(warmup_steps)
        self.peak = float(warmup_steps) if warmup_steps else max(0.0, self.pct_start * self.total_steps - 1.0)

    def factor(self, step):
        step = min(max(int(step), 0), self.total_steps - 1)
        low, end = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
        if step <= self.peak:
            return _cos_between(low, 1.0, step / self.peak if self.peak > 0 else 1.0)
        fall = self.total_steps - 1 - self.peak
        return _cos_between(1.0, end, (step - self.peak) / fall)

    def config(self):
        return {"name": self.name, "total_steps": self.total_steps, "warmup_steps": self.onecycle_warmup,
                "pct_start": self.pct_start, "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}


_CLASSES = {"constant": Constant, "step": Step, "multistep": MultiStep, "cosine": Cosine, "onecycle": OneCycle}


def create(name: str, total_steps: int, **kwargs) -> Schedule:
    """A schedule by name (see the module docstring); ValueError on an unknown name or a
    bad argument, in one line."""
    try:
        cls = _CLASSES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None
    try:
        return cls(total_steps, **kwargs)
    except TypeError as exc:  # an argument this schedule does not take
        raise ValueError(f"{cls.name} schedule: {exc}") from None


def from_config(config: dict) -> Schedule:
    """The schedule a ``Schedule.config()`` describes."""
    config = dict(config)
    return create(config.pop("name"), **config)


class Scheduler:
    """Drives ``optimizer.lr_factor`` with ``schedule``: the factor of step 0 at once,
    then one step per ``step()`` call (after each optimizer step)."""

    def __init__(self, optimizer, schedule: Schedule):
        self.optimizer, self.schedule = optimizer, schedule
        self.steps = 0
        self._apply()

    def _apply(self) -> None:
        self.optimizer.lr_factor = self.schedule.factor(self.steps)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "schedule": self.schedule.config()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict()``; ValueError if it was made for another schedule."""
        if state.get("schedule") != self.schedule.config():
            raise ValueError(f"the saved schedule {state.get('schedule')} is not this one {self.schedule.config()}")
        self.steps = int(state["steps"])
        self._apply()
