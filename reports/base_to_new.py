"""Base-to-new generalisation table in the CoCoOp/MaPLe layout (Average first, then datasets)."""

from __future__ import annotations

from anbench.registry import REPORTS
from anbench.reporting import (
    BASE_NEW_COLUMNS,
    Report,
    ReportContext,
    ReportResult,
    Table,
    base_new_rows,
    describe_missing,
    order_datasets,
    order_labels,
)


@REPORTS.register("base-to-new",
                  description="Base-to-new generalisation: Base, New and HM accuracy per method, "
                              "averaged over datasets and per dataset")
class BaseToNewTable(Report):
    title = "Base-to-new generalisation"
    order = 10

    def build(self, ctx: ReportContext) -> ReportResult:
        acc = ctx.clean_accuracy()
        if acc.empty:
            return ReportResult(notes=["no clean base/new accuracy in the results "
                                       "(not a base-to-new suite, or nothing finished yet)"])
        labels = order_labels(acc["label"].unique())
        datasets = order_datasets(acc["dataset"].unique())
        rows, notes = base_new_rows(acc, labels, "Average", datasets)
        for dataset in datasets:
            block, _ = base_new_rows(acc[acc["dataset"] == dataset], labels, dataset, [dataset])
            rows += block
        notes = sorted(set(notes), key=notes.index)
        notes.append("Average: Base and New averaged over datasets, HM of those averages; "
                     "per dataset: HM of the seed-mean Base and New.")
        table = Table(
            name="base-to-new",
            title="Base-to-new generalisation: accuracy (%) on base and new classes and their "
                  "harmonic mean (HM); mean ± std (seeds)",
            label_headers=["Dataset", "Method"],
            columns=list(BASE_NEW_COLUMNS),
            rows=rows,
            notes=notes,
        )
        return ReportResult(tables=[table], missing=describe_missing(acc, ["dataset", "split"]))
