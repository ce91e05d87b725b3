"""Aggregation over seeds and cells (one rule for every report).

- a *cell* is one combination of the dimensions a statistic averages over (e.g. dataset x split);
  its value is the mean over its seeds;
- the reported mean is the mean of the cell means (CoCoOp/MaPLe: average over datasets first);
- the std (sample std, ddof=1) and n are taken over the per-seed averages of the seeds that every
  cell has, so a partial seed never skews the spread;
- HM is the harmonic mean of the mean Base and mean New, never a mean of HMs; its std is over the
  per-seed HMs.

Sums use `math.fsum` (exactly rounded, whatever the order of the terms), so a printed digit never
depends on the summation order of a BLAS or SIMD kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anbench.metrics import harmonic_mean
from anbench.reporting.order import order_datasets


@dataclass(frozen=True)
class Stat:
    """A mean with the std and number of seeds behind it (std is NaN for fewer than 2).

    When the cells' arrays are at hand, also its 95% bootstrap interval (`lo`, `hi`), the std
    over noise draws and the bootstrap replicates (for paired tests between table rows).
    """

    mean: float
    std: float = math.nan
    n: int = 0
    lo: float = math.nan
    hi: float = math.nan
    draw_std: float = math.nan
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))


def fmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (NaN if none), independent of their order."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def reduce_cells(rows: pd.DataFrame, cells: Sequence[str],
                 weight_by: Sequence[str] = ()) -> tuple[float, pd.Series]:
    """Mean over cells of the per-cell seed means, and the per-seed means over the cells.

    `rows` holds `cells` columns, `seed` and `value`. Per-seed means use only the seeds present
    in every cell. With `weight_by`, each group of cells counts equally (e.g. each perturbation,
    however many severities it was evaluated at): the mean of the groups' means.
    """
    if rows.empty:
        return math.nan, pd.Series(dtype=float)
    keys = list(cells)
    # pandas' grouped mean is one sequential loop per group (no BLAS), so it is reproducible
    per = rows.groupby([*keys, "seed"], sort=True)["value"].mean()
    if not keys:
        return fmean(per.to_numpy()), per
    wide = per.unstack("seed")
    values = wide.to_numpy(dtype=float)
    if weight_by:
        index = wide.index.to_frame(index=False)
        groups = list(index.groupby(list(weight_by), sort=False, dropna=False).indices.values())
    else:
        groups = [np.arange(len(values))]

    def grouped_mean(column: np.ndarray) -> float:
        return fmean(fmean(column[g]) for g in groups)

    mean = grouped_mean(np.array([fmean(row) for row in values]))
    complete = [j for j in range(values.shape[1]) if not np.isnan(values[:, j]).any()]
    per_seed = pd.Series([grouped_mean(values[:, j]) for j in complete],
                         index=[wide.columns[j] for j in complete], dtype=float)
    return mean, per_seed


def fstd(values: Iterable[float]) -> float:
    """Sample std (ddof=1) of the non-NaN values, NaN for fewer than 2; order-independent."""
    kept = [float(v) for v in values if not math.isnan(v)]
    if len(kept) < 2:
        return math.nan
    mean = math.fsum(kept) / len(kept)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (len(kept) - 1))


def make_stat(mean: float, per_seed: pd.Series) -> Stat:
    return Stat(mean, fstd(per_seed.to_numpy(dtype=float)), len(per_seed))


def summarise(rows: pd.DataFrame, cells: Sequence[str], weight_by: Sequence[str] = ()) -> Stat:
    return make_stat(*reduce_cells(rows, cells, weight_by))


@dataclass(frozen=True)
class BaseNew:
    base: Stat
    new: Stat
    hm: Stat
    datasets: tuple[str, ...]


def base_new(rows: pd.DataFrame) -> BaseNew | None:
    """Base / New / HM over the datasets in `rows` (clean accuracy of one label).

    Only datasets with both a base and a new result count; HM is of the averaged Base and New.
    """
    have = rows.groupby("dataset")["split"].agg(lambda s: {"base", "new"} <= set(s))
    datasets = tuple(order_datasets(have.index[have.to_numpy(dtype=bool)]))
    if not datasets:
        return None
    rows = rows[rows["dataset"].isin(datasets)]
    b_mean, b_seed = reduce_cells(rows[rows["split"] == "base"], ["dataset"])
    n_mean, n_seed = reduce_cells(rows[rows["split"] == "new"], ["dataset"])
    common = [s for s in b_seed.index if s in n_seed.index]
    h_seed = pd.Series([harmonic_mean(b_seed[s], n_seed[s]) for s in common], index=common,
                       dtype=float)
    return BaseNew(make_stat(b_mean, b_seed), make_stat(n_mean, n_seed),
                   make_stat(harmonic_mean(b_mean, n_mean), h_seed), datasets)
