"""`anbench report` on files that are not results tables: one clear line, never a traceback."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anbench.registry import AnbenchError
from anbench.reporting import build_report_info, read_results, validate_results
from anbench.results_schema import RESULT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
HEADER = ",".join(RESULT_COLUMNS)
FIELDS = {"suite": "toy", "dataset": "dtd", "backbone": "mini", "method": "dapt",
          "train_noise": "none", "shots": "16", "seed": "1", "split": "base", "eval_noise": "drop",
          "severity": "0.3", "alpha": "inf", "modality": "text", "metric": "acc", "value": "71.5"}


def row(columns: list[str] = RESULT_COLUMNS, **values: str) -> str:
    return ",".join({**FIELDS, **values}[c] for c in columns)


ROW = row()
OLD_COLUMNS = [c for c in RESULT_COLUMNS if c != "modality"]  # before the modality column


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "results.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def rejected(path: Path, match: str) -> str:
    """The one-line message `read_results` rejects `path` with; it names the file."""
    with pytest.raises(AnbenchError, match=match) as info:
        read_results(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_a_valid_table_is_typed(tmp_path: Path) -> None:
    clean = row(seed="2", eval_noise="clean", severity="", alpha="", modality="none",
                metric="ACC", value="")
    df = read_results(write(tmp_path, "\ufeff" + "\n".join([HEADER, ROW, "", clean]) + "\n"))
    assert list(df.columns) == RESULT_COLUMNS and len(df) == 2  # BOM and blank line skipped
    assert df["seed"].tolist() == [1, 2] and df["shots"].dtype == np.int64
    assert df["severity"].iloc[0] == pytest.approx(0.3) and math.isinf(df["alpha"].iloc[0])
    assert math.isnan(df["value"].iloc[1]) and df["metric"].tolist() == ["acc", "acc"]
    assert df["modality"].tolist() == ["text", "none"]


def test_a_table_from_before_the_modality_column_reads_with_it_inferred(tmp_path: Path) -> None:
    clean = row(OLD_COLUMNS, eval_noise="clean", severity="", alpha="")
    df = read_results(write(tmp_path, "\n".join([",".join(OLD_COLUMNS), row(OLD_COLUMNS),
                                                 clean]) + "\n"))
    assert list(df.columns) == RESULT_COLUMNS and df["modality"].tolist() == ["text", "none"]
    frame = pd.DataFrame([row(OLD_COLUMNS).split(",")], columns=OLD_COLUMNS)
    assert validate_results(frame)["modality"].tolist() == ["text"]


def test_header_only_is_an_empty_table_and_an_empty_report(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\n")
    df = read_results(path)
    assert df.empty and list(df.columns) == RESULT_COLUMNS and df["seed"].dtype == np.int64
    result = build_report_info(path, tmp_path / "report", "md")
    assert result.outcomes == []
    assert "no rows yet: nothing to report" in result.index.read_text(encoding="utf-8")


def test_missing_empty_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(AnbenchError, match="no results file at"):
        read_results(tmp_path / "absent.csv")
    rejected(write(tmp_path, b""), "is empty")
    rejected(write(tmp_path, " \n\n"), "is empty")
    rejected(write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "binary file")
    rejected(write(tmp_path, HEADER.encode() + b"\n" + ROW.encode("utf-16")), "binary file")
    rejected(write(tmp_path, HEADER.encode() + b"\ntoy,d\xe9t,mini\n"), "not UTF-8")


def test_garbage_and_wrong_columns(tmp_path: Path) -> None:
    rejected(write(tmp_path, "hello world\nthis is, not a table\n"), "not a results table")
    no_alpha = HEADER.replace(",alpha", "")
    rejected(write(tmp_path, no_alpha + "\n"), r"lacks column\(s\) alpha")
    rejected(write(tmp_path, HEADER + ",seed\n"), "seed more than once")


def test_malformed_rows(tmp_path: Path) -> None:
    n = len(RESULT_COLUMNS)
    rejected(write(tmp_path, f"{HEADER}\n{ROW}\n{ROW},extra\n"), f"line 3 has {n + 1} field")
    rejected(write(tmp_path, f"{HEADER}\n{ROW.rsplit(',', 1)[0]}\n"), f"line 2 has {n - 1} field")
    rejected(write(tmp_path, f'{HEADER}\n"{ROW}\n'), "line 2 has 1 field")  # open quote
    huge = ROW.replace("dtd", "x" * 200_000)
    rejected(write(tmp_path, f"{HEADER}\n{huge}\n"), "not a well-formed CSV")


@pytest.mark.parametrize(("column", "bad", "match"), [
    ("seed", "abc", "column 'seed' must hold whole numbers; line 3 has 'abc'"),
    ("seed", "1.5", "column 'seed' must hold whole numbers"),
    ("shots", "", "column 'shots' must hold whole numbers; line 3 has ''"),
    ("seed", "9" * 400, r"column 'seed' must hold whole numbers; line 3 has '9{40}…'"),
    ("value", "high", "column 'value' must hold numbers"),
    ("severity", "0.3.1", "column 'severity' must hold numbers"),
    ("alpha", "1_0", "column 'alpha' must hold numbers"),
    ("method", "", "column 'method' is empty at line 3"),
    ("dataset", "   ", "column 'dataset' is empty at line 3"),
])
def test_wrong_values_name_column_and_line(tmp_path: Path, column: str, bad: str,
                                           match: str) -> None:
    fields = ROW.split(",")
    fields[RESULT_COLUMNS.index(column)] = bad
    rejected(write(tmp_path, "\n".join([HEADER, ROW, ",".join(fields)]) + "\n"), match)


def test_frames_in_memory_are_checked_alike() -> None:
    good = pd.DataFrame([ROW.split(",")], columns=RESULT_COLUMNS)
    typed = good.astype({"seed": float, "shots": int, "value": float})  # 1.0 is seed 1
    assert validate_results(typed)["seed"].tolist() == [1]
    bad = good.assign(seed="one")
    with pytest.raises(AnbenchError, match="column 'seed' must hold whole numbers; data row 1"):
        validate_results(bad)


def test_cli_report_on_a_binary_results_file(tmp_path: Path) -> None:
    suite = tmp_path / "toy"
    suite.mkdir()
    (suite / "results.csv").write_bytes(os.urandom(256) + b"\x00")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "anbench.cli", "report", "--suite", "toy",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "results.csv is a binary file" in lines[0]
