"""Severity curves: metric vs severity (or mixing weight alpha) where a suite swept one."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import pandas as pd

from anbench.metrics import METRICS as METRIC_INFO
from anbench.registry import REPORTS
from anbench.reporting import (
    FigureSpec,
    Palette,
    Report,
    ReportContext,
    ReportResult,
    describe_missing,
    figure_legend,
    fmt_num,
    order_labels,
    order_noises,
    slug,
    summarise,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS: tuple[str, ...] = ("as", "lpr", "ts")  # panels, top to bottom
AXIS = {"severity": "Severity", "alpha": "Mixing weight α (log scale)"}


def draw_curves(fig: Figure, data: pd.DataFrame, palette: Palette, *, parameter: str) -> None:
    """One panel per metric; a line per method with std-over-seeds error bars."""
    axes = fig.subplots(len(METRICS), 1, sharex=True)
    labels = list(dict.fromkeys(data["method"]))
    for ax, key in zip(axes, METRICS, strict=True):
        sub = data[data["metric"] == key]
        for label in labels:
            line = sub[sub["method"] == label].sort_values("x_plot")
            if line.empty:
                continue
            ax.errorbar(line["x_plot"], line["mean"], yerr=line["std"].fillna(0.0),
                        color=palette.get(label, "0.5"), marker="o", capsize=1.5,
                        elinewidth=0.6, label=label)
        ax.set_ylabel(METRIC_INFO[key].label)
        if key == "as":
            ax.axhline(0.0, color="0.25", linewidth=0.6)
    if parameter == "alpha":
        axes[-1].set_xscale("log")
    ticks = data.drop_duplicates("x_plot").sort_values("x_plot")
    axes[-1].set_xticks(list(ticks["x_plot"]), list(ticks["x_label"]))
    axes[-1].minorticks_off()
    axes[-1].set_xlabel(AXIS[parameter])
    figure_legend(fig, axes, labels)


def find_sweeps(rows: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(eval noise, swept parameter, value of the other parameter) for each sweep in `rows`."""
    sweeps: list[tuple[str, str, float]] = []
    for noise in order_noises(rows["eval_noise"].unique()):
        sub = rows[rows["eval_noise"] == noise]
        for parameter, other in (("severity", "alpha"), ("alpha", "severity")):
            for fixed, group in sub.groupby(other, dropna=False, sort=True):
                if group[parameter].dropna().nunique() > 1:
                    sweeps.append((noise, parameter, float(fixed)))
    return sweeps


@REPORTS.register("severity-curves",
                  description="Severity curves: AS, LPR and TS against perturbation severity or "
                              "mixing weight alpha, one line per method")
class SeverityCurves(Report):
    title = "Severity curves"
    order = 50

    def build(self, ctx: ReportContext) -> ReportResult:
        rows = ctx.perturbed()
        sweeps = find_sweeps(rows) if not rows.empty else []
        if not sweeps:
            return ReportResult(notes=["no severity or alpha sweep in this suite: each "
                                       "perturbation was evaluated at one setting"])
        figures: list[FigureSpec] = []
        missing: list[str] = []
        counts: dict[tuple[str, str], int] = {}
        for noise, parameter, _ in sweeps:
            counts[(noise, parameter)] = counts.get((noise, parameter), 0) + 1
        for noise, parameter, fixed in sweeps:
            other = "alpha" if parameter == "severity" else "severity"
            same = rows[other].isna() if math.isnan(fixed) else rows[other] == fixed
            sub = rows[(rows["eval_noise"] == noise) & same & rows[parameter].notna()]
            data = _curve_data(sub, parameter)
            name = f"{parameter}-{slug(noise)}"
            title = f"{noise}: metrics vs {parameter}"
            if counts[(noise, parameter)] > 1:
                name += f"-{other}-{slug(fmt_num(fixed))}"
                title += f" ({other} {fmt_num(fixed)})"
            figures.append(FigureSpec(name=name, title=title, data=data,
                                      draw=partial(draw_curves, parameter=parameter),
                                      size=(3.4, 4.6)))
            shown = sub.assign(**{parameter: sub[parameter].map(fmt_num)})
            missing += [f"{noise}: {m}"
                        for m in describe_missing(shown, [parameter, "dataset", "split"])]
        return ReportResult(figures=figures, missing=list(dict.fromkeys(missing)))


def _curve_data(sub: pd.DataFrame, parameter: str) -> pd.DataFrame:
    finite = sub.loc[~sub[parameter].isin([math.inf]), parameter]
    # alpha = inf (pure perturbed feature) is drawn one decade past the largest finite alpha
    inf_at = 10 * float(finite.max()) if not finite.empty and finite.max() > 0 else 1e3
    records: list[dict[str, object]] = []
    for label in order_labels(sub["label"].unique()):
        for x in sorted(sub[parameter].unique()):
            for key in METRICS:
                cells = sub[(sub["label"] == label) & (sub[parameter] == x)
                            & (sub["metric"] == key)]
                if cells.empty:
                    continue
                stat = summarise(cells, ["dataset", "split"])
                records.append({
                    "perturbation": sub["eval_noise"].iloc[0], "parameter": parameter,
                    "x": x, "x_plot": inf_at if math.isinf(x) else x, "x_label": fmt_num(x),
                    "method": label, "metric": key, "mean": stat.mean, "std": stat.std,
                    "n": stat.n,
                })
    return pd.DataFrame.from_records(records, columns=[
        "perturbation", "parameter", "x", "x_plot", "x_label", "method", "metric", "mean", "std",
        "n"])
