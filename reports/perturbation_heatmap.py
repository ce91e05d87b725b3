"""Method × perturbation heatmap of accuracy shift, text and image perturbations side by side."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

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
    order_labels,
    summarise,
)
from anbench.reporting.corruption import seeds_note
from anbench.reporting.modality import (
    MODALITY_ORDER,
    TEXT,
    metric_info,
    modalities,
    order_by_category,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRIC = "as"
TITLES = {"text": "Text perturbations", "image": "Image perturbations"}
DATA_COLUMNS = ["modality", "category", "perturbation", "method", "mean", "std", "n", "lo",
                "hi"]


def block_name(modality: str, category: str) -> str:
    return f"{modality} · {category}" if category else modality


def draw_heatmap(fig: Figure, data: pd.DataFrame, palette: Palette) -> None:
    """One panel per modality (columns: perturbations; rows: methods) on one shared diverging
    colour scale centred at 0, each square annotated with its value; grey: not evaluated."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    cells = data[data["perturbation"] != "mean"]
    methods = list(dict.fromkeys(cells["method"]))
    panels = [m for m in MODALITY_ORDER if m in set(cells["modality"])]
    panels += [m for m in dict.fromkeys(cells["modality"]) if m not in panels]
    widths = [cells[cells["modality"] == m]["perturbation"].nunique() for m in panels]
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,
                        gridspec_kw={"width_ratios": widths})[0]
    finite = cells["mean"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    span = max(float(np.abs(finite).max()) if finite.size else 1.0, 0.5)
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    image = None
    for ax, modality in zip(axes, panels, strict=True):
        mine = cells[cells["modality"] == modality]
        columns = list(dict.fromkeys(mine["perturbation"]))
        grid = np.full((len(methods), len(columns)), np.nan)
        for r in mine.itertuples(index=False):
            grid[methods.index(r.method), columns.index(r.perturbation)] = r.mean
        image = ax.imshow(np.ma.masked_invalid(grid), norm=norm, aspect="auto",
                          cmap=colormaps["RdBu"].with_extremes(bad="0.85"))
        for i in range(len(methods)):
            for j in range(len(columns)):
                value = grid[i, j]
                text = "–" if math.isnan(value) else f"{value:.1f}"
                dark = not math.isnan(value) and abs(value) > 0.6 * span
                ax.text(j, i, text, ha="center", va="center", fontsize=5,
                        color="white" if dark else "0.1")
        # thin white lines between categories (ImageNet-C noise / blur / weather / digital)
        cats = list(mine.drop_duplicates("perturbation")["category"])
        for j in range(1, len(cats)):
            if cats[j] != cats[j - 1]:
                ax.axvline(j - 0.5, color="white", linewidth=1.5)
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(TITLES.get(modality, f"{modality} perturbations"))
        ax.grid(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.9, pad=0.01)
        bar.set_label(metric_info(METRIC).label)


@REPORTS.register("perturbation-heatmap",
                  description="Method × perturbation heatmap of accuracy shift (AS), text and "
                              "image perturbations side by side, averaged over severities")
class PerturbationHeatmap(Report):
    title = "Perturbation heatmap"
    order = 65

    def build(self, ctx: ReportContext) -> ReportResult:
        every_kind = ctx.perturbed((METRIC,), modality=None)
        kinds = set(modalities(every_kind))  # text, image, and any a plugin kind adds
        found = {m: ctx.perturbed((METRIC,), modality=m)
                 for m in [*MODALITY_ORDER, *sorted(kinds - set(MODALITY_ORDER))]}
        found = {m: rows for m, rows in found.items() if not rows.empty}
        if not found:
            return ReportResult(notes=["no accuracy shift under any perturbation in the results: "
                                       "no heatmap"])
        every = pd.concat(found.values(), ignore_index=True)
        labels = order_labels(every["label"].unique())
        info = metric_info(METRIC)
        table_rows: list[Row] = []
        records: list[dict[str, object]] = []
        missing: list[str] = []
        notes: list[str] = []
        for modality, rows in found.items():
            names = order_by_category(rows["eval_noise"].unique())
            for name, category in names:
                block = block_name(modality, category)
                cells: list[Stat | None] = []
                for label in labels:
                    sub = rows[(rows["eval_noise"] == name) & (rows["label"] == label)]
                    # each severity (and alpha) setting, dataset and split one cell
                    stat = (ctx.with_interval(summarise(sub, ["perturbation", "dataset", "split"]),
                                              sub) if not sub.empty else None)
                    cells.append(stat)
                    if stat is not None:
                        records.append({"modality": modality, "category": category,
                                        "perturbation": name, "method": label, "mean": stat.mean,
                                        "std": stat.std, "n": stat.n, "lo": stat.lo,
                                        "hi": stat.hi})
                table_rows.append(Row([block, name], cells, block))
            table_rows.append(self._mean_row(ctx, modality, rows, labels, len(names), records))
            lacking = [label for label in labels
                       if rows[rows["label"] == label]["eval_noise"].nunique() < len(names)]
            if lacking:
                notes.append(f"{modality} mean left out for {', '.join(lacking)}: not evaluated "
                             f"under every {modality} perturbation")
            if modality != TEXT:  # text gaps are listed by the noise-strategy section
                missing += [f"{modality}: {m}" for m in
                            describe_missing(rows, ["eval_noise", "dataset", "split"])]
        table = Table(
            name="perturbation-heatmap",
            title="Accuracy shift (AS, pp) per perturbation (rows) and method (columns), "
                  "averaged over severities, datasets, splits and seeds",
            label_headers=["Type", "Perturbation"],
            columns=[Column(label, label, info.digits, "max") for label in labels],
            rows=table_rows,
            compare="row",
            notes=["AS = perturbed − clean accuracy (pp; negative = loss, closer to 0 is more "
                   "robust); each severity and mixing weight of a perturbation weighs equally; "
                   "mean: each perturbation of the modality weighs equally; bold: the best "
                   "method of each row.",
                   *notes, seeds_note(every, labels), *ctx.sample_note(every)],
        )
        data = pd.DataFrame.from_records(records, columns=DATA_COLUMNS)
        columns = data[data["perturbation"] != "mean"]["perturbation"].nunique()
        width = min(max(3.4, 1.6 + 0.3 * columns), 12.0)
        figure = FigureSpec(
            name="perturbation-heatmap",
            title="Accuracy shift (pp) per method and perturbation, mean over severities, "
                  "datasets, splits and seeds (red: accuracy lost)",
            data=data, draw=draw_heatmap, size=(width, 1.5 + 0.22 * len(labels)))
        return ReportResult(tables=[table], figures=[figure], missing=missing)

    @staticmethod
    def _mean_row(ctx: ReportContext, modality: str, rows: pd.DataFrame, labels: list[str],
                  count: int, records: list[dict[str, object]]) -> Row:
        """Each method's AS over every perturbation of the modality (each weighs equally);
        none for a method that lacks one of them (its mean would not be comparable)."""
        cells: list[Stat | None] = []
        for label in labels:
            own = rows[rows["label"] == label]
            if own["eval_noise"].nunique() < count:
                cells.append(None)
                continue
            keys = ["eval_noise", "perturbation", "dataset", "split"]
            stat = ctx.with_interval(summarise(own, keys, weight_by=["eval_noise"]), own,
                                     weight_by=["eval_noise"])
            cells.append(stat)
            records.append({"modality": modality, "category": "", "perturbation": "mean",
                            "method": label, "mean": stat.mean, "std": stat.std, "n": stat.n,
                            "lo": stat.lo, "hi": stat.hi})
        block = f"{modality} · mean"
        return Row([block, f"mean of {count}"], cells, block)
