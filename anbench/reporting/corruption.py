"""Corruption errors relative to zero-shot: the mCE of Hendrycks & Dietterich (ICLR 2019).

For method m, corruption c, severity s and one test set (dataset and split), the error is
E = 100 − accuracy (%). With zero-shot CLIP as the reference model (AlexNet in the paper):

- CE_c = Σ_s E_{m,c,s} / Σ_s E_{zeroshot,c,s}  (the severities both were evaluated at)
- relative CE_c = Σ_s (E_{m,c,s} − E_{m,clean}) / Σ_s (E_{zs,c,s} − E_{zs,clean}); the
  numerator terms are −AS, so it is computed from the accuracy-shift rows
- mCE, relative mCE: the mean over corruptions (each weighs equally) of the CE_c averaged over
  datasets and splits, in %. Zero-shot scores 100 by construction.

Seeds: the method's CE is computed per seed against zero-shot's seed-mean errors (a fixed
reference, as in the paper), and std and n are over those per-seed values (`stats.reduce_cells`).
With the cells' arrays, the bootstrap replicates of both errors (paired: the same resampled test
images and seeds) give the replicates of each ratio, hence the interval and, against zero-shot's
replicates (all exactly 100), the paired test of "differs from zero-shot". A test set where
zero-shot's error (or its error increase, for the relative CE) is not positive has no ratio; it
is left out and said so. Likewise a resample in which zero-shot makes no error under a corruption
(few errors on a small image subsample) has no ratio: such resamples are left out of the
interval and the test (the same ones for every method, as they depend on zero-shot's alone, so
the comparison stays paired) when they are at most `MAX_UNDEFINED` of them; with more, the
interval would describe a different population, and the number shows mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anbench.reporting.stats import Stat, summarise
from anbench.reporting.uncertainty import Uncertainty, with_estimate
from anbench.stats import Estimate

CELL = ["eval_noise", "dataset", "split"]  # one corruption on one test set
MAX_UNDEFINED = 0.05  # share of resamples without a ratio above which a number has no interval


@dataclass
class CorruptionSummary:
    """Per method label: mean corruption error, mCE, relative mCE, and CE per corruption."""

    corruptions: list[str]
    mean_error: dict[str, Stat] = field(default_factory=dict)
    mce: dict[str, Stat] = field(default_factory=dict)  # empty without a reference
    relative: dict[str, Stat] = field(default_factory=dict)
    per_corruption: dict[tuple[str, str], Stat] = field(default_factory=dict)  # (label, c)
    relative_per_corruption: dict[tuple[str, str], Stat] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)  # corruptions in a label's mCE
    notes: list[str] = field(default_factory=list)
    undefined: dict[str, tuple[int, int]] = field(default_factory=dict)  # what -> (most, of B)


def summarise_corruptions(acc: pd.DataFrame, shift: pd.DataFrame, reference: str | None,
                          uncertainty: Uncertainty | None = None) -> CorruptionSummary:
    """The summary from accuracy rows `acc` and accuracy-shift rows `shift` of the corruptions
    (columns label, eval_noise, severity, dataset, split, seed, value; one metric each).

    `reference` is the label errors are divided by (zero-shot), or None: mean error only."""
    corruptions = list(dict.fromkeys(acc["eval_noise"]))
    out = CorruptionSummary(corruptions)
    for label in dict.fromkeys(acc["label"]):
        own = acc[acc["label"] == label]
        error = own.assign(value=100.0 - own["value"])
        stat = summarise(error, ["eval_noise", "severity", "dataset", "split"],
                         weight_by=["eval_noise"])
        if uncertainty is not None:
            est = uncertainty.estimate(own, weight_by=["eval_noise"])
            stat = with_estimate(stat, _complement(est))
        out.mean_error[label] = stat
    if reference is None or reference not in set(acc["label"]):
        return out
    ref_acc = acc[acc["label"] == reference]
    ref_shift = shift[shift["label"] == reference]
    skipped: dict[str, list[str]] = {"error": [], "increase": []}
    for label in dict.fromkeys(acc["label"]):
        ratios = _ratios(acc[acc["label"] == label], ref_acc, uncertainty, _error_of_acc)
        rel = _ratios(shift[shift["label"] == label], ref_shift, uncertainty, _error_of_shift)
        skipped["error"] += ratios.skipped
        skipped["increase"] += rel.skipped
        if ratios.frame.empty:
            continue
        out.covered[label] = ratios.frame["eval_noise"].nunique()
        out.mce[label] = ratios.stat(uncertainty, out.undefined, "mCE")
        for c in dict.fromkeys(ratios.frame["eval_noise"]):
            out.per_corruption[(label, c)] = ratios.stat(uncertainty, only=c)
        if not rel.frame.empty:
            out.relative[label] = rel.stat(uncertainty, out.undefined, "relative mCE")
            for c in dict.fromkeys(rel.frame["eval_noise"]):
                out.relative_per_corruption[(label, c)] = rel.stat(uncertainty, only=c)
    for kind, what in (("error", "error"), ("increase", "error increase over clean")):
        cells = sorted(set(skipped[kind]))
        if cells:
            out.notes.append(f"left out where {reference}'s {what} summed over severities is "
                             f"not positive (no ratio): {', '.join(cells)}")
    for what, (most, total) in out.undefined.items():
        why = (f"{reference}'s error did not increase" if what.startswith("relative")
               else f"{reference} made no error")
        if most > MAX_UNDEFINED * total:
            out.notes.append(f"{what}: no interval ({most} of {total} resamples have no ratio: "
                             f"{why} under some corruption in them); mean ± std over seeds")
        elif most:
            out.notes.append(f"{what}: {most} of {total} resamples left out of the interval "
                             f"and test ({why} under some corruption in them: no ratio)")
    return out


def _complement(est: Estimate | None) -> Estimate | None:
    """The estimate of 100 − x from that of x (an error from an accuracy)."""
    if est is None:
        return None
    draws = 100.0 - est.draws if len(est.draws) else est.draws
    return Estimate(100.0 - est.point, 100.0 - est.replicates, draws)


def _error_of_acc(values: np.ndarray | float) -> Any:
    return 100.0 - values  # error (%) from accuracy (%)


def _error_of_shift(values: np.ndarray | float) -> Any:
    return -values  # E(corrupted) − E(clean) = −AS (pp)


@dataclass
class _Ratios:
    """Per-seed ratios (%) of one label, one row per (corruption, dataset, split, seed), and
    per (corruption, dataset, split) the replicates of the ratio (None: no interval)."""

    frame: pd.DataFrame
    replicates: dict[tuple[Any, ...], Estimate | None]
    skipped: list[str]

    def stat(self, uncertainty: Uncertainty | None,
             undefined: dict[str, tuple[int, int]] | None = None, what: str = "",
             only: str | None = None) -> Stat:
        """The mean ratio over the cells (of corruption `only`), with its interval when every
        cell has replicates and at most `MAX_UNDEFINED` of them are undefined; `undefined`
        records the most resamples `what` lost."""
        frame = self.frame if only is None else self.frame[self.frame["eval_noise"] == only]
        stat = summarise(frame, CELL, weight_by=["eval_noise"])
        if uncertainty is None:
            return stat
        cells = list(dict.fromkeys(zip(*(frame[c] for c in CELL), strict=True)))
        reps = [self.replicates.get(cell) for cell in cells]
        if not cells or any(r is None for r in reps):
            return stat
        # the weights of `summarise`: each corruption equally, its test sets equally within it
        per_c: dict[Any, int] = {}
        for cell in cells:
            per_c[cell[0]] = per_c.get(cell[0], 0) + 1
        weights = [1.0 / (len(per_c) * per_c[cell[0]]) for cell in cells]
        # with_estimate keeps the interval only if these points reproduce the mean shown
        point = float(sum(w * r.point for w, r in zip(weights, reps, strict=True)))
        combined = np.sum([w * r.replicates for w, r in zip(weights, reps, strict=True)], axis=0)
        defined = ~np.isnan(combined)
        lost = int(len(combined) - defined.sum())
        if undefined is not None and what:
            most = max(lost, undefined.get(what, (0, 0))[0])
            undefined[what] = (most, len(combined))
        if lost > MAX_UNDEFINED * len(combined):
            return stat
        return with_estimate(stat, Estimate(point, combined[defined]))


def _ratios(rows: pd.DataFrame, ref: pd.DataFrame, uncertainty: Uncertainty | None,
            error_of: Any) -> _Ratios:
    """100 · Σ_s error(rows) / Σ_s error(ref) per seed of `rows`, on the severities both have."""
    records: list[dict[str, Any]] = []
    replicates: dict[tuple[Any, ...], Estimate | None] = {}
    skipped: list[str] = []
    ref_cells = {k: g for k, g in ref.groupby(CELL, sort=False)}
    for cell, own in rows.groupby(CELL, sort=False):
        theirs = ref_cells.get(cell)
        if theirs is None:
            continue
        common = sorted(set(own["severity"]) & set(theirs["severity"]))
        if not common:
            continue
        own = own[own["severity"].isin(common)]
        theirs = theirs[theirs["severity"].isin(common)]
        # Σ_s over the common severities, as a mean (the same ratio): per seed, then over seeds
        ref_error = float(np.mean(error_of(
            theirs.groupby("seed")["value"].mean().to_numpy(dtype=float))))
        if not ref_error > 0:
            skipped.append("/".join(str(c) for c in cell))
            continue
        per_seed = error_of(own.groupby("seed")["value"].mean())
        for seed, value in per_seed.items():
            records.append(dict(zip(CELL, cell, strict=True)) | {
                "seed": seed, "value": 100.0 * float(value) / ref_error})
        replicates[cell] = (None if uncertainty is None
                            else _ratio_replicates(own, theirs, uncertainty, error_of))
    frame = pd.DataFrame.from_records(records, columns=[*CELL, "seed", "value"])
    return _Ratios(frame, replicates, skipped)


def _ratio_replicates(own: pd.DataFrame, theirs: pd.DataFrame, uncertainty: Uncertainty,
                      error_of: Any) -> Estimate | None:
    """The ratio's point and replicates from the two errors' (paired) bootstrap estimates."""
    mine, ref = uncertainty.estimate(own), uncertainty.estimate(theirs)
    if mine is None or ref is None or len(mine.replicates) != len(ref.replicates):
        return None
    ref_reps = error_of(ref.replicates)
    positive = ref_reps > 0
    # a resample without a positive reference has no ratio: NaN, left out (or fatal) later
    ratio = np.full(len(ref_reps), np.nan)
    ratio[positive] = 100.0 * error_of(mine.replicates)[positive] / ref_reps[positive]
    return Estimate(100.0 * float(error_of(mine.point)) / float(error_of(ref.point)), ratio)


def seeds_note(rows: pd.DataFrame, labels: Sequence[str]) -> str:
    """'n (seeds per method): zeroshot 2, coop 3' for the labels in `rows`."""
    counts = rows.groupby("label")["seed"].nunique()
    parts = [f"{label} {int(counts[label])}" for label in labels if label in counts.index]
    return "n (seeds per method): " + ", ".join(parts) + "." if parts else ""

