"""The runner's long results table: its columns and their types, declared once.

The store writes these columns (cells' rows.csv and results.csv); reporting reads and checks them.

`modality` says what a row's condition perturbed: "none" (clean rows), "text" or "image". Image
rows have `eval_noise` = the image perturbation, `severity` 1..5 for ImageNet-C corruptions,
`alpha` NaN for corruptions (the mixing weight for `image-feature-mix`), metrics acc, as, lpr and
ifs (image feature shift) with their `_std`, and hm on split base-new. Tables written before the
column existed load with it inferred (`with_modality`): clean -> none, anything else -> text.
"""

from __future__ import annotations

from typing import Any

# A list, not a tuple: pandas selects several columns by a list (`frame[RESULT_COLUMNS]`).
RESULT_COLUMNS: list[str] = [
    "suite", "dataset", "backbone", "method", "train_noise", "shots", "seed", "split",
    "eval_noise", "severity", "alpha", "modality", "metric", "value",
]
MODALITIES: tuple[str, ...] = ("none", "text", "image")
INT_COLUMNS: tuple[str, ...] = ("shots", "seed")
# Empty means "not applicable" (clean rows have no severity) or "not computed" (a NaN value).
FLOAT_COLUMNS: tuple[str, ...] = ("severity", "alpha", "value")
STRING_COLUMNS: tuple[str, ...] = tuple(
    c for c in RESULT_COLUMNS if c not in INT_COLUMNS + FLOAT_COLUMNS)
# The pandas dtype of each column, e.g. for `pd.read_csv(..., dtype=RESULT_DTYPES)`.
RESULT_DTYPES: dict[str, str] = {
    c: "int64" if c in INT_COLUMNS else "float64" if c in FLOAT_COLUMNS else "str"
    for c in RESULT_COLUMNS}


def infer_modality(eval_noise: str) -> str:
    """The modality of a row written before the `modality` column: only text perturbations
    existed then."""
    return "none" if eval_noise == "clean" else "text"


def with_modality(frame: Any) -> Any:
    """A results DataFrame with a `modality` column: kept where present and filled, inferred
    (`infer_modality`) where missing or empty. Returns a new frame in `RESULT_COLUMNS` order
    when every column is there."""
    frame = frame.copy()
    inferred = frame["eval_noise"].astype(str).map(infer_modality)
    if "modality" not in frame.columns:
        frame["modality"] = inferred
    else:
        empty = frame["modality"].isna() | (frame["modality"].astype(str).str.strip() == "")
        frame["modality"] = frame["modality"].where(~empty, inferred)
    frame["modality"] = frame["modality"].astype(str)
    if all(column in frame.columns for column in RESULT_COLUMNS):
        extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
        frame = frame[RESULT_COLUMNS + extra]
    return frame
