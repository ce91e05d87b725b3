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
from anbench.reporting.order import split_label
from anbench.reporting.published import PUBLISHED_BACKBONES, published_base_to_new
from anbench.reporting.stats import Stat
from anbench.reporting.tables import Row


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
        rows, notes = base_new_rows(acc, labels, "Average", datasets,
                                    uncertainty=ctx.uncertainty)
        for dataset in datasets:
            block, _ = base_new_rows(acc[acc["dataset"] == dataset], labels, dataset, [dataset],
                                     uncertainty=ctx.uncertainty)
            rows += block
        notes = sorted(set(notes), key=notes.index)
        notes.append("Average: Base and New averaged over datasets, HM of those averages; "
                     "per dataset: HM of the seed-mean Base and New.")
        notes += ctx.sample_note(acc)
        table = Table(
            name="base-to-new",
            title="Base-to-new generalisation: accuracy (%) on base and new classes and their "
                  "harmonic mean (HM); mean ± std (seeds)",
            label_headers=["Dataset", "Method"],
            columns=list(BASE_NEW_COLUMNS),
            rows=rows,
            notes=notes,
        )
        tables = [table]
        backbones = set(ctx.results["backbone"].unique()) if "backbone" in ctx.results else set()
        if backbones and backbones <= PUBLISHED_BACKBONES:
            tables.append(published_table(labels))
        return ReportResult(tables=tables, missing=describe_missing(acc, ["dataset", "split"]))


def published_table(labels: list[str]) -> Table:
    """The published ViT-B/16 numbers of the measured methods (and of the whole family), to
    read beside the measured Average block: comparable only for OpenAI weights on all 11
    datasets with 3 seeds."""
    published = published_base_to_new()
    measured = {split_label(label.rstrip("†"))[0] for label in labels}
    rows = [Row(["published", method], [Stat(v["base"]), Stat(v["new"]), Stat(v["hm"])],
                "published", ranked=False)
            for method, v in published["rows"].items()]
    sources = sorted({v["source"] for v in published["rows"].values()})
    return Table(
        name="base-to-new-published",
        title="Published base-to-new accuracy (%): " + published["setting"],
        label_headers=["Source", "Method"],
        columns=list(BASE_NEW_COLUMNS),
        rows=rows,
        notes=[f"{name}: {published['sources'][name]}" for name in sources]
        + [f"measured here: {', '.join(sorted(measured & set(published['rows'])) or ['none'])}"],
    )
