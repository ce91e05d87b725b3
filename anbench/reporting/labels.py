"""Row labels: which method label a result row gets, and how perturbations and numbers read."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from anbench.reporting.order import noise_sort_key

ZEROSHOT = "zeroshot"
DEFAULT_TRAIN_NOISE = "wsp"  # ANPrompt's default training noise (the paper's weak noise)
CLEAN = "clean"
MISSING_CELL = "–"


def fmt_num(x: float | None) -> str:
    """Compact number for labels: 0.3 -> '0.3', inf -> '∞'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING_CELL
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:g}"


def slug(text: Any) -> str:
    """A file-name-safe kebab form: 'ViT-B/16' -> 'vit-b-16', '0.3' -> '0p3'."""
    text = str(text).lower().replace(".", "p").replace("∞", "inf")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "x"


def assign_labels(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label rows by method, and pick one training noise per method for the main tables.

    A method trained under one noise is labelled by its name; under several, the default `wsp`
    keeps the bare name (and is what the main tables show) and the others become
    'method (noise)'; without `wsp`, every noise gets its own 'method (noise)' row.
    Returns (all rows labelled, main rows).
    """
    df = df.copy()
    labels: dict[tuple[str, str], str] = {}
    main_keys: set[tuple[str, str]] = set()
    for method, noises in df.groupby("method", sort=False)["train_noise"].unique().items():
        noises = set(noises)
        for noise in noises:
            key = (str(method), str(noise))
            if len(noises) == 1 or noise == DEFAULT_TRAIN_NOISE:
                labels[key] = str(method)
            else:
                labels[key] = f"{method} ({noise})"
            if DEFAULT_TRAIN_NOISE not in noises or noise == DEFAULT_TRAIN_NOISE:
                main_keys.add(key)
    keys = list(zip(df["method"], df["train_noise"], strict=True))
    df["label"] = [labels[k] for k in keys]
    main = df[np.array([k in main_keys for k in keys], dtype=bool)].reset_index(drop=True)
    return df, main


def add_perturbation_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add `perturbation`: the eval noise, plus only the setting parts that vary for it."""
    df = df.copy()
    names: dict[tuple[str, Any, Any], str] = {}
    for noise, sub in df.groupby("eval_noise", sort=False):
        combos = sorted({(_nan_key(s), _nan_key(a)) for s, a in zip(sub["severity"], sub["alpha"],
                                                                      strict=True)},
                        key=lambda c: (_sort_num(c[0]), _sort_num(c[1])))
        vary_s = len({c[0] for c in combos}) > 1
        vary_a = len({c[1] for c in combos}) > 1
        for sev, alpha in combos:
            parts = ([f"s={fmt_num(_unkey(sev))}"] if vary_s else []) + (
                [f"α={fmt_num(_unkey(alpha))}"] if vary_a else [])
            label = f"{noise} ({', '.join(parts)})" if parts else str(noise)
            names[(str(noise), sev, alpha)] = label
    df["perturbation"] = [names[(n, _nan_key(s), _nan_key(a))] for n, s, a in
                          zip(df["eval_noise"], df["severity"], df["alpha"], strict=True)]
    return df


def _nan_key(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _unkey(x: float | None) -> float:
    return math.nan if x is None else x


def _sort_num(x: float | None) -> float:
    return -math.inf if x is None else x


def order_perturbations(df: pd.DataFrame) -> list[str]:
    """Perturbation labels in canonical noise order, settings by severity then alpha."""
    seen: dict[str, tuple[Any, ...]] = {}
    for label, noise, sev, alpha in zip(df["perturbation"], df["eval_noise"], df["severity"],
                                        df["alpha"], strict=True):
        seen.setdefault(label, (*noise_sort_key(noise), _sort_num(_nan_key(sev)),
                                _sort_num(_nan_key(alpha))))
    return sorted(seen, key=lambda lab: seen[lab])
