"""Corruption summary relative to zero-shot: mCE and relative mCE (Hendrycks & Dietterich 2019)."""

from __future__ import annotations

from anbench.registry import REPORTS
from anbench.reporting import (
    ZEROSHOT,
    Column,
    Report,
    ReportContext,
    ReportResult,
    Row,
    Stat,
    Table,
    order_labels,
)
from anbench.reporting.corruption import (
    MAX_UNDEFINED,
    CorruptionSummary,
    seeds_note,
    summarise_corruptions,
)
from anbench.reporting.modality import (
    CORRUPTION_CATEGORIES,
    IMAGE,
    categories,
    order_by_category,
)

MCE = Column("mce", "mCE (%) ↓", 2, "min")
RELATIVE = Column("relative_mce", "Relative mCE (%) ↓", 2, "min")
MEAN_ERROR = Column("mean_error", "Mean corruption error (%) ↓", 2, "min")
FORMULA = ("Error E = 100 − accuracy (%) per dataset and split; CE_c = Σ_s E(method, c, s) / "
           "Σ_s E(zeroshot, c, s); relative CE_c = Σ_s (E(method, c, s) − E(method, clean)) / "
           "Σ_s (E(zeroshot, c, s) − E(zeroshot, clean)); mCE and relative mCE: means over "
           "corruptions (each weighs equally) of CE_c averaged over datasets and splits, in % "
           "(Hendrycks & Dietterich, ICLR 2019, with zero-shot CLIP as the reference model); "
           "zero-shot scores 100.")


@REPORTS.register("corruption-summary",
                  description="Corruption summary (the mCE of Hendrycks & Dietterich 2019): "
                              "corruption error of each method relative to zero-shot, averaged "
                              "over severities and corruptions")
class CorruptionSummaryReport(Report):
    title = "Corruption summary"
    order = 70

    def build(self, ctx: ReportContext) -> ReportResult:
        acc = ctx.perturbed(("acc",), modality=IMAGE)
        if acc.empty:
            return ReportResult(notes=["no image corruptions in the results: no corruption "
                                       "summary"])
        cats = categories(acc["eval_noise"].unique())
        counted = [c for c, cat in cats.items() if cat in CORRUPTION_CATEGORIES]
        others = sorted(c for c in cats if c not in counted)
        notes = ([f"not counted as corruptions (not an ImageNet-C noise / blur / weather / "
                  f"digital category): {', '.join(others)}"] if others else [])
        if not counted:
            return ReportResult(notes=[*notes, "no image corruption to summarise"])
        acc = acc[acc["eval_noise"].isin(counted)]
        shift = ctx.perturbed(("as",), modality=IMAGE)
        shift = shift[shift["eval_noise"].isin(counted)]
        labels = order_labels(acc["label"].unique())
        reference = ZEROSHOT if ZEROSHOT in labels else None
        summary = summarise_corruptions(acc, shift, reference, ctx.uncertainty)
        n_note = [seeds_note(acc, labels), *ctx.sample_note(acc)]
        # gaps are listed once, by the perturbation heatmap; here they show as † rows
        if reference is None:
            notes.insert(0, f"no {ZEROSHOT} results in this setting: mCE and relative mCE need "
                            "them as the reference; mean corruption error only.")
            table = self._table(summary, labels, [MEAN_ERROR], None, [*notes, *n_note])
            return ReportResult(tables=[table])
        table = self._table(summary, labels, [MCE, RELATIVE, MEAN_ERROR], reference,
                            [FORMULA, *summary.notes, *n_note])
        return ReportResult(tables=[table, self._per_corruption(summary, labels)], notes=notes)

    @staticmethod
    def _table(summary: CorruptionSummary, labels: list[str], columns: list[Column],
               reference: str | None, notes: list[str]) -> Table:
        # the corruptions the reference has a ratio for: what a full row covers
        total = (summary.covered.get(reference, len(summary.corruptions)) if reference
                 else len(summary.corruptions))
        rows: list[Row] = []
        lacking: list[str] = []
        for label in labels:
            values = {"mce": summary.mce.get(label), "relative_mce": summary.relative.get(label),
                      "mean_error": summary.mean_error.get(label)}
            covered = summary.covered.get(label, total) if reference else total
            shown = label if covered == total else f"{label}†"
            if covered != total:
                lacking.append(f"† {label}: mCE over {covered} of {total} corruptions")
            rows.append(Row([shown, str(covered)], [values[c.key] for c in columns],
                            ranked=shown == label))
        ref_row = labels.index(reference) if reference in labels else None
        title = ("Corruption summary: mean corruption error (mCE) and relative mCE, relative "
                 "to zero-shot (%), and mean error under corruption (%)" if reference else
                 "Corruption summary: mean error under image corruption (%)")
        return Table(name="corruption-summary", title=title,
                     label_headers=["Method", "Corruptions"], columns=columns, rows=rows,
                     notes=[*lacking, *notes,
                            "Mean corruption error: E averaged over corruptions (each equally), "
                            "severities, datasets and splits."],
                     reference=ref_row)

    @staticmethod
    def _per_corruption(summary: CorruptionSummary, labels: list[str]) -> Table:
        """CE_c (%) per corruption (rows) and method (columns), then mCE."""
        rows: list[Row] = []
        for name, category in order_by_category(summary.corruptions):
            block = f"image · {category}"
            cells: list[Stat | None] = [summary.per_corruption.get((label, name))
                                        for label in labels]
            rows.append(Row([block, name], cells, block))
        rows.append(Row(["image · all", "mCE"], [summary.mce.get(label) for label in labels],
                        "image · all"))
        cells = [c for r in rows for c in r.cells if c is not None]
        partial = ([f"A value shown as mean ± std (seeds) has no interval: in more than "
                    f"{MAX_UNDEFINED:.0%} of the resamples zero-shot made no error under it "
                    "(no ratio)."] if any(c.has_interval for c in cells)
                   and not all(c.has_interval for c in cells) else [])
        return Table(
            name="corruption-errors",
            title="Corruption error CE_c relative to zero-shot (%) per corruption (rows) and "
                  "method (columns), summed over severities",
            label_headers=["Category", "Corruption"],
            columns=[Column(label, label, 2, "min") for label in labels],
            rows=rows, compare="row",
            notes=["CE_c = Σ_s E(method, c, s) / Σ_s E(zeroshot, c, s), averaged over datasets "
                   "and splits; below 100: fewer errors than zero-shot under that corruption; "
                   "bold: the best method of each row.", *partial])
