"""Ablation table: ANPrompt full vs without NRVPP / WALoss (/ noise prompts)."""

from __future__ import annotations

import numpy as np

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
    split_label,
)

FULL = "anprompt"
EXPECTED_VARIANTS = ("anprompt-wo-nrvpp", "anprompt-wo-waloss")  # the paper's ablation
VARIANT_PREFIX = "anprompt-wo-"  # any further registered ablation joins the table


@REPORTS.register("ablation",
                  description="Ablation of ANPrompt's components: Base, New and HM averaged "
                              "over datasets")
class AblationTable(Report):
    title = "Ablation"
    order = 20

    def build(self, ctx: ReportContext) -> ReportResult:
        acc = ctx.clean_accuracy()
        methods = {split_label(lab)[0] for lab in acc["label"].unique()}
        ours = acc[np.array([m == FULL or m.startswith(VARIANT_PREFIX) for m in acc["method"]],
                            dtype=bool)]
        present = set(ours["method"].unique())
        missing = [f"no results for {m}" for m in (FULL, *EXPECTED_VARIANTS) if m not in present]
        variants = [m for m in present if m.startswith(VARIANT_PREFIX)]
        if not variants:
            what = "ANPrompt ablation variants" if FULL in methods else "ANPrompt results"
            return ReportResult(notes=[f"no {what} ({', '.join(EXPECTED_VARIANTS)}) in the "
                                       "results: ablation table not written"], missing=missing)
        labels = order_labels(ours["label"].unique())
        datasets = order_datasets(ours["dataset"].unique())
        rows, notes = base_new_rows(ours, labels, "", datasets,
                                    label_cells=lambda label: [label],
                                    uncertainty=ctx.uncertainty)
        notes.append(f"Averaged over {len(datasets)} dataset(s): {', '.join(datasets)}; HM of the "
                     "averaged Base and New.")
        notes += ctx.sample_note(ours)
        table = Table(
            name="ablation",
            title="Ablation of ANPrompt: accuracy (%) on base and new classes and HM, averaged "
                  "over datasets; mean ± std (seeds)",
            label_headers=["Method"],
            columns=list(BASE_NEW_COLUMNS),
            rows=rows,
            notes=notes,
        )
        missing += describe_missing(ours, ["dataset", "split"])
        return ReportResult(tables=[table], missing=missing)
