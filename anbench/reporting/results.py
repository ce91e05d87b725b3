"""Reading the runner's results.csv: one place that reads, checks and types it.

Anything that is not a results table (empty, binary, not UTF-8, ragged CSV, missing columns, a
word where a number belongs) fails with one `AnbenchError` line naming the file and the fault,
never a parser traceback. A valid header without data rows is a valid, empty table.

The `modality` column (text / image / none) is optional: results written before it existed
lack it, and their rows get it inferred (`reporting.modality`), so old and new tables read alike.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from anbench.registry import AnbenchError
from anbench.reporting.modality import IMAGE, MODALITY, NO_MODALITY, TEXT, infer_modality
from anbench.results_schema import FLOAT_COLUMNS, INT_COLUMNS, RESULT_COLUMNS, STRING_COLUMNS

_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)",
                    re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+(\.0*)?")  # '3.0' is 3: a seed written by a float column
_INT_LIMIT = 2**63 - 1
_SHOWN = 40  # characters of a bad value quoted in a message
# Every column but `modality` must be present; the frame read always has `modality` too.
REQUIRED_COLUMNS: list[str] = [c for c in RESULT_COLUMNS if c != MODALITY]
OUTPUT_COLUMNS: list[str] = RESULT_COLUMNS if MODALITY in RESULT_COLUMNS else [
    *RESULT_COLUMNS, MODALITY]


def read_results(path: Path | str) -> pd.DataFrame:
    """The results table at `path` with typed columns: shots and seed int64; severity, alpha
    and value float64 (NaN where empty); every other column a non-empty string."""
    path = Path(path)
    if not path.is_file():
        raise AnbenchError(f"no results file at {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise AnbenchError(f"{path} is a binary file, not a CSV results table")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first column name
    except UnicodeDecodeError as exc:
        raise AnbenchError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}): "
                           "not a CSV results table") from None
    if not text.strip():
        raise AnbenchError(f"{path} is empty: expected a CSV header with the columns "
                           f"{', '.join(REQUIRED_COLUMNS)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
        _check_header(header, str(path))
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            if len(row) != len(header):
                if not any(field.strip() for field in row):
                    continue  # blank line
                raise AnbenchError(f"{path}: line {reader.line_num} has {len(row)} field(s), the "
                                   f"header has {len(header)}")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise AnbenchError(f"{path} is not a well-formed CSV table (line {reader.line_num}: "
                           f"{exc})") from None
    fields = list(zip(*rows, strict=True)) or [()] * len(header)
    texts = {c: [v.strip() for v in fields[header.index(c)]] for c in OUTPUT_COLUMNS
             if c in header}
    return _typed(texts, str(path), lambda i: f"line {lines[i]}")


def validate_results(frame: pd.DataFrame, source: str = "results table",
                     where: Callable[[int], str] | None = None) -> pd.DataFrame:
    """Check and type a results table already in memory (see `read_results`).

    `where(i)` names row i in messages (default: 'data row i+1'); extra columns are dropped.
    """
    _check_header([str(c) for c in frame.columns], source)
    texts = {c: [_as_text(x) for x in frame[c].tolist()] for c in OUTPUT_COLUMNS
             if c in frame.columns}
    return _typed(texts, source, where or (lambda i: f"data row {i + 1}"))


def _typed(columns: dict[str, list[str]], source: str, where: Callable[[int], str]
           ) -> pd.DataFrame:
    """The results frame from each column's stripped texts, every value checked."""
    df = pd.DataFrame(index=pd.RangeIndex(len(columns[REQUIRED_COLUMNS[0]])))
    for col in OUTPUT_COLUMNS:
        if col == MODALITY:
            df[col] = pd.Series(_modalities(columns, source, where), dtype=object)
            continue
        texts = columns[col]
        if col in STRING_COLUMNS:
            empty = next((i for i, t in enumerate(texts) if not t), None)
            if empty is not None:
                raise AnbenchError(f"{source}: column '{col}' is empty at {where(empty)}")
            df[col] = pd.Series(texts, dtype=object)
        elif col in INT_COLUMNS:
            df[col] = pd.Series(_parse(texts, col, _int_or_none, "whole numbers", source, where),
                                dtype="int64")
        elif col in FLOAT_COLUMNS:
            df[col] = pd.Series(_parse(texts, col, _float_or_none, "numbers (or nothing)",
                                       source, where), dtype="float64")
    df["metric"] = df["metric"].str.lower()
    return df


