"""Descriptions of what a partial suite lacks: missing datasets, cells and seeds."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from anbench.reporting.order import (
    dataset_sort_key,
    natural_key,
    order_datasets,
    order_labels,
    order_noises,
)


def describe_missing(rows: pd.DataFrame, dims: Sequence[str], unit: str = "label",
                     limit: int = 6) -> list[str]:
    """What each unit (method label) lacks relative to the grid the others cover.

    Reports whole missing values of the first dimension (e.g. a dataset), then missing cells,
    then seeds a cell lacks relative to the unit's other cells.
    """
    if rows.empty:
        return []
    rows = rows.assign(**{d: rows[d].map(str) for d in dims})  # e.g. shots: 16 -> '16'
    values = {d: _ordered(d, rows[d]) for d in dims}
    grid = list(itertools.product(*(values[d] for d in dims)))
    out: list[str] = []
    for unit_value in order_labels(rows[unit].unique()):
        sub = rows[rows[unit] == unit_value]
        seeds_by_cell = sub.groupby(list(dims), sort=False)["seed"].agg(set)
        present = {(k if isinstance(k, tuple) else (k,)) for k in seeds_by_cell.index}
        absent = [c for c in grid if c not in present]
        whole: list[tuple[int, str]] = []  # (dim index, value) the unit has no cell for at all
        for i, dim in enumerate(dims):
            lacking = [v for v in values[dim] if all(c[i] != v for c in present)]
            if lacking:
                out.append(f"{unit_value}: no results for {dim} {', '.join(lacking)}")
                whole += [(i, v) for v in lacking]
        rest = ["/".join(c) for c in absent if not any(c[i] == v for i, v in whole)]
        if rest:
            more = f" (+{len(rest) - limit} more)" if len(rest) > limit else ""
            out.append(f"{unit_value}: missing {'/'.join(dims)} {', '.join(rest[:limit])}{more}")
        all_seeds = set().union(*seeds_by_cell.to_list())
        gaps: dict[tuple[str, ...], list[str]] = {}
        for key, seeds in seeds_by_cell.items():
            lack = tuple(str(s) for s in sorted(all_seeds - seeds, key=natural_key))
            if lack:
                cell = "/".join(key if isinstance(key, tuple) else (key,))
                gaps.setdefault(lack, []).append(cell)
        for lack, cells in sorted(gaps.items()):
            cells = sorted(cells, key=lambda c: _cell_key(c, dims))
            more = f" (+{len(cells) - limit} more)" if len(cells) > limit else ""
            word = "seed" if len(lack) == 1 else "seeds"
            out.append(f"{unit_value}: {word} {', '.join(lack)} missing for "
                       f"{', '.join(cells[:limit])}{more}")
    return out


def _ordered(dim: str, values: Iterable[str]) -> list[str]:
    if dim == "dataset":
        return order_datasets(values)
    if dim in ("method", "label"):
        return order_labels(values)
    if dim in ("eval_noise", "train_noise"):
        return order_noises(values)
    return sorted(set(values), key=natural_key)


def _cell_key(cell: str, dims: Sequence[str]) -> tuple[Any, ...]:
    return tuple(dataset_sort_key(p) if d == "dataset" else natural_key(p)
                 for d, p in zip(dims, cell.split("/"), strict=False))

