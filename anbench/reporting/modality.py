"""What a result row perturbs (its modality) and how perturbations group and read.

The results table's `modality` column says, per row, whether its evaluation perturbed the class
sentences ("text"), the test images ("image") or nothing ("none", clean rows). Results written
before that column existed lack it: their clean rows are "none", every other row "text" (only
text perturbations existed then). Reports filter by modality, so text tables never mix in image
rows.

Perturbations are grouped for tables and figures by their category: what a registered
perturbation declares (text: its level, char / word / sentence; image: its category, one of the
ImageNet-C families noise / blur / weather / digital, or feature), else, for the 15 ImageNet-C
corruptions, the category of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations", ICLR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from anbench.metrics import METRICS, MetricInfo
from anbench.reporting.order import noise_sort_key
from anbench.results_schema import infer_modality as _infer_one

MODALITY = "modality"
NO_MODALITY = "none"  # clean rows: nothing was perturbed
TEXT, IMAGE = "text", "image"
MODALITY_ORDER: tuple[str, ...] = (TEXT, IMAGE)

# ImageNet-C (Hendrycks & Dietterich 2019, Figure 1), in the paper's order within each category
IMAGENET_C: dict[str, str] = {
    "gaussian-noise": "noise", "shot-noise": "noise", "impulse-noise": "noise",
    "defocus-blur": "blur", "glass-blur": "blur", "motion-blur": "blur", "zoom-blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic-transform": "digital", "pixelate": "digital",
    "jpeg-compression": "digital",
}
CORRUPTION_CATEGORIES: tuple[str, ...] = ("noise", "blur", "weather", "digital")
CATEGORY_ORDER: tuple[str, ...] = ("char", "word", "sentence", *CORRUPTION_CATEGORIES, "feature")

def metric_info(key: str) -> MetricInfo:
    """How metric `key` reads: its declaration in `anbench.metrics`, else a plain one (a table
    from a newer anbench may hold a metric this one does not declare: no KeyError)."""
    if key in METRICS:
        return METRICS[key]
    return MetricInfo(key, key.upper(), key, "", "higher", 2)


def infer_modality(eval_noise: Iterable[Any]) -> list[str]:
    """The modality of rows written before the column existed: clean -> none, else text (the
    rule of `anbench.results_schema`)."""
    return [_infer_one(str(n)) for n in eval_noise]


def modalities(df: pd.DataFrame) -> pd.Series:
    """Each row's modality: the `modality` column where it has one, inferred elsewhere."""
    inferred = pd.Series(infer_modality(df["eval_noise"]), index=df.index, dtype=object)
    if MODALITY not in df.columns:
        return inferred
    given = df[MODALITY].map(lambda v: "" if _blank(v) else str(v).strip().lower())
    return given.where(given != "", inferred)


def of_modality(df: pd.DataFrame, modality: str) -> pd.DataFrame:
    """The rows of `df` that perturbed `modality` (a missing column counts as text)."""
    if df.empty:
        return df
    return df[(modalities(df) == modality).to_numpy(dtype=bool)]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(
        value).strip()


def _registered_levels() -> dict[str, str]:
    """Perturbation name -> the category (image) or level (text) it declares, over every
    registered perturbation kind."""
    from anbench.noise_groups import kinds, level_of

    out: dict[str, str] = {}
    try:
        registries = [registry for _, registry in kinds()]
    except Exception:  # a broken plugin must not take a report down; the names still show
        registries = []
    for registry in registries:
        try:
            entries = registry.entries()
        except Exception:
            continue
        for entry in entries:
            level = getattr(entry.obj, "category", None) or level_of(entry.obj)
            if level:
                out.setdefault(entry.name, str(level))
    return out


def categories(names: Iterable[str]) -> dict[str, str]:
    """Perturbation name -> category (its declared level, its ImageNet-C category, or '')."""
    levels = _registered_levels()
    return {str(n): levels.get(str(n)) or IMAGENET_C.get(str(n), "") for n in names}


def perturbation_sort_key(name: str, category: str) -> tuple[Any, ...]:
    """Category order, then ImageNet-C order for its corruptions, then the usual noise order."""
    rank = CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)
    known = list(IMAGENET_C)
    return (rank, category, known.index(name) if name in known else len(known),
            *noise_sort_key(name))


def order_by_category(names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, category) pairs in display order."""
    cats = categories(set(names))
    return sorted(cats.items(), key=lambda item: perturbation_sort_key(item[0], item[1]))
