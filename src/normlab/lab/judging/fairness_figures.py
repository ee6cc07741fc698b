"""The figures of a study's fairness section: each setting's learning-rate selection, and each compared setting's
target metric against its budget."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .verdicts import Budgets, budget_name

if TYPE_CHECKING:
    from .selection import BudgetRow, Choice, Selection


def selection_figure(name: str, selection: Selection, choices: list[Choice], figdir: Path) -> str:
    from .study import new_figure, save

    fig, (ax,) = new_figure(width=7)
    _, _, scale, axis_label = selection.score
    for choice in choices:
        lrs = sorted(choice.scores)
        line = ax.plot(lrs, [scale * choice.scores[lr] for lr in lrs], marker="o", ms=3, label=choice.label)[0]
        if choice.screening:  # successive halving: every rate's screened score, dashed
            screened = sorted(choice.screening)
            ax.plot(
                screened,
                [scale * choice.screening[lr] for lr in screened],
                ls="--",
                lw=0.8,
                marker=".",
                ms=3,
                color=line.get_color(),
            )
        if choice.chosen is not None and math.isfinite(choice.scores.get(choice.chosen, math.nan)):
            ax.plot([choice.chosen], [scale * choice.scores[choice.chosen]], marker="*", ms=12, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(axis_label)
    halved = any(choice.screening for choice in choices)
    ax.set_title("Learning-rate selection (star: chosen" + ("; dashed: screened)" if halved else ")"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, figdir, f"{name}-selection.png")


def budget_figure(name: str, metric: str, budgets: Budgets, rows: list[BudgetRow], figdir: Path) -> str | None:
    from .study import new_figure, save

    if not any(len(row.means) > 1 for row in rows):
        return None
    fig, (ax,) = new_figure(width=7)
    for row in rows:
        ds = sorted(row.means)
        ax.plot([2**d for d in ds], [budgets.scale * row.means[d] for d in ds], marker="o", ms=3, label=row.label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        [2**d for d in range(budgets.max_doublings + 1)], [budget_name(d) for d in range(budgets.max_doublings + 1)]
    )
    ax.set_xlabel("training budget")
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if budgets.scale == 100 else ""))
    ax.set_title("Each compared setting against its budget (mean over the final seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, figdir, f"{name}-budgets.png")
