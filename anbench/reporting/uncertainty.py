"""Bootstrap intervals for report cells, from the suite's stored cell arrays.

A report cell is a mean over (dataset, split, condition) cells of seed-means, exactly as
`stats.reduce_cells` computes it; its replicates are the same weighted mean of each cell's
bootstrap replicates (`anbench.stats`), so table rows of different methods on the same test sets
are paired. A cell whose arrays are missing, damaged or do not reproduce results.csv gives no
interval (the table then shows mean ± std over seeds, as without arrays).

Image conditions are evaluated on a fixed subsample of each test set, stored apart from the text
conditions (`<split>/image_index`, `<split>/image_logits/<condition>` [K, n, C],
`<split>/image_ifs/<condition>` [K, n]); their per-image scores (acc, lpr and as against the clean
logits of the same images, ifs) form a test set of their own, `<split>/image`, resampled over
its n images (the same images for every seed and method: paired as well).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anbench.cell_scores import (
    CLEAN,
    SplitScores,
    condition_key,
    load_cell_scores,
    resample_streams,
    stacked,
    unit_kind,
)
from anbench.registry import AnbenchError
from anbench.reporting.order import order_datasets
from anbench.reporting.stats import Stat
from anbench.stats import DEFAULT_RESAMPLES, Bootstrap, Estimate, combine, harmonic_replicates
from anbench.store import CellKey, SuiteStore

# results.csv columns that name one (dataset, split, condition) cell of one trained model
CELL_COLUMNS = ["backbone", "shots", "method", "train_noise", "dataset", "split", "eval_noise",
                "severity", "alpha"]
_TOLERANCE = 1e-4  # arrays must reproduce results.csv to this (pp, or TS units)
IMAGE_SET = "/image"  # suffix of the split name of a split's image-condition subsample


def load_image_scores(path: Path | str) -> dict[str, SplitScores]:
    """'<split>/image' -> per-image scores of the image conditions in a cell's arrays.npz
    (empty when it has none); a damaged file is one `AnbenchError` line."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            splits = [n[:-len("/image_index")] for n in names if n.endswith("/image_index")]
            arrays = {n: npz[n] for n in names if any(
                n == f"{s}/labels" or n == f"{s}/logits/clean" or n.startswith(f"{s}/image_")
                for s in splits)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise AnbenchError(f"cannot read {path}: {exc}") from None
    try:
        return {f"{s}{IMAGE_SET}": _image_scores(s, arrays) for s in splits}
    except (KeyError, ValueError, IndexError) as exc:
        raise AnbenchError(f"{path} does not hold the image arrays of an evaluated cell ({exc})"
                           ) from None


def _image_scores(split: str, arrays: dict[str, np.ndarray]) -> SplitScores:
    index = np.asarray(arrays[f"{split}/image_index"]).astype(np.int64).ravel()
    labels = np.asarray(arrays[f"{split}/labels"]).astype(np.int64).ravel()[index]
    clean_pred = np.asarray(arrays[f"{split}/logits/clean"]).argmax(axis=-1)[index]
    clean_ok = (clean_pred == labels).astype(np.float64) * 100.0
    out = SplitScores(f"{split}{IMAGE_SET}", labels)
    out.scores[(CLEAN, "acc")] = clean_ok
    out.per_draw[(CLEAN, "acc")] = np.array([clean_ok.mean()])
    prefix = f"{split}/image_logits/"
    for name in arrays:
        if not name.startswith(prefix):
            continue
        cond = name[len(prefix):]
        logits = np.asarray(arrays[name], dtype=np.float64)
        logits = logits[None] if logits.ndim == 2 else logits  # [K, n, C]
        shift = np.asarray(arrays[f"{split}/image_ifs/{cond}"], dtype=np.float64)
        shift = shift[None] if shift.ndim == 1 else shift  # [K, n]
        if logits.shape[1] != len(labels) or shift.shape != logits.shape[:2]:
            raise ValueError(f"{split}/{cond}: shapes {logits.shape}, {shift.shape} do not fit "
                             f"{len(labels)} images")
        pred = logits.argmax(axis=-1)
        ok = (pred == labels).astype(np.float64) * 100.0
        kept = (pred == clean_pred).astype(np.float64) * 100.0
        for metric, per in (("acc", ok), ("lpr", kept), ("as", ok - clean_ok), ("ifs", shift)):
            out.scores[(cond, metric)] = per.mean(axis=0)
            out.per_draw[(cond, metric)] = per.mean(axis=1)
    return out


class Uncertainty:
    """Bootstrap estimates for the rows of one suite (cells read lazily, results memoised)."""

    def __init__(self, root: Path | str, resamples: int = DEFAULT_RESAMPLES):
        self.store = SuiteStore(Path(root))
        self.bootstrap = Bootstrap(resamples)
        self._scores: dict[CellKey, dict[str, SplitScores] | None] = {}
        self._cells: dict[tuple[Any, ...], Estimate | None] = {}
        self._split_reps: dict[tuple[Any, ...], Any] = {}
        self.problems: list[str] = []  # cells whose arrays could not be used, one line each

    @property
    def resamples(self) -> int:
        return self.bootstrap.resamples

    # ---------------------------------------------------------------- one stored cell
    def scores(self, key: CellKey) -> dict[str, SplitScores] | None:
        if key not in self._scores:
            self._scores[key] = self._load(key)
        return self._scores[key]

    def _load(self, key: CellKey) -> dict[str, SplitScores] | None:
        cell = self.store.inspect(key)
        if cell is None:
            return None  # never stored here (e.g. results.csv copied elsewhere)
        if not cell.intact:
            self.problems.append(f"{key.label()}: {cell.problem}; no interval")
            return None
        try:
            scores = load_cell_scores(cell.directory / "arrays.npz")
            scores.update(load_image_scores(cell.directory / "arrays.npz"))
            return scores
        except AnbenchError as exc:
            self.problems.append(f"{key.label()}: {exc}; no interval")
            return None

    def cell_estimate(self, cell: tuple[Any, ...], seeds: tuple[int, ...], metric: str
                      ) -> Estimate | None:
        """The estimate of one (CELL_COLUMNS values) cell over `seeds`, or None."""
        memo = (cell, seeds, metric)
        if memo not in self._cells:
            self._cells[memo] = self._cell_estimate(cell, seeds, metric)
        return self._cells[memo]

    def _cell_estimate(self, cell: tuple[Any, ...], seeds: tuple[int, ...], metric: str
                       ) -> Estimate | None:
        backbone, shots, method, train_noise, dataset, split, eval_noise, severity, _ = cell
        cond = condition_key(str(eval_noise), float(severity))
        model = (str(backbone), int(shots), str(method), str(train_noise), str(dataset))
        found = self._replicates(model, seeds, str(split), unit_kind(metric))
        if found is None or (cond, metric) not in found[0]:
            # an image condition: its own test set, the split's image subsample
            found = self._replicates(model, seeds, f"{split}{IMAGE_SET}", unit_kind(metric))
        if found is None or (cond, metric) not in found[0]:
            return None
        columns, reps, per_seed = found
        column = columns.index((cond, metric))
        draws = [s.per_draw[(cond, metric)] for s in per_seed.values()]
        per_draw = np.mean(draws, axis=0) if len({len(d) for d in draws}) == 1 else np.empty(0)
        point = float(np.mean([s.scores[(cond, metric)].mean() for s in per_seed.values()]))
        return Estimate(point, reps[:, column], per_draw)

    def _replicates(self, model: tuple[str, int, str, str, str], seeds: tuple[int, ...],
                    split: str, kind: str
                    ) -> tuple[list[tuple[str, str]], np.ndarray, dict[int, SplitScores]] | None:
        """Replicates of every (condition, metric) column of one model's split at once (one
        pass over the resample counts per seed slot), memoised."""
        memo = (model, seeds, split, kind)
        if memo in self._split_reps:
            return self._split_reps[memo]
        backbone, shots, method, train_noise, dataset = model
        per_seed: dict[int, SplitScores] = {}
        for seed in seeds:
            found = self.scores(CellKey(backbone, dataset, method, train_noise, shots, seed))
            if found is None or split not in found:
                self._split_reps[memo] = None
                return None
            per_seed[seed] = found[split]
        columns, values = stacked(per_seed, kind)
        result = None
        if columns:
            metric = columns[0][1]
            stream, seed_stream = resample_streams(dataset, split, metric)
            try:
                reps = self.bootstrap.replicates(values, stream, seed_stream)
                result = (columns, reps, per_seed)
            except AnbenchError as exc:
                self.problems.append(f"{method} on {dataset}/{split}: {exc}; no interval")
        self._split_reps[memo] = result
        return result

    # ---------------------------------------------------------------- report cells
    def estimate(self, rows: pd.DataFrame, weight_by: Sequence[str] = ()) -> Estimate | None:
        """The estimate of the mean `stats.reduce_cells(rows, ..., weight_by)` reports.

        `rows` hold one metric; None when any cell lacks arrays or does not match its rows."""
        if rows.empty or rows["metric"].nunique() != 1 or (rows["split"] == "base-new").any():
            return None
        metric = str(rows["metric"].iloc[0])
        keys = CELL_COLUMNS + [c for c in weight_by if c not in CELL_COLUMNS]
        grouped = rows.groupby(keys, sort=True, dropna=False)
        estimates: list[Estimate] = []
        group_of: list[tuple[Any, ...]] = []
        for key, sub in grouped:
            cell = tuple(key[:len(CELL_COLUMNS)])
            seeds = tuple(sorted(int(s) for s in sub["seed"].unique()))
            est = self.cell_estimate(cell, seeds, metric)
            expected = float(sub.groupby("seed")["value"].mean().mean())
            if est is None or not math.isclose(est.point, expected, rel_tol=0,
                                               abs_tol=_TOLERANCE):
                if est is not None:
                    self.problems.append(
                        f"{cell[2]} on {cell[4]}/{cell[5]} {metric}: arrays give "
                        f"{est.point:.6g}, results.csv {expected:.6g}; no interval")
                return None
            estimates.append(est)
            group_of.append(tuple(key[keys.index(c)] for c in weight_by))
        sizes = {g: group_of.count(g) for g in group_of}
        weights = [1.0 / (len(sizes) * sizes[g]) for g in group_of]
        return combine(estimates, weights)

    def base_new(self, rows: pd.DataFrame) -> tuple[Estimate, Estimate, Estimate] | None:
        """Base, New and HM (of the two averages) from clean accuracy rows of one label."""
        base = self.estimate(rows[rows["split"] == "base"])
        new = self.estimate(rows[rows["split"] == "new"])
        if base is None or new is None:
            return None
        hm_point = _harmonic(base.point, new.point)
        return base, new, Estimate(hm_point, harmonic_replicates(base.replicates,
                                                                 new.replicates))

    # ---------------------------------------------------------------- presentation
    def describe(self, rows: pd.DataFrame) -> str | None:
        """'n: ...' for the rows of a table: test units per dataset/split, seeds, draws."""
        units: dict[str, dict[str, str]] = {}
        seeds: set[int] = set()  # how many seeds a model has
        draws: set[int] = set()
        classes = bool(rows["metric"].isin(["ts"]).any())
        for keys, sub in rows.groupby(["backbone", "shots", "method", "train_noise", "dataset",
                                       "split", "eval_noise", "severity"], dropna=False):
            backbone, shots, method, noise, dataset, split, eval_noise, severity = keys
            seeds.add(int(sub["seed"].nunique()))
            for seed in sub["seed"].unique():
                found = self.scores(CellKey(str(backbone), str(dataset), str(method),
                                            str(noise), int(shots), int(seed)))
                scores = None if found is None else found.get(str(split))
                cond = condition_key(str(eval_noise), float(severity))
                image = None if found is None else found.get(f"{split}{IMAGE_SET}")
                if image is not None and cond in image.conditions and (
                        scores is None or cond not in scores.conditions):
                    scores = image  # an image condition: n is the image subsample's
                if scores is None:
                    continue
                n = f"{len(scores.labels)}"
                if scores is image:
                    units.setdefault(str(dataset), {})[f"{split} (image conditions)"] = n
                else:
                    if classes:
                        n += f" ({scores.units('ts')} classes)"
                    units.setdefault(str(dataset), {})[str(split)] = n
                if eval_noise != CLEAN:
                    draws.add(scores.draws(cond))
        if not units:
            return None
        parts = [f"{d} " + ", ".join(f"{s} {n}" for s, n in units[d].items())
                 for d in order_datasets(units)]
        text = (f"n: test images per dataset and split: {'; '.join(parts)}; seeds per model: "
                f"{_span(seeds)}")
        if draws:
            text += f"; noise draws per perturbation: {_span(draws)}"
        return text + "."


def with_estimate(stat: Stat, est: Estimate | None) -> Stat:
    """`stat` with the interval, draw std and replicates of `est` when they describe it."""
    if est is None or math.isnan(stat.mean) or not math.isclose(est.point, stat.mean, rel_tol=0,
                                                                abs_tol=_TOLERANCE):
        return stat
    lo, hi = est.interval
    return replace(stat, lo=lo, hi=hi, draw_std=est.draw_std, replicates=est.replicates)


def _harmonic(base: float, new: float) -> float:
    return float(harmonic_replicates(np.array([base]), np.array([new]))[0])


def _span(values: set[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"