def _modalities(columns: dict[str, list[str]], source: str, where: Callable[[int], str]
                ) -> list[str]:
    """The `modality` column: given values checked, blanks (or no column) inferred.

    A clean row perturbs nothing and a perturbed row something: a value that says otherwise
    (or names no known modality) is a damaged table, not something to guess around."""
    noises = columns["eval_noise"]
    inferred = infer_modality(noises)
    given = columns.get(MODALITY)
    if given is None:
        return inferred
    known = [NO_MODALITY, TEXT, IMAGE]
    out: list[str] = []
    for i, (text, noise, guess) in enumerate(zip(given, noises, inferred, strict=True)):
        value = text.lower()
        if not value:
            out.append(guess)
            continue
        if value not in known:
            known = _known_modalities()  # a plugin's perturbation kind, perhaps
        if value not in known:
            shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
            raise AnbenchError(f"{source}: column '{MODALITY}' must be one of "
                               f"{', '.join(known)}; {where(i)} has {shown!r}")
        if (value == NO_MODALITY) != (noise == "clean"):
            raise AnbenchError(f"{source}: column '{MODALITY}' is {value!r} at {where(i)}, whose "
                               f"eval_noise is {noise!r} (clean rows are '{NO_MODALITY}', "
                               "perturbed rows another modality)")
        out.append(value)
    return out


def _known_modalities() -> list[str]:
    """none, text, image and the modality of every registered perturbation kind."""
    from anbench.noise_groups import kinds

    try:
        plugins = [m for m, _ in kinds()]
    except Exception:  # a broken plugin: the built-in modalities still read
        plugins = []
    return list(dict.fromkeys([NO_MODALITY, TEXT, IMAGE, *plugins]))


def _check_header(header: Sequence[str], source: str) -> None:
    present = [c for c in REQUIRED_COLUMNS if c in header]
    if not present:
        raise AnbenchError(f"{source} is not a results table: its header names none of the "
                           f"columns {', '.join(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise AnbenchError(f"{source} lacks column(s) {', '.join(missing)}; expected "
                           f"{', '.join(REQUIRED_COLUMNS)}")
    twice = [c for c in OUTPUT_COLUMNS if list(header).count(c) > 1]
    if twice:
        raise AnbenchError(f"{source} names column(s) {', '.join(twice)} more than once")


def _parse(texts: list[str], col: str, parse: Callable[[str], Any], what: str, source: str,
           where: Callable[[int], str]) -> list[Any]:
    parsed: dict[str, Any] = {}
    out: list[Any] = []
    for i, text in enumerate(texts):
        if text not in parsed:
            parsed[text] = parse(text)
        value = parsed[text]
        if value is None:
            shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
            raise AnbenchError(f"{source}: column '{col}' must hold {what}; {where(i)} has "
                               f"{shown!r}")
        out.append(value)
    return out


def _int_or_none(text: str) -> int | None:
    if not _INT.fullmatch(text):
        return None
    value = int(text.split(".")[0])
    return value if abs(value) <= _INT_LIMIT else None


def _float_or_none(text: str) -> float | None:
    if not text:
        return math.nan  # not applicable (clean rows' severity) or not computed
    return float(text) if _FLOAT.fullmatch(text) else None


def _as_text(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))  # a seed or shots held as 1.0 must still read '1'
    return str(x).strip()
