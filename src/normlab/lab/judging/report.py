"""The report: ``<out>/index.html`` with its figures in ``<out>/figures``, plus ``results.csv`` and ``results.json``.

Self-contained and offline: no script, no CDN, only local images and inline CSS.
"""

from __future__ import annotations

import csv
import html
import json
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ... import __version__
from ..store import RunRecord
from .published import ANCHORS
from .selection import Choice, Fairness
from .study import CONVERGENCE, Options, Study, StudyResult, TrainingCheck
from .verdicts import CRITERION, Outcome, Verdict, budget_name

__all__ = ["write_report", "OUTCOME_ORDER", "load_verdicts", "load_recommendations", "stability_rows"]

OUTCOME_ORDER = tuple(Outcome)
_BADGE = {
    Outcome.REPRODUCED: "#1b7f3b",
    Outcome.NOT_REPRODUCED: "#8a6d00",
    Outcome.CONTRADICTED: "#b3261e",
    Outcome.INCONCLUSIVE: "#5f6368",
    Outcome.NOT_TRAINED: "#5f6368",
    Outcome.CHANGES_WITH_BUDGET: "#5f6368",
}
Runs = dict[str, list[RunRecord]]  # a study's runs by role: selection, final, longer budgets, unheld rates

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #202124; }
h1 { margin-bottom: 0; } h2 { border-top: 1px solid #ddd; padding-top: 1em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; } img { max-width: 100%; border: 1px solid #eee; }
.badge { color: white; border-radius: 4px; padding: 1px 7px; font-size: 13px; white-space: nowrap; }
.meta, .evidence { color: #5f6368; font-size: 13px; } .claim { font-size: 16px; }
.anchor { background: #f8f9fa; border-left: 3px solid #bbb; padding: 0.3em 1em; margin: 0.6em 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _badge(outcome: Outcome) -> str:
    return f'<span class="badge" style="background:{_BADGE.get(outcome, "#5f6368")}">{_e(outcome)}</span>'


def _table(headers: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    if not headers:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def outcome_counts(verdicts: Iterable[Verdict]) -> dict[Outcome, int]:
    """How many of ``verdicts`` have each outcome, in :data:`OUTCOME_ORDER` (the report's and the CLI's summary)."""
    counts = {o: 0 for o in OUTCOME_ORDER}
    for v in verdicts:
        counts[v.outcome] += 1
    return counts


def _cost(runs: Runs) -> str:
    parts = [f"{role} {len(rs)} runs, {sum(r.seconds for r in rs):.0f} s" for role, rs in runs.items() if rs]
    return "Compute (one core): " + "; ".join(parts) + "."


def _fairness(fair: Fairness | None) -> str:
    if fair is None:
        return ""
    parts = [f'<div class="fairness"><p><b>Learning rates.</b> {_e(fair.selection)}</p>']
    if fair.figure:
        parts.append(f'<p><img src="figures/{_e(fair.figure)}" alt="learning-rate selection"></p>')
    if fair.choices:
        rows = [
            [
                c.label,
                ", ".join(_grid_score(c, lr, fair.score_scale) for lr in c.grid),
                "-" if c.chosen is None else f"{c.chosen:g}",
                c.note,
            ]
            for c in fair.choices
        ]
        halved = any(c.screening for c in fair.choices)
        grid = "grid: mean validation score" + (" (screened -> whole selection budget)" if halved else "")
        parts.append(_table(["setting", grid, "chosen rate", "note"], rows))
    parts.append(f"<p><b>Budgets.</b> {_e(fair.check)}</p>")
    if fair.budget_figure:
        parts.append(f'<p><img src="figures/{_e(fair.budget_figure)}" alt="metric against budget"></p>')
    if fair.budgets:
        s, levels = fair.check_scale, sorted({d for row in fair.budgets for d in row.means})
        rows = [
            [row.label] + [f"{s * row.means[d]:.4g}" if d in row.means else "-" for d in levels] for row in fair.budgets
        ]
        parts.append(_table(["setting"] + [budget_name(d) for d in levels], rows))
    parts.append("</div>")
    return "\n".join(parts)


def _grid_score(choice: Choice, lr: float, scale: float) -> str:
    """One grid rate's mean validation score: screened, then at the whole selection budget where it went on."""
    if not choice.screening:
        return f"{lr:g}: {_score(choice.scores.get(lr), scale)}"
    whole = f" -> {_score(choice.scores.get(lr), scale)}" if lr in choice.survivors else ""
    return f"{lr:g}: {_score(choice.screening.get(lr), scale)}{whole}"


def _score(value: float | None, scale: float) -> str:
    if value is None or value != value:
        return "-"
    return f"{scale * value:.1f}%" if scale == 100 else f"{value:.3f}"


def _section(study: Study, result: StudyResult, runs: Runs, setup: str) -> str:
    parts = [
        f'<h2 id="{_e(study.name)}">{_e(study.title)} <span class="meta">({_e(study.name)})</span></h2>',
        f'<p class="claim"><b>Claim.</b> {_e(study.claim)} <span class="meta">Source: {_e(study.source)}</span></p>',
        f"<p><b>Setup.</b> {_e(setup)} <span class='meta'>{_e(_cost(runs))}</span></p>",
        _fairness(result.fairness),
    ]
    if result.training is not None:
        color = "#1b7f3b" if result.training.met else "#b3261e"
        parts.append(
            f'<p class="training" style="border-left:3px solid {color};padding-left:0.6em"><b>Trained?</b> '
            f"{_e(result.training.text())}</p>"
        )
    parts += [f'<p><img src="figures/{_e(f)}" alt="{_e(study.name)} figure"></p>' for f in result.figures]
    parts.append(_table(result.table_headers, result.table_rows))
    parts.append("<p><b>Verdicts</b> (computed from the runs above):</p><ul>")
    parts += [
        f"<li>{_badge(v.outcome)} {_e(v.claim)} <span class='meta'>{_e(_settled(v))}</span><br>"
        f"<span class='evidence'>{_e(v.evidence)}</span></li>"
        for v in result.verdicts
    ] or ["<li>no verdict: no finished runs</li>"]
    parts.append("</ul>")
    if result.recommendations:
        parts.append(
            "<p><b>Recommendation</b> (the best trained method, and those it does not beat by the "
            "criterion):</p><ul>" + "".join(f"<li>{_e(r)}</li>" for r in result.recommendations) + "</ul>"
        )
    parts += [f"<p>{_e(note)}</p>" for note in result.notes]
    for anchor in ANCHORS.get(study.name, []):
        parts.append(
            f'<div class="anchor"><b>Published</b> ({_e(anchor.source)}): {_e(anchor.text)}'
            f"{_table(anchor.headers, anchor.rows)}</div>"
        )
    return "\n".join(parts)


def _settled(v: Verdict) -> str:
    """Where a verdict settled, and its outcome at every budget it was judged at."""
    if not v.history:
        return "(no training budget: judged once)" if v.effect is None else ""
    at = ", ".join(f"{budget_name(d)}: {o}" for d, o, _ in v.history)
    if v.settled_at is not None:
        return f"(settled at {budget_name(v.settled_at)}; {at})"
    return f"(not settled; {at})"


def load_verdicts(path: Path, option: str = "--against") -> dict[tuple[str, str], Outcome]:
    """(study, claim) -> outcome from another run's ``results.json`` (ValueError naming the option and the file if
    unreadable)."""
    file = path / "results.json" if path.is_dir() else path
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
        return {(study, v["claim"]): Outcome(v["outcome"]) for study, vs in payload["verdicts"].items() for v in vs}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{option} {path}: expected a normlab report directory with results.json ({err})") from None


def load_recommendations(path: Path, option: str = "--report") -> dict[str, list[str]]:
    """study -> its recommendations (the user's study) from a report's ``results.json``."""
    file = path / "results.json" if path.is_dir() else path
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")).get("recommendations", {}))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{option} {path}: expected a normlab report directory with results.json ({err})") from None


def stability_rows(
    studies: list[Study], results: dict[str, StudyResult], other: dict[tuple[str, str], Outcome]
) -> list[tuple[str, str, Outcome, Outcome, str]]:
    """(study, claim, outcome here, outcome there, change) for every claim both runs judged. A change is 'flip'
    when one run reproduces what the other contradicts, 'changed' for any other difference, else 'same'."""
    rows = []
    for study in studies:
        for v in results[study.name].verdicts:
            there = other.get((study.name, v.claim))
            if there is None:
                continue
            pair = {v.outcome, there}
            flip = pair == {Outcome.REPRODUCED, Outcome.CONTRADICTED}
            change = "flip" if flip else ("same" if len(pair) == 1 else "changed")
            rows.append((study.name, v.claim, v.outcome, there, change))
    return rows


def _stability_section(rows: list[tuple[str, str, Outcome, Outcome, str]], against: Path) -> str:
    flips = sum(r[4] == "flip" for r in rows)
    changed = sum(r[4] == "changed" for r in rows)
    parts = [
        '<h2 id="seed-stability">Seed stability</h2>',
        f"<p>The same verdicts from another run with other seeds (<code>{_e(against)}</code>): {len(rows)} claims "
        f"judged by both, {len(rows) - flips - changed} the same, {changed} changed, <b>{flips} flipped</b> "
        "(reproduced in one run, contradicted in the other).</p>",
    ]
    shown = [r for r in rows if r[4] != "same"]
    if shown:
        parts.append(_table(["study", "claim", "this run", "other run", "change"], shown))
    return "\n".join(parts)


def write_report(
    out: Path,
    studies: list[Study],
    results: dict[str, StudyResult],
    records: dict[str, Runs],
    setups: dict[str, str],
    options: Options,
    against: tuple[Path, dict[tuple[str, str], Outcome]] | None = None,
) -> Path:
    """Write index.html, results.csv and results.json into ``out``; returns the index path."""
    out.mkdir(parents=True, exist_ok=True)
    summary_rows = []
    sections = []
    for study in studies:
        result, runs = results[study.name], records[study.name]
        counts = outcome_counts(result.verdicts)
        cells = " ".join(f"{_badge(o)}&nbsp;{n}" for o, n in counts.items() if n)
        summary_rows.append(
            f'<tr><td><a href="#{_e(study.name)}">{_e(study.title)}</a></td>'
            f"<td>{_e(study.claim)}</td><td>{cells or 'no verdict'}</td></tr>"
        )
        sections.append(_section(study, result, runs, setups[study.name]))
    stability = ""
    if against is not None:  # (another run's directory, its verdicts from load_verdicts)
        path, verdicts = against
        stability = _stability_section(stability_rows(studies, results, verdicts), path)
    when = time.strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.machine()}, {platform.system()}, torch {torch.__version__}, normlab {__version__}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>normlab compare</title><style>{_CSS}</style></head>
<body>
<h1>normlab compare</h1>
<p class="meta">Measured on this machine ({_e(machine)}) on {_e(when)}. Options: {_e(options.describe())}.</p>
<h2>Summary</h2>
<table><tr><th>study</th><th>claim</th><th>verdicts</th></tr>{"".join(summary_rows)}</table>
<p><b>Criterion.</b> {_e(CRITERION)}</p>
<p><b>Training.</b> {_e(CONVERGENCE)}</p>
<p class="meta">Published numbers come from much larger models and data; they are shown for direction, not as targets.
Raw results: <a href="results.csv">results.csv</a>, <a href="results.json">results.json</a>.</p>
{stability}
{"".join(sections)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    _write_tables(out, studies, results, records)
    return index


def _write_tables(out: Path, studies: list[Study], results: dict[str, StudyResult], records: dict[str, Runs]) -> None:
    flat = _unique((role, r) for s in studies for role, rs in records[s.name].items() for r in rs)
    metric_names = sorted({m for _, r in flat for m in r.metrics})
    config_names = sorted({c for _, r in flat for c in r.config})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "study", "role", "status", "seconds"] + config_names + metric_names)
        for role, r in flat:
            writer.writerow(
                [r.key, r.study, role, r.status, f"{r.seconds:.2f}"]
                + [r.config.get(c, "") for c in config_names]
                + [r.metrics.get(m, "") for m in metric_names]
            )
    payload = {
        "runs": [{**asdict(r), "role": role} for role, r in flat],
        "verdicts": {s.name: [asdict(v) for v in results[s.name].verdicts] for s in studies},
        "criterion": CRITERION,
        "training": {s.name: _plain(results[s.name].training) for s in studies},
        "fairness": {s.name: _plain(results[s.name].fairness) for s in studies},
        "recommendations": {
            s.name: results[s.name].recommendations for s in studies if results[s.name].recommendations
        },
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, allow_nan=True), encoding="utf-8")


def _plain(record: TrainingCheck | Fairness | None) -> dict[str, object] | None:
    return None if record is None else asdict(record)


def _unique(rows: Iterable[tuple[str, RunRecord]]) -> list[tuple[str, RunRecord]]:
    """One row per stored run (a run that is both a study's final run and another's is listed once)."""
    seen: dict[str, tuple[str, RunRecord]] = {}
    for role, r in rows:
        seen.setdefault(r.key, (role, r))
    return list(seen.values())
