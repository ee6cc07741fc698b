"""The README's methods table is generated from the registry records and must be current."""

import re
from pathlib import Path

from normlab.cli import main
from normlab.registry import METHODS, methods_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_methods_table_is_the_generated_one():
    text = README.read_text()
    match = re.search(r"<!-- methods-table:[^\n]*-->\n(.*?)<!-- methods-table end -->", text, re.S)
    assert match, "README lost its methods-table markers"
    assert match.group(1) == methods_table(), "README's methods table is stale: paste `normlab norms --markdown`"


def test_table_has_one_row_per_record(capsys):
    assert main(["norms", "--markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [m.name for m in METHODS]


def test_readme_walkthrough_runs():
    """The README's audit -> swap -> fold walk-through, as written."""
    import pytest

    pytest.importorskip("torchvision")
    text = README.read_text()
    block = re.search(r"<!-- walkthrough -->\n```python\n(.*?)```\n<!-- walkthrough end -->", text, re.S)
    assert block, "README lost its walkthrough markers"
    exec(compile(block.group(1), "README walkthrough", "exec"), {})
