"""The report contract: what a registered report sees (`ReportContext`) and returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from anbench.reporting.figures import FigureSpec
from anbench.reporting.labels import CLEAN, add_perturbation_labels
from anbench.reporting.modality import IMAGE, TEXT, of_modality
from anbench.reporting.order import Palette
from anbench.reporting.stats import Stat
from anbench.reporting.tables import Table
from anbench.reporting.uncertainty import Uncertainty, with_estimate


@dataclass
class ReportResult:
    """What a report produced: tables and figures to write, notes and missing cells to show."""

    tables: list[Table] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class ReportContext:
    """The results one report run sees (one backbone/shots setting), already labelled."""

    results: pd.DataFrame  # every row, `label` = method or 'method (noise)'
    main: pd.DataFrame  # one training noise per method (wsp preferred)
    palette: Palette
    setting: str = ""
    uncertainty: Uncertainty | None = None  # bootstrap from the cells' arrays, when present

    def with_interval(self, stat: Stat, rows: pd.DataFrame,
                      weight_by: Sequence[str] = ()) -> Stat:
        """`stat` (the summary of `rows`) with its bootstrap interval, when arrays allow."""
        if self.uncertainty is None:
            return stat
        return with_estimate(stat, self.uncertainty.estimate(rows, weight_by))

    def sample_note(self, rows: pd.DataFrame) -> list[str]:
        """['n: ...'] stating the test images, seeds and draws behind `rows` (or [])."""
        note = self.uncertainty.describe(rows) if self.uncertainty is not None else None
        return [note] if note else []

    def clean_accuracy(self, frame: pd.DataFrame | None = None,
                       splits: Sequence[str] = ("base", "new")) -> pd.DataFrame:
        df = self.main if frame is None else frame
        return df[(df["eval_noise"] == CLEAN) & (df["metric"] == "acc")
                  & df["split"].isin(splits)].reset_index(drop=True)

    def perturbed(self, metrics: Sequence[str] = ("ts", "lpr", "as"),
                  modality: str | None = TEXT) -> pd.DataFrame:
        """Perturbed rows of `metrics` (per split) of one modality (None: every modality);
        the default keeps text tables free of image rows."""
        df = self.main
        rows = df[(df["eval_noise"] != CLEAN) & df["metric"].isin(metrics)
                  & (df["split"] != "base-new")]
        if modality is not None:
            rows = of_modality(rows, modality)
        return add_perturbation_labels(rows).reset_index(drop=True)

    def has_modality(self, modality: str) -> bool:
        """Whether any perturbed row of this setting perturbed `modality`."""
        df = self.main
        return not of_modality(df[df["eval_noise"] != CLEAN], modality).empty

    def text_only_note(self) -> list[str]:
        """The note a text table carries when the suite also perturbed images (else none, so
        text-only results report exactly as before)."""
        if not self.has_modality(IMAGE):
            return []
        return ["Text perturbations only: image perturbations are in the perturbation heatmap "
                "and the corruption summary."]


class Report:
    """Base class of a registered report.

    Subclasses set `title` (and `order`, the position in index.md) and implement `build`, which
    must only read the context: files are written by the machinery, so a report is testable from
    what it returns. A report without data for itself returns notes, not an exception.
    """

    title: ClassVar[str] = ""
    order: ClassVar[int] = 100
    registry_name: ClassVar[str] = ""

    def build(self, ctx: ReportContext) -> ReportResult:  # pragma: no cover - abstract
        raise NotImplementedError
