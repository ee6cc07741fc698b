"""How the code is written, checked by machines: ``ruff check``, ``ruff format --check`` and ``mypy`` pass on the
whole tree, so ``pytest`` (the README's test command, what CI runs) fails when one of them does. The tools come with
the ``test`` extra; their settings live in ``pyproject.toml``."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FMT_SKIPS = 20  # ``# fmt: skip`` only where alignment carries meaning (a table of numbers)


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _tool(name: str) -> None:
    if shutil.which(name) is None and _run(sys.executable, "-m", name, "--version").returncode != 0:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def test_ruff_check_passes():
    _tool("ruff")
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_the_tree_as_it_is():
    _tool("ruff")
    result = _run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_error():
    _tool("mypy")
    result = _run(sys.executable, "-m", "mypy", "--no-incremental")  # files and settings: pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_type_ignore_names_its_error_code():
    bare = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "src").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"#\s*type:\s*ignore(?!\[)", line)
    ]
    assert not bare, bare


def test_format_skips_are_few():
    skips = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("src", "tests", "benchmarks", "examples")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert len(skips) <= MAX_FMT_SKIPS, skips
