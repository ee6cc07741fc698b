"""Results store: one SQLite file (stdlib sqlite3, WAL), one row per finished run, keyed by its configuration's hash.

A row is written in one transaction when its run has finished, so a ``kill -9`` at any moment loses only the runs
in progress: never a finished one, never half a row. ``INSERT OR IGNORE`` on the primary key makes a run that two
workers finish twice count once. Each worker process opens its own connection; WAL lets them write one at a time
while readers keep reading.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, as_dict

__all__ = [
    "Store",
    "RunRecord",
    "config_key",
    "setting_key",
    "trunk_key",
    "check_store",
    "LAB_VERSION",
    "training_code_hash",
]

# What a configuration produces is set by its fields and by the code that trains it. LAB_VERSION names the lab's
# generations for people (4: learning rates selected per setting, method recipes, budgets); the key also holds a
# hash of the training code itself (TRAINING_CODE), so a change to that code cannot reuse rows stored by the old
# code, whether or not anyone remembers to bump the version.
LAB_VERSION = "4"
# The code a run's result depends on: the lab's training path and the norms it builds (not the studies' analysis,
# the report or the CLI, which read stored rows).
TRAINING_CODE = (
    "lab/config.py",
    "lab/metrics.py",
    "lab/training",
    "nn",
    "functional",
    "registry.py",
    "method.py",
    "transform.py",
    "distributed.py",
    "_checks.py",
)

SOURCE_SUFFIXES = (".py", ".cpp", ".h")  # the C++ kernels compiled on first use (functional/csrc) are training code


def training_code_hash(root: Path | None = None) -> str:
    """sha256 over the bytes of every file of :data:`TRAINING_CODE` under the package ``root``, in a fixed order;
    without ``root``, the hash of the code this process imported (read once, at import)."""
    return _CODE if root is None else _hash_code(Path(root))


def _hash_code(root: Path) -> str:
    digest = hashlib.sha256()
    for entry in TRAINING_CODE:
        path = root / entry
        for file in sorted(f for f in path.rglob("*") if f.suffix in SOURCE_SUFFIXES) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


_CODE = _hash_code(Path(__file__).resolve().parents[1])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key      TEXT PRIMARY KEY,
    study    TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('done', 'not_applicable')),
    config   TEXT NOT NULL,
    metrics  TEXT NOT NULL,
    curves   TEXT NOT NULL,
    note     TEXT NOT NULL DEFAULT '',
    seconds  REAL NOT NULL,
    finished TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_study ON runs (study);
"""


def setting_key(config: RunConfig | Mapping[str, Any], *without: str) -> str:
    """A setting: the configuration but for its seed (and the fields ``without``)."""
    return json.dumps({k: v for k, v in as_dict(config).items() if k not in ("seed", *without)}, sort_keys=True)


def trunk_key(config: RunConfig | Mapping[str, Any]) -> str:
    """A setting as the budgets see it: the configuration but for its seed and its doublings."""
    return setting_key(config, "doublings")


def config_key(config: RunConfig | Mapping[str, Any]) -> str:
    """A stable hash of the full configuration (typed, or as stored), the lab version and the training code
    (:func:`training_code_hash`)."""
    canonical = json.dumps(
        {"lab_version": LAB_VERSION, "code": _CODE, **as_dict(config)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunRecord:
    key: str
    study: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[float]]
    note: str
    seconds: float


_COLUMNS = ["key", "study", "status", "config", "metrics", "curves", "note", "seconds", "finished"]


def check_store(path: str | Path) -> None:
    """ValueError naming ``path`` unless it is absent or a normlab results store. Opens it read-only: a file that
    is not one (corrupt, or another program's database) is left exactly as it was."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path}: expected a normlab results store (an SQLite file), found a directory")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise ValueError(
            f"{path}: expected a normlab results store, but it is not a readable SQLite database "
            f"({err}); move it away or choose another --out"
        ) from None
    if tables and columns != _COLUMNS:
        raise ValueError(
            f"{path}: an SQLite database but not a normlab results store (tables: "
            f"{', '.join(sorted(tables)) or 'none'}); move it away or choose another --out"
        )


class Store:
    """``<out>/results.sqlite``. Cheap to open; open one per process."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished_keys(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT key FROM runs")}

    def put(
        self,
        config: RunConfig | Mapping[str, Any],
        metrics: dict[str, float],
        curves: dict[str, list[float]],
        seconds: float,
        status: str = "done",
        note: str = "",
    ) -> bool:
        """Record one finished run atomically; returns False if that configuration was already stored."""
        plain = as_dict(config)
        row = (
            config_key(plain),
            plain["study"],
            status,
            json.dumps(plain, sort_keys=True),
            json.dumps(metrics, allow_nan=True),
            json.dumps(curves, allow_nan=True),
            note,
            float(seconds),
            time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        with self._conn:  # one transaction: BEGIN ... COMMIT
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO runs (key, study, status, config, metrics, curves, note, seconds, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return cur.rowcount == 1

    def records(self, study: str | None = None, keys: Iterable[str] | None = None) -> list[RunRecord]:
        """The stored runs (of ``study``; with ``keys``, only those), ordered by key. Only the rows asked for are
        read: a lab run asks for the new ones after every round."""
        batches: list[list[str] | None] = [None]
        if keys is not None:
            wanted = sorted(set(keys))
            batches = [wanted[i : i + 500] for i in range(0, len(wanted), 500)]
        rows = []
        for batch in batches:
            clauses, args = [], []
            if batch is not None:
                clauses.append(f"key IN ({', '.join('?' * len(batch))})")
                args += batch
            if study is not None:
                clauses.append("study = ?")
                args.append(study)
            where = " WHERE " + " AND ".join(clauses) if clauses else ""
            rows += self._conn.execute(
                "SELECT key, study, status, config, metrics, curves, note, seconds FROM runs" + where, args
            ).fetchall()
        return [
            RunRecord(k, s, st, json.loads(c), json.loads(m), json.loads(cu), n, sec)
            for k, s, st, c, m, cu, n, sec in sorted(rows)
        ]

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
