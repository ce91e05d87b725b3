"""The Python API: the README's notebook example, run as written on the tiny suite, and the
handles it returns checked against what the store and the metrics say independently."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import anbench
from anbench import metrics
from anbench.api import load, perturb, run_sets
from anbench.config import load_config
from anbench.registry import AnbenchError
from tests.suite_fixtures import REPO, synthetic_suite, tiny_bench_yaml


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the README example in a fresh folder, with bench.yaml pointing at the tiny suite."""
    where = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        mp.setenv("ANBENCH_BENCH_YAML", str(tiny_bench_yaml(where / "bench.yaml")))
        mp.setenv("ANBENCH_CACHE", str(where / "cache"))
        scope: dict = {}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(readme_example(), "README.md", "exec"), scope)
    scope["printed"] = printed.getvalue()
    scope["where"] = where
    return scope


def test_readme_example_runs(notebook: dict):
    suite, df = notebook["suite"], notebook["df"]
    assert isinstance(suite, anbench.Suite)
    assert suite.root == notebook["where"] / "runs" / "notebook"
    assert set(df["method"]) == {"coop", "dapt"}
    assert notebook["logits"].ndim == 2
    assert (suite.root / "report" / "index.html").is_file()
    assert (suite.root / "report" / "index.md").is_file()
    assert "index.html" in notebook["printed"]


def test_results_columns_are_typed(notebook: dict):
    df = notebook["df"]
    assert df["shots"].dtype == np.int64 and df["seed"].dtype == np.int64
    for column in ("severity", "alpha", "value"):
        assert df[column].dtype == np.float64
    for column in ("suite", "dataset", "method", "split", "eval_noise", "metric"):
        assert pd.api.types.is_string_dtype(df[column])
    clean = df[df["eval_noise"] == "clean"]
    assert clean["severity"].isna().all()
    # the same table as results.csv, value for value
    raw = pd.read_csv(notebook["suite"].root / "results.csv")
    assert len(raw) == len(df)
    np.testing.assert_allclose(raw["value"].to_numpy(), df["value"].to_numpy(), rtol=1e-12,
                               equal_nan=True)


def test_cell_accessors_agree_with_stored_results(notebook: dict):
    suite, cell = notebook["suite"], notebook["cell"]
    assert cell.key.method == "dapt" and cell.current
    df = suite.results
    for split in ("base", "new"):
        per_class = cell.per_class_accuracy(split)
        clean = per_class[per_class["condition"] == "clean"]
        overall = np.average(clean["accuracy"], weights=clean["images"])
        stored = df[(df.method == "dapt") & (df.split == split) & (df.eval_noise == "clean")
                    & (df.metric == "acc")]["value"].item()
        assert overall == pytest.approx(stored, abs=1e-9)
        noisy = per_class[per_class["condition"] == "drop@0.3"]
        stored = df[(df.method == "dapt") & (df.split == split) & (df.eval_noise == "drop")
                    & (df.metric == "acc")]["value"].item()
        assert np.average(noisy["accuracy"], weights=noisy["images"]) == \
            pytest.approx(stored, abs=1e-9)
    sentences = cell.sentences("base")
    clean = sentences[sentences["condition"] == "clean"]
    assert list(clean["sentence"]) == [f"a photo of a {c}." for c in cell.classes("base")]
    assert sorted(sentences[sentences["condition"] == "drop@0.3"]["draw"].unique()) == [0, 1]
    history = cell.history
    meta = json.loads((cell.directory / "meta.json").read_text())
    assert len(history) == len(meta["history"]) > 0
    assert list(history["step"]) == list(range(1, len(history) + 1))
    assert cell.params == meta["method_params"]
    arrays = cell.arrays
    labels, logits = arrays["base/labels"], arrays["base/logits/clean"]
    assert metrics.accuracy(logits, labels) == pytest.approx(
        df[(df.method == "dapt") & (df.split == "base") & (df.eval_noise == "clean")
           & (df.metric == "acc")]["value"].item())


