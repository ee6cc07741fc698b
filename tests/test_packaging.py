"""What a wheel of normlab holds: every C++ file a kernel compiles on first use is declared package data (a file
missing from the wheel would leave the kernel to fail its compile and its users on the slower ATen path)."""

from fnmatch import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and up

SRC = Path(__file__).resolve().parents[1] / "src"


def test_every_kernel_source_is_package_data():
    config = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    declared = config["tool"]["setuptools"]["package-data"]
    sources = sorted(p for p in SRC.rglob("csrc/*") if p.suffix in (".cpp", ".h"))
    assert sources, "no kernel sources found"
    for path in sources:
        package = ".".join(path.parent.parent.relative_to(SRC).parts)
        relative = path.relative_to(path.parent.parent).as_posix()
        patterns = declared.get(package, [])
        assert any(fnmatch(relative, pattern) for pattern in patterns), f"{path.relative_to(SRC)} not in {package}"
