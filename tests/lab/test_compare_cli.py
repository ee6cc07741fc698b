import subprocess
import sys

import pytest

from normlab.cli import main
from normlab.lab import STUDIES


def test_list_shows_every_study_and_claim(capsys):
    assert main(["compare", "--list"]) == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert name in out and study.claim[:30] in out


def test_help():
    res = subprocess.run([sys.executable, "-m", "normlab.cli", "compare", "--help"], capture_output=True, text=True)
    for flag in ("--study", "--norms", "--seeds", "--full", "--out", "--workers", "--device", "--fresh", "--data"):
        assert flag in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--norms", "batch,bogus"], "unknown norm 'bogus'"),
    (["--study", "nope"], "unknown study nope"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--data", "imagenet:/x"], "--data must be cifar10:PATH or mnist:PATH"),
    (["--nproc", "0"], "--nproc must be at least 1"),
])
def test_bad_options_are_clear_errors(args, message, capsys, tmp_path):
    assert main(["compare", "--out", str(tmp_path), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_norms_option_reaches_the_models(tmp_path, capsys):
    assert main(["compare", "--study", "contrast", "--norms", "gn,in", "--seeds", "1", "--out", str(tmp_path),
                 "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 0 already stored, 2 ran now" in out