def test_cell_lookup_names_what_matches(notebook: dict):
    suite = notebook["suite"]
    with pytest.raises(AnbenchError, match="2 cells match seed=1: .*coop.*dapt|2 cells match"):
        suite.cell(seed=1)
    with pytest.raises(AnbenchError, match="no complete, current cell matches method=nosuch"):
        suite.cell(method="nosuch")
    table = suite.cells()
    assert set(table["method"]) == {"coop", "dapt"} and table["current"].all()


def test_load_accepts_the_results_file_and_rejects_what_is_not_a_suite(notebook: dict,
                                                                      tmp_path: Path):
    suite = notebook["suite"]
    assert load(suite.root / "results.csv").root == suite.root
    with pytest.raises(AnbenchError, match="no suite at"):
        load(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(AnbenchError, match="is not a suite folder"):
        load(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnbenchError, match="not an anbench suite folder"):
        load(tmp_path / "empty")


def test_damaged_results_file_is_one_error_line(tmp_path: Path):
    store = synthetic_suite(tmp_path / "s")
    store.results_path.write_bytes(b"\x00\x01binary")
    with pytest.raises(AnbenchError, match="binary file"):
        load(store.root).results  # noqa: B018


def test_run_arguments_layer_like_the_command_line(tmp_path: Path):
    bench = tiny_bench_yaml(tmp_path / "bench.yaml")
    sets = run_sets(methods="coop,dapt", seeds=[3, 4], shots=8, suite="1",
                    sets=["run.shots=4", "methods.coop.lr=0.5"],
                    options={"tensorboard": True, "methods.coop.epochs": 7})
    cfg = load_config(None, sets, bench_yaml=bench)
    assert cfg.run.methods == ["coop", "dapt"] and cfg.run.seeds == [3, 4]
    assert cfg.run.shots == 8  # keyword arguments beat `sets`
    assert cfg.run.suite == "1" and cfg.run.tensorboard is True
    coop = cfg.plugin_params("methods", "coop")
    assert coop.epochs == 7 and coop.lr == 0.5
    with pytest.raises(AnbenchError, match="run.nosuch"):
        load_config(None, run_sets(options={"nosuch": 1}), bench_yaml=bench)
    with pytest.raises(AnbenchError, match="not one string"):
        run_sets(sets="run.shots=4")


def test_dry_run_returns_none_and_writes_no_cells(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANBENCH_BENCH_YAML", str(tiny_bench_yaml(tmp_path / "bench.yaml")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert anbench.run(methods="coop", noise="drop", out=tmp_path / "runs",
                           dry_run=True) is None
    assert "to run" in printed.getvalue()
    assert not (tmp_path / "runs" / "default" / "cells").exists()


def test_perturb_is_seeded_and_validated():
    first = perturb("a photo of a tabby cat with dark stripes.", "drop,shuffle", seed=3,
                    severity=0.5)
    again = perturb("a photo of a tabby cat with dark stripes.", ["drop", "shuffle"], seed=3,
                    severity=0.5)
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == ["noise", "severity", "text"]
    assert list(first["noise"]) == ["drop", "shuffle"]
    assert (first["severity"] == 0.5).all()
    assert all("cat" in t for t in first["text"])  # class name protected
    identity = perturb("a photo of a cat.", "drop", severity=0)
    assert identity["text"].item() == "a photo of a cat."
    sweep = perturb("a photo of a cat.", "drop", severity=[0.1, 0.9])
    assert list(sweep["severity"]) == [0.1, 0.9]
    with pytest.raises(AnbenchError, match="severity"):
        perturb("a photo of a cat.", "drop", severity=-1)
    with pytest.raises(AnbenchError, match="nosuch"):
        perturb("a photo of a cat.", "nosuch")
    with pytest.raises(AnbenchError, match="text must be a string"):
        perturb(b"bytes", "drop")  # type: ignore[arg-type]


def test_report_rejects_unknown_formats_before_writing(tmp_path: Path):
    store = synthetic_suite(tmp_path / "s")
    with pytest.raises(AnbenchError, match="unknown report format"):
        load(store.root).report(formats="md,docx")
    assert not (store.root / "report").exists()
