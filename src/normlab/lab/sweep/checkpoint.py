"""Checkpoints of a work item in training, so a killed sweep resumes each unfinished run where it stopped.

A work item (one run, or a pack of runs trained together) saves its whole training state (model, optimizer, the
schedule's step, every random generator, the data position, the curves so far) into
``<out>/checkpoints/<item>.pt`` at most every ``every_s`` seconds, at a step boundary. The file is written to a
temporary name and renamed, so a kill at any moment leaves the previous checkpoint or the new one, never half of
one. A rerun of the sweep loads it (``torch.load(..., weights_only=True)``: tensors and plain containers only) and
goes on from that step; on CPU the resumed run's result equals an uninterrupted run's bit for bit (tested with a real
``kill -9``). The checkpoint is removed when the item's rows are stored. A run trained at several budgets also
keeps its trajectory at the constant rate (:class:`Trunk`), so a larger budget asked for later goes on from it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, at_doublings

__all__ = ["Checkpoints", "Saver", "Trunk"]


@dataclass(frozen=True, kw_only=True)
class Checkpoints:
    """Where work items checkpoint (``directory``) and how often (``every_s`` seconds of training; 0: never).

    Passed to the workers with the item, so a remote worker (Ray) needs ``directory`` on a file system it shares
    with the driver to resume there.
    """

    directory: str
    every_s: float = 120.0

    def path(self, configs: list[RunConfig]) -> Path:
        from ..store import config_key

        digest = hashlib.sha256("".join(sorted(config_key(c) for c in configs)).encode()).hexdigest()[:24]
        return Path(self.directory) / f"{digest}.pt"

    def saver(self, configs: list[RunConfig]) -> Saver | None:
        return Saver(self.path(configs), self.every_s) if self.every_s > 0 else None

    def remove(self, configs: list[RunConfig]) -> None:
        self.path(configs).unlink(missing_ok=True)

    def trunk(self, configs: list[RunConfig], packed: bool = False) -> Trunk:
        """Where one run's trajectory at its constant rate is kept for a longer budget of it (``configs``: that run
        at one or several budgets, one :func:`~normlab.lab.training.train.ladder_key`); ``packed``: its slice of a
        pack's (:class:`~normlab.lab.training.packed.PackTrunk`), kept apart from a run trained alone."""
        from ..store import config_key
        from ..training.measurements import supersets, union, without_measurements
        from ..training.train import ladder_key

        if len({ladder_key(c) for c in configs}) != 1:
            raise ValueError("Checkpoints.trunk: one run at several budgets")
        run = union(configs)
        key = config_key(without_measurements(at_doublings(run, 0)))  # config_key: the training code's hash too
        # kept with the measurements it took; it carries on a run that asks for no more of them
        paths = [
            Path(self.directory) / "trunks" / f"{key}{''.join('.' + m for m in s)}{'.packed' if packed else ''}.pt"
            for s in supersets(run)
        ]
        return Trunk(paths[0], carriers=paths[1:])


class Saver:
    """One work item's checkpoint file: :meth:`due` says when the interval has passed since the last save."""

    def __init__(self, path: Path, every_s: float) -> None:
        self.path, self.every_s = Path(path), every_s
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self.last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or it cannot be read: the item then starts over)."""
        import torch

        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, weights_only=True)
        except Exception:  # a checkpoint from other code, or a damaged file: starting over loses only time
            return None


class Trunk:
    """One run's trajectory at its constant rate ("wsd"'s stable phase), saved where a ladder leaves it for its last
    cooldown: a later ladder of the same run (a larger budget, asked for once a verdict needs it) goes on from there
    instead of from step 0. The stable phase is the same whatever the budget, so the result is the same, bit for bit
    on CPU. Written as a checkpoint is (temporary name, then renamed)."""

    def __init__(self, path: Path, carriers: Sequence[Path] = ()) -> None:
        self.path = Path(path)
        self.carriers = [Path(p) for p in carriers]  # trajectories of the same run that measured more

    def save(self, state: dict[str, Any]) -> None:
        Saver(self.path, 0.0).save(state)

    def load(self, before: int) -> dict[str, Any] | None:
        """The saved trajectory (its own, else the first of ``carriers`` kept) if it ends at or before step
        ``before``, else None."""
        for path in [self.path, *self.carriers]:
            state = Saver(path, 0.0).load()
            if state is not None:
                return state if state["step"] <= before else None
        return None
