"""Noise-strategy table and figure (the paper's Figure 4): TS, LPR and AS per perturbation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from anbench.metrics import METRICS as METRIC_INFO
from anbench.registry import REPORTS
from anbench.reporting import (
    Column,
    FigureSpec,
    Palette,
    Report,
    ReportContext,
    ReportResult,
    Row,
    Stat,
    Table,
    describe_missing,
    figure_legend,
    grouped_bars,
    order_labels,
    order_perturbations,
    summarise,
    zoom_percent,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS: tuple[str, ...] = ("ts", "lpr", "as")  # panels and columns, in this order


def draw_noise_strategy(fig: Figure, data: pd.DataFrame, palette: Palette) -> None:
    """One panel per metric, bars per perturbation, one colour per method."""
    perts = list(dict.fromkeys(data["perturbation"]))
    labels = list(dict.fromkeys(data["method"]))
    axes = fig.subplots(len(METRICS), 1, sharex=True)
    for i, (ax, key) in enumerate(zip(axes, METRICS, strict=True)):
        grouped_bars(ax, data[data["metric"] == key], x="perturbation", hue="method",
                     x_order=perts, hue_order=labels, palette=palette,
                     ticklabels=i == len(METRICS) - 1, interval=("lo", "hi"))
        ax.set_ylabel(METRIC_INFO[key].label)
        sub = data[data["metric"] == key]
        if key == "as":
            ax.axhline(0.0, color="0.25", linewidth=0.6)
        elif key == "lpr":
            zoom_percent(ax, sub["mean"] - sub["std"].fillna(0.0), top=101.0)
    axes[-1].set_xlabel("Evaluation perturbation")
    figure_legend(fig, axes, labels)


@REPORTS.register("noise-strategy",
                  description="Robustness per evaluation perturbation (paper Figure 4): text "
                              "shift, logit preservation rate and accuracy shift per method")
class NoiseStrategyReport(Report):
    title = "Noise strategies"
    order = 30

    def build(self, ctx: ReportContext) -> ReportResult:
        rows = ctx.perturbed()
        if rows.empty:
            return ReportResult(notes=["no perturbed evaluations (TS, LPR, AS) in the results"])
        perts = order_perturbations(rows)
        labels = order_labels(rows["label"].unique())
        table_rows: list[Row] = []
        records: list[dict[str, object]] = []
        for pert in perts:
            for label in labels:
                cells: list[Stat | None] = []
                for key in METRICS:
                    sub = rows[(rows["perturbation"] == pert) & (rows["label"] == label)
                               & (rows["metric"] == key)]
                    stat = (ctx.with_interval(summarise(sub, ["dataset", "split"]), sub)
                            if not sub.empty else None)
                    cells.append(stat)
                    if stat is not None:
                        records.append({"perturbation": pert, "method": label, "metric": key,
                                        "mean": stat.mean, "std": stat.std, "n": stat.n,
                                        "lo": stat.lo, "hi": stat.hi})
                if any(c is not None for c in cells):
                    table_rows.append(Row([pert, label], cells, pert))
        table = Table(
            name="noise-strategy",
            title="Robustness to text perturbations: text shift (TS), logit preservation rate "
                  "(LPR, %) and accuracy shift (AS, pp), averaged over datasets and splits",
            label_headers=["Perturbation", "Method"],
            columns=[Column.for_metric(key) for key in METRICS],
            rows=table_rows,
            notes=["AS = perturbed − clean accuracy (negative = loss); ↑/↓: higher/lower is "
                   "more robust.", *ctx.text_only_note(), *ctx.sample_note(rows)],
        )
        data = pd.DataFrame.from_records(records, columns=["perturbation", "method", "metric",
                                                           "mean", "std", "n", "lo", "hi"])
        error_bars = ("95% bootstrap interval" if data["lo"].notna().any()
                      else "std over seeds")
        figure = FigureSpec(
            name="noise-strategy",
            title=f"TS, LPR and AS per evaluation perturbation (error bars: {error_bars})",
            data=data,
            draw=draw_noise_strategy,
            size=(3.4, 4.8),
        )
        missing = describe_missing(rows, ["perturbation", "dataset", "split"])
        return ReportResult(tables=[table], figures=[figure], missing=missing)
