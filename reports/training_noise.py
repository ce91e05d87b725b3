"""Training-noise comparison (the paper's Figure 1): HM of ANPrompt per training noise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from anbench.metrics import METRICS as METRIC_INFO
from anbench.registry import REPORTS
from anbench.reporting import (
    BASE_NEW_COLUMNS,
    FigureSpec,
    Palette,
    Report,
    ReportContext,
    ReportResult,
    Row,
    Table,
    base_new_rows,
    describe_missing,
    figure_legend,
    grouped_bars,
    order_datasets,
    order_noises,
    zoom_percent,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD = "anprompt"
REFERENCE = "dapt"


def draw_training_noise(fig: Figure, data: pd.DataFrame, palette: Palette) -> None:
    """Bars: ANPrompt's HM per training noise; dashed line: DAPT's HM."""
    ax = fig.subplots()
    bars = data[data["series"] == METHOD]
    noises = list(bars["train_noise"])
    grouped_bars(ax, bars, x="train_noise", hue="series", x_order=noises, hue_order=[METHOD],
                 palette=palette)
    ref = data[data["series"] == REFERENCE]
    values = list(bars["mean"] - bars["std"].fillna(0.0)) + list(bars["mean"])
    order = [METHOD]
    if not ref.empty:
        hm = float(ref["mean"].iloc[0])
        order.append(f"DAPT ({hm:.2f})")
        ax.axhline(hm, color=palette.get(REFERENCE, "0.3"), linestyle="--", linewidth=1.0,
                   label=order[-1])
        values.append(hm)
    zoom_percent(ax, values + list(bars["mean"] + bars["std"].fillna(0.0)))
    ax.set_xlabel("Training noise of ANPrompt")
    ax.set_ylabel(METRIC_INFO["hm"].label)
    figure_legend(fig, [ax], order)


@REPORTS.register("training-noise",
                  description="Training-noise comparison (paper Figure 1): HM of ANPrompt "
                              "trained with each noise strategy, DAPT as reference")
class TrainingNoiseReport(Report):
    title = "Training noise"
    order = 40

    def build(self, ctx: ReportContext) -> ReportResult:
        acc = ctx.clean_accuracy(frame=ctx.results)
        ours = acc[acc["method"] == METHOD].copy()
        if ours.empty:
            return ReportResult(notes=["no ANPrompt base/new results: training-noise comparison "
                                       "not written"], missing=[f"no results for {METHOD}"])
        ours["label"] = ours["train_noise"]  # one row per training noise
        ref = ctx.clean_accuracy()
        ref = ref[ref["method"] == REFERENCE]
        datasets = order_datasets(set(ours["dataset"]) | set(ref["dataset"]))
        noises = order_noises(ours["train_noise"].unique())
        rows, notes = base_new_rows(ours, noises, METHOD, datasets,
                                    label_cells=lambda n: [METHOD, n],
                                    uncertainty=ctx.uncertainty)
        missing = describe_missing(ours.assign(label="anprompt (" + ours["train_noise"] + ")"),
                                   ["dataset", "split"])
        if ref.empty:
            notes.append("no DAPT results: no reference line")
            missing.append(f"no results for {REFERENCE}")
        else:
            ref_rows, ref_notes = base_new_rows(ref, ["dapt"], REFERENCE, datasets,
                                                label_cells=lambda lab: [lab, "(reference)"],
                                                uncertainty=ctx.uncertainty)
            rows += ref_rows
            notes += ref_notes
        if len(noises) == 1:
            notes.append(f"ANPrompt was trained with one noise only ({noises[0]})")
        notes.append("HM of Base and New accuracy averaged over datasets.")
        notes += ctx.sample_note(pd.concat([ours, ref]))
        table = Table(
            name="training-noise",
            title="ANPrompt trained with each noise strategy: Base, New and HM accuracy (%) "
                  "averaged over datasets; DAPT for reference",
            label_headers=["Method", "Training noise"],
            columns=list(BASE_NEW_COLUMNS),
            rows=rows,
            notes=notes,
        )
        records = [_record(row) for row in rows if row.cells[2] is not None]
        figure = FigureSpec(
            name="training-noise",
            title="HM of ANPrompt per training noise; dashed: DAPT",
            data=pd.DataFrame.from_records(records, columns=["series", "train_noise", "metric",
                                                             "mean", "std", "n"]),
            draw=draw_training_noise,
            size=(3.4, 2.4),
        )
        return ReportResult(tables=[table], figures=[figure], missing=missing)


def _record(row: Row) -> dict[str, object]:
    stat = row.cells[2]
    assert stat is not None
    series = row.block
    noise = row.labels[1].rstrip("†") if series == METHOD else "reference"
    return {"series": series, "train_noise": noise, "metric": "hm", "mean": stat.mean,
            "std": stat.std, "n": stat.n}
