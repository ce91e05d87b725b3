"""The runner's long results table: its columns and their types, declared once.

The store writes these columns (cells' rows.csv and results.csv); reporting reads and checks them.
"""

from __future__ import annotations

# A list, not a tuple: pandas selects several columns by a list (`frame[RESULT_COLUMNS]`).
RESULT_COLUMNS: list[str] = [
    "suite", "dataset", "backbone", "method", "train_noise", "shots", "seed", "split",
    "eval_noise", "severity", "alpha", "metric", "value",
]
INT_COLUMNS: tuple[str, ...] = ("shots", "seed")
# Empty means "not applicable" (clean rows have no severity) or "not computed" (a NaN value).
FLOAT_COLUMNS: tuple[str, ...] = ("severity", "alpha", "value")
STRING_COLUMNS: tuple[str, ...] = tuple(
    c for c in RESULT_COLUMNS if c not in INT_COLUMNS + FLOAT_COLUMNS)
# The pandas dtype of each column, e.g. for `pd.read_csv(..., dtype=RESULT_DTYPES)`.
RESULT_DTYPES: dict[str, str] = {
    c: "int64" if c in INT_COLUMNS else "float64" if c in FLOAT_COLUMNS else "str"
    for c in RESULT_COLUMNS}
