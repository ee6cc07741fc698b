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

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["Training", "Schedule", "LossLog", "fit", "lr_factor"]


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate's multiplier at ``step``: 1 (constant) or a cosine decay to 0 at the last step."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A run's learning rate at each step: ``lr`` x a linear warmup over ``warmup`` steps x ``kind``'s decay
    (constant, or cosine to 0 at ``steps``)."""

    lr: float
    kind: str
    steps: int
    warmup: int = 0

    def factor(self, step: int) -> float:
        """The multiplier of the peak rate at ``step`` (runs packed together share it)."""
        return self._warm(step) * lr_factor(self.kind, step, self.steps)

    def lr_at(self, step: int) -> float:
        return self.lr * self._warm(step) * lr_factor(self.kind, step, self.steps)

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

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def fit(training: Training, *, steps: int, points: int, divergence: bool = True, saver=None) -> list[bool]:
    """Train ``steps`` steps; per run, whether it diverged. ``saver`` (:class:`normlab.lab.checkpoint.Saver`)
    checkpoints at its interval and resumes from its saved state; ``divergence`` False for runs whose processes must
    agree on every step (data-parallel ranks each see only their slice's loss)."""
    logs = [LossLog() for _ in range(training.runs)]
    alive, diverged, start = [True] * training.runs, [False] * training.runs, 0
    saved = saver.load() if saver is not None else None
    if saved is not None:
        start, alive, diverged = saved["step"], list(saved["alive"]), list(saved["diverged"])
        for log, state in zip(logs, saved["logs"]):
            log.load(state)
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        training.load_state_dict(saved["training"])
    every = max(1, steps // points)
    for step in range(start, steps):
        live = [i for i in range(training.runs) if alive[i]]
        values = training.step(step, live, probe=step % every == 0)
        for i in live:
            if logs[i].add(values[i]) and divergence:
                diverged[i], alive[i] = True, False
                training.stop(i)
        if not any(alive):
            break
        if step % every == 0 or step == steps - 1:
            for i in live:
                if alive[i]:
                    training.record(step, i, logs[i].flush())
        if saver is not None and step + 1 < steps and saver.due():
            saver.save({"step": step + 1, "alive": alive, "diverged": diverged, "logs": [log.state() for log in logs],
                        "rng": torch.get_rng_state(), "training": training.state_dict(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None})  # fmt: skip
    return diverged
