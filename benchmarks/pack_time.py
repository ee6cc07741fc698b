"""Process CPU time of one pack of the batch-size study (its 4 norms x 5 seeds at one batch size, budgets T and 2T
as one ladder), the budget scaled down; runs on the old and the new layout of the lab, so versions compare in
worktrees (a benchmark, not a test):

    PYTHONPATH=<worktree>/src python benchmarks/pack_time.py BATCH BUDGET LABEL
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from typing import Any

import torch

from normlab.lab import Options
from normlab.lab.studies import STUDIES


def _train_packed() -> Any:
    """``train_packed`` where this version of the lab keeps it (lab/training/packed.py, or lab/packed.py before)."""
    try:
        return importlib.import_module("normlab.lab.training.packed").train_packed
    except ImportError:
        return importlib.import_module("normlab.lab.packed").train_packed


def _with(config: Any, **fields: Any) -> Any:
    """``config`` with ``fields`` changed: a typed configuration, or a plain dict (older versions)."""
    return {**config, **fields} if isinstance(config, dict) else dataclasses.replace(config, **fields)


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, dict) else getattr(config, name)


def main() -> None:
    batch, budget, label = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    configs = [c for c in STUDIES["batch-size"].configs(Options()) if _get(c, "batch_size") == batch]
    pack = [_with(c, budget=_get(c, "budget") * budget, doublings=d) for c in configs for d in (0, 1)]
    start = time.process_time()
    _train_packed()(pack)
    print(f"{label} batch {batch} budget {budget}: {len(pack)} configs, {time.process_time() - start:.1f} s cpu")


if __name__ == "__main__":
    main()
