"""End to end: every study of `normlab compare` (two seeds, a tenth of the budget: the default run takes about half
an hour on 2 cores, so its numbers live in benchmarks/compare_time.py and RESULTS.md), then its report opened in a
real headless Chromium."""

import html
import json
import os
import shutil
import subprocess
import sys

import pytest

from normlab.lab import OUTCOME_ORDER, STUDIES, Options
from normlab.lab.config import make_config
from normlab.lab.store import Store
from normlab.lab.sweep.runner import run_sweep
from normlab.lab.training.train import run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUICK = ["--seeds", "2", "--budget", "0.1"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    res = subprocess.run(
        [sys.executable, "-m", "normlab.cli", "compare", "--out", str(out), "--no-progress", *QUICK],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"report: {(out / 'index.html').resolve()}"
    return out


def test_report_has_every_study_with_figures_tables_and_verdicts(report_dir):
    page = (report_dir / "index.html").read_text()
    for name, study in STUDIES.items():
        assert f'id="{name}"' in page and html.escape(study.claim) in page
    payload = json.loads((report_dir / "results.json").read_text())
    assert set(payload["verdicts"]) == set(STUDIES)
    for name, verdicts in payload["verdicts"].items():
        assert verdicts, f"{name} produced no verdict"
        assert all(v["outcome"] in OUTCOME_ORDER for v in verdicts)
    with Store(report_dir / "results.sqlite") as store:
        assert store.count() == len(payload["runs"])
    finals = [r for r in payload["runs"] if r["role"] == "final"]
    assert len(finals) == sum(len(s.configs(Options(seeds=2))) for s in STUDIES.values())
    assert len((report_dir / "results.csv").read_text().splitlines()) == len(payload["runs"]) + 1
    assert "http://" not in page and "https://" not in page  # works offline: nothing fetched


def test_report_shows_how_each_study_was_tuned_and_whether_it_trained(report_dir):
    """Every study's training check and budget table; every tuned study its grid, scores, chosen rates and
    selection figure; every comparison its outcome at T and 2T; and at a tenth of the budget the verdicts say the
    models did not train."""
    payload = json.loads((report_dir / "results.json").read_text())
    page = (report_dir / "index.html").read_text()
    for name, check in payload["training"].items():
        assert check["settings"] > 0 and check["budget"] == "2T", name
        for v in payload["verdicts"][name]:
            assert v["effect"] is None or [h[0] for h in v["history"]][:2] == [0, 1], (name, v["claim"])
    assert page.count("Trained?") >= len(STUDIES) and page.count("<b>Budgets.</b>") == len(STUDIES)
    for name, study in STUDIES.items():
        fair = payload["fairness"][name]
        assert fair["budgets"] and all(set(row["means"]) >= {"0", "1"} for row in fair["budgets"]), name
        assert (report_dir / "figures" / fair["budget_figure"]).exists(), name  # each setting against budget
        if study.selection is None:
            assert fair["selection"] == study.untuned and not fair["choices"]
            continue
        assert fair["figure"] == f"{name}-selection.png" and (report_dir / "figures" / fair["figure"]).exists()
        for choice in fair["choices"]:
            assert len(choice["grid"]) >= 4 and choice["chosen"] in choice["grid"], (name, choice)
    outcomes = [v["outcome"] for vs in payload["verdicts"].values() for v in vs]
    assert "inconclusive: not trained" in outcomes


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium not installed")
def test_report_renders_in_headless_chromium(report_dir):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must install Debian's chromium"
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report_dir / "index.html").resolve().as_uri())
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])"
        )
        page.screenshot(path=str(report_dir / "screenshot.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(images) >= len(STUDIES)
    assert all(complete and width > 0 for _, complete, width in images), images
    assert (report_dir / "screenshot.png").stat().st_size > 50_000


def test_rerun_only_rebuilds_the_report(report_dir):
    res = subprocess.run(
        [sys.executable, "-m", "normlab.cli", "compare", "--out", str(report_dir), "--no-progress", *QUICK],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and "0 ran now" in res.stdout


def test_same_seed_same_numbers():
    config = make_config("classify", study="t", data="mnist1d", norm="batch", seed=3, batch_size=32, lr=0.05, steps=30)
    assert run(config) == run(config)


def test_inapplicable_norms_are_recorded_with_the_reason(tmp_path):
    configs = [
        make_config("char_lm", study="sequence", norm="instance", seed=0, batch_size=4, seq_len=16, lr=1e-3, steps=2)
    ]
    report = run_sweep(configs, tmp_path / "r.sqlite", progress=False)
    assert report.ran == 1 and not report.failed
    (record,) = Store(tmp_path / "r.sqlite").records()
    assert record.status == "not_applicable" and "spatial" in record.note
