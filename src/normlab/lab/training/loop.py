"""The lab's one training loop: every run (the ConvNet alone or packed, the language model, the data-parallel ranks,
the user's own model) steps through :func:`fit`.

A run's task supplies a :class:`Training`: what one optimizer step does, what a curve point records, and its state.
The loop owns the rest, the same for all: the step count, the curve points (every ``steps // points`` steps and the
last), the loss between points, divergence (a non-finite loss, or 10x the first: the run stops learning and is
scored as diverged), and checkpoints (the whole state at a step boundary, at the saver's interval; a loop given a
saved state goes on from its step, and on CPU ends where an uninterrupted run ends, bit for bit).

Several runs may train as one (a packed model): ``training.runs`` of them, each with its own loss log and
divergence; a run that diverges is told to :meth:`Training.stop` and the others go on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

__all__ = [
    "Training",
    "LadderTraining",
    "Saver",
    "Trunk",
    "Schedule",
    "LossLog",
    "fit",
    "fit_ladder",
    "lr_factor",
    "SCHEDULES",
]

SCHEDULES = ("constant", "cosine", "wsd")


def lr_factor(schedule: str, step: int, steps: int, cooldown: float = 0.2) -> float:
    """The learning rate's multiplier at ``step`` of ``steps``: 1 (constant), a cosine decay to 0 at the last step,
    or warmup-stable-decay ("wsd"): 1 until the last ``cooldown`` share of the steps, then 1 - sqrt(t) over them
    (t from 0 to 1; the (1-sqrt) cooldown of Hägele et al. 2024)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    if schedule == "wsd":
        start, length = decay_start(steps, cooldown), steps - decay_start(steps, cooldown)
        return 1.0 if step < start else 1.0 - math.sqrt((step - start) / length)
    raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def decay_start(steps: int, cooldown: float) -> int:
    """The first step of a warmup-stable-decay run's cooldown (at least one step decays)."""
    return steps - min(steps, max(1, round(cooldown * steps)))


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A run's learning rate at each step: ``lr`` x a linear warmup over ``warmup`` steps x ``kind``'s decay
    (constant; cosine to 0 at ``steps``; or "wsd": constant, then a (1-sqrt) decay over the last ``cooldown``
    share of the steps)."""

    lr: float
    kind: str
    steps: int
    warmup: int = 0
    cooldown: float = 0.2

    def factor(self, step: int) -> float:
        """The multiplier of the peak rate at ``step`` (runs packed together share it)."""
        return self._warm(step) * lr_factor(self.kind, step, self.steps, self.cooldown)

    def lr_at(self, step: int) -> float:
        return self.lr * self.factor(step)

    @property
    def branch_step(self) -> int:
        """Where this run leaves a longer run of the same "wsd" schedule: the steps before it are the same in both
        (the stable phase). Other schedules share nothing with a longer run."""
        return decay_start(self.steps, self.cooldown) if self.kind == "wsd" else 0

    def _warm(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0


class LossLog:
    """One run's loss between two curve points, and its divergence: non-finite, or 10x the first loss."""

    def __init__(self) -> None:
        self.initial: float | None = None
        self.window: list[float] = []

    def add(self, value: float) -> bool:
        """Record one step's loss; True when training has diverged."""
        self.initial = value if self.initial is None else self.initial
        self.window.append(value)
        return not math.isfinite(value) or value > 10 * max(self.initial, 1.0)

    def flush(self) -> float:
        mean, self.window = float(np.mean(self.window)), []
        return mean

    def state(self) -> list[Any]:
        return [self.initial, list(self.window)]

    def load(self, state: list[Any]) -> None:
        self.initial, self.window = state[0], list(state[1])


class Training(Protocol):
    """What a task trains, one step at a time (see the module docstring)."""

    runs: int  # runs trained together: 1 alone, K packed

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        """One optimizer step of the ``live`` runs; each run's loss of this step (entries of other runs unread).
        ``probe``: this step is a curve point (measurements taken before the step, as gradient predictiveness)."""
        ...

    def stop(self, run: int) -> None:
        """Run ``run`` diverged: it learns no more."""
        ...

    def record(self, step: int, run: int, loss: float) -> None:
        """A curve point of ``run`` after ``step``; ``loss`` is its mean loss since the last point."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on (tensors and plain containers: it is saved with torch.save and read
        with ``weights_only=True``)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to ``state`` (a checkpoint, or the trunk after a ladder's branch was evaluated: the models are
        put back in training mode)."""
        ...


class LadderTraining(Training, Protocol):
    """A :class:`Training` whose learning rate follows a :class:`Schedule` it holds: what :func:`fit_ladder` trains."""

    schedule: Schedule  # read by the task at every step; a ladder (fit_ladder) swaps it per budget


class Saver(Protocol):
    """Where a run checkpoints (:class:`normlab.lab.sweep.checkpoint.Saver`): whether a save is due, the save, and
    the state saved last (None when there is none)."""

    def due(self) -> bool: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...


class Trunk(Protocol):
    """Where a ladder keeps its trunk for a later, longer ladder of the same runs
    (:class:`normlab.lab.sweep.checkpoint.Trunk`, :class:`normlab.lab.training.packed.PackTrunk`): the state saved,
    if it ends at or before step ``before``."""

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self, before: int) -> dict[str, Any] | None: ...


