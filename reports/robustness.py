"""Robustness summary: mean AS, LPR and TS of each method across perturbations."""

from __future__ import annotations

from anbench.registry import REPORTS
from anbench.reporting import (
    Column,
    Report,
    ReportContext,
    ReportResult,
    Row,
    Stat,
    Table,
    describe_missing,
    order_labels,
    order_noises,
    summarise,
)

COLUMNS = tuple(Column.for_metric(key, prefix="Mean ") for key in ("as", "lpr", "ts"))


@REPORTS.register("robustness-summary",
                  description="Robustness summary: mean accuracy shift, LPR and text shift of "
                              "each method across all evaluation perturbations")
class RobustnessSummary(Report):
    title = "Robustness summary"
    order = 60

    def build(self, ctx: ReportContext) -> ReportResult:
        rows = ctx.perturbed()
        if rows.empty:
            return ReportResult(notes=["no perturbed evaluations in the results: no summary"])
        noises = order_noises(rows["eval_noise"].unique())
        table_rows: list[Row] = []
        for label in order_labels(rows["label"].unique()):
            own = rows[rows["label"] == label]
            cells: list[Stat | None] = []
            for col in COLUMNS:
                sub = own[own["metric"] == col.key]
                # each perturbation weighs equally, however many severities it was run at
                if sub.empty:
                    cells.append(None)
                    continue
                stat = summarise(sub, ["eval_noise", "perturbation", "dataset", "split"],
                                 weight_by=["eval_noise"])
                cells.append(ctx.with_interval(stat, sub, weight_by=["eval_noise"]))
            table_rows.append(Row([label, str(own["eval_noise"].nunique())], cells))
        table = Table(
            name="robustness-summary",
            title="Robustness summary: mean accuracy shift (pp), LPR (%) and text shift across "
                  "perturbations, datasets and splits",
            label_headers=["Method", "Perturbations"],
            columns=list(COLUMNS),
            rows=table_rows,
            notes=[f"Perturbations: {', '.join(noises)}; each weighs equally (its severities "
                   "averaged first).", *ctx.text_only_note(), *ctx.sample_note(rows)],
        )
        missing = describe_missing(rows, ["eval_noise", "dataset", "split"])
        return ReportResult(tables=[table], missing=missing)