T = TypeVar("T")


class _Loop:
    """The loop's own state over ``training``: the step reached, each run's loss log and divergence."""

    def __init__(self, training: Training, every: int, divergence: bool) -> None:
        self.training, self.every, self.divergence = training, every, divergence
        self.logs = [LossLog() for _ in range(training.runs)]
        self.alive, self.diverged, self.step = [True] * training.runs, [False] * training.runs, 0

    def advance(
        self, stop: int, last: int | None, saver: Saver | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        """Train up to step ``stop`` (a curve point every ``every`` steps and at step ``last``)."""
        training = self.training
        while self.step < stop and any(self.alive):
            step = self.step
            live = [i for i in range(training.runs) if self.alive[i]]
            values = training.step(step, live, probe=step % self.every == 0)
            for i in live:
                if self.logs[i].add(values[i]) and self.divergence:
                    self.diverged[i], self.alive[i] = True, False
                    training.stop(i)
            if (step % self.every == 0 or step == last) and any(self.alive):
                for i in live:
                    if self.alive[i]:
                        training.record(step, i, self.logs[i].flush())
            self.step = step + 1
            if saver is not None and self.step < stop and saver.due():
                saver.save({**self.state(), **(extra or {})})

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "alive": list(self.alive),
            "diverged": list(self.diverged),
            "logs": [log.state() for log in self.logs],
            "rng": torch.get_rng_state(),
            "training": self.training.state_dict(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.step, self.alive, self.diverged = saved["step"], list(saved["alive"]), list(saved["diverged"])
        for log, state in zip(self.logs, saved["logs"], strict=True):
            log.load(state)
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        self.training.load_state_dict(saved["training"])


def fit(
    training: Training,
    *,
    steps: int,
    points: int,
    divergence: bool = True,
    saver: Saver | None = None,
    every: int | None = None,
) -> list[bool]:
    """Train ``steps`` steps; per run, whether it diverged. A curve point every ``every`` steps (default
    ``steps // points``) and at the last. ``saver`` (:class:`normlab.lab.sweep.checkpoint.Saver`) checkpoints at its
    interval and resumes from its saved state; ``divergence`` False for runs whose processes must agree on every step
    (data-parallel ranks each see only their slice's loss)."""
    loop = _Loop(training, every or max(1, steps // points), divergence)
    saved = saver.load() if saver is not None else None
    if saved is not None:
        loop.load(saved)
    loop.advance(steps, last=steps - 1, saver=saver)
    return loop.diverged


def fit_ladder(
    training: LadderTraining,
    rungs: Sequence[Schedule],
    evaluate: Callable[[int, list[bool]], T],
    *,
    every: int,
    divergence: bool = True,
    saver: Saver | None = None,
    trunk: Trunk | None = None,
) -> list[T]:
    """Train the same runs at several budgets from one trajectory; ``evaluate(rung index, diverged)``'s result per
    rung.

    ``rungs`` are the runs' "wsd" schedules at each budget, by ascending steps. The trunk follows the longest one
    (its stable phase: the same steps as every shorter run's). At each rung's :attr:`Schedule.branch_step` the
    whole state is copied, the copy decays over that rung's remaining steps and is evaluated, and the trunk goes on
    from the copy's origin. Each rung's result is the run at that budget trained alone, bit for bit on CPU, for
    ``steps`` of the trunk plus one cooldown per rung: budgets T and 2T with a 20% cooldown cost 2.2T, not 3T.
    ``saver`` checkpoints the trunk and the last rung (with the rungs already evaluated) and resumes them; a kill
    during another rung's cooldown repeats that cooldown. ``trunk`` (:class:`normlab.lab.sweep.checkpoint.Trunk`) keeps
    the trunk where the last rung leaves it, and a later ladder of the same runs starts from it.
    """
    if any(r.kind != "wsd" for r in rungs[:-1]) or list(rungs) != sorted(rungs, key=lambda r: r.steps):
        raise ValueError("fit_ladder: every rung but a single one must be a 'wsd' schedule, by ascending steps")
    loop = _Loop(training, every, divergence)
    saved = saver.load() if saver is not None else None
    outputs: list[T] = []
    if saved is None and trunk is not None:
        saved = trunk.load(before=rungs[0].branch_step)
    if saved is not None:
        outputs = list(saved.pop("done"))
        loop.load(saved)
    for index, rung in enumerate(rungs):
        if index < len(outputs):
            continue
        training.schedule = rungs[-1]
        loop.advance(rung.branch_step, last=None, saver=saver, extra={"done": outputs})
        last = index == len(rungs) - 1
        if last and trunk is not None and rung.kind == "wsd":
            trunk.save({**loop.state(), "done": []})
        origin = None if last else copy.deepcopy(loop.state())
        training.schedule = rung
        loop.advance(rung.steps, last=rung.steps - 1, saver=saver if last else None, extra={"done": outputs})
        outputs.append(evaluate(index, list(loop.diverged)))
        if origin is not None:
            loop.load(origin)
    return outputs
