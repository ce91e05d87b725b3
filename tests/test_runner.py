"""`anbench run` end to end through the CLI, on a tiny open_clip model and generated images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anbench import metrics

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "tests" / "plugins" / "tiny_suite.py")
# One seed unless a test names others (bench.yaml's default study has three).
FAST = ["--seeds", "1", "--set", "run.noise_draws=3", "--set", "methods.coop.epochs=2",
        "--set", "methods.dapt.epochs=2",
        "--set", "methods.anprompt.epochs=1", "--set", "methods.anprompt.noise_samples=2"]


def anbench(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"anbench {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_run(out: Path, *extra: str, methods: str = "zeroshot,coop,dapt,anprompt",
             noise: str = "drop,wsp") -> list[str]:
    return ["run", "--plugin", PLUGIN, "--backbone", "tiny-clip", "--datasets", "tiny-shapes",
            "--methods", methods, "--noise", noise, "--out", str(out), "--quiet", *FAST, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    anbench(*tiny_run(out), cwd=REPO)
    return out / "default"


def test_results_table_has_every_role(finished: Path):
    table = pd.read_csv(finished / "results.csv")
    assert list(table.columns[:11]) == ["suite", "dataset", "backbone", "method", "train_noise",
                                        "shots", "seed", "split", "eval_noise", "severity",
                                        "alpha"]
    assert set(table.method) == {"zeroshot", "coop", "dapt", "anprompt"}
    assert set(table[table.method == "anprompt"].train_noise) == {"drop", "wsp"}
    assert set(table[table.method == "dapt"].train_noise) == {"none"}
    assert set(table.eval_noise) == {"clean", "drop", "wsp"}
    assert {"base", "new", "base-new"} <= set(table.split)
    assert set(table.metric) == {"acc", "ts", "lpr", "as", "hm", "acc_std", "ts_std",
                                 "lpr_std", "as_std", "hm_std"}
    assert not table.duplicated(["method", "train_noise", "seed", "split", "eval_noise",
                                 "severity", "metric"]).any()
    for name in ("config.yaml", "manifest.json", "report/index.md"):
        assert (finished / name).is_file()


def test_metrics_recompute_from_stored_logits(finished: Path):
    table = pd.read_csv(finished / "results.csv")
    cell = finished / "cells/tiny-clip/tiny-shapes/dapt/none/shots16-seed1"
    arrays = np.load(cell / "arrays.npz")
    rows = table[(table.method == "dapt") & (table.eval_noise == "drop")]
    for split in ("base", "new"):
        labels = arrays[f"{split}/labels"]
        clean, noisy = arrays[f"{split}/logits/clean"], arrays[f"{split}/logits/drop@0.3"]
        assert noisy.shape == (3, *clean.shape)  # three noise draws
        got = rows[rows.split == split].set_index("metric").value
        lpr = [metrics.logit_preservation_rate(clean, draw) for draw in noisy]
        shift = [metrics.accuracy_shift(clean, draw, labels) for draw in noisy]
        assert got["lpr"] == pytest.approx(np.mean(lpr))
        assert got["lpr_std"] == pytest.approx(np.std(lpr, ddof=1))
        assert got["as"] == pytest.approx(np.mean(shift))
        assert got["as_std"] == pytest.approx(np.std(shift, ddof=1))
        assert got["lpr"] == pytest.approx(100 * np.mean(clean.argmax(1) == noisy.argmax(2)))
        clean_text, noisy_text = arrays[f"{split}/text/clean"], arrays[f"{split}/text/drop@0.3"]
        shifts = [metrics.text_shift(clean_text, draw) for draw in noisy_text]
        assert got["ts"] == pytest.approx(np.mean(shifts))
    meta = json.loads((cell / "meta.json").read_text())
    draws = meta["sentences"]["base"]["drop@0.3"]
    assert len(draws) == 3 and len({tuple(d) for d in draws}) > 1  # independent draws


def test_rerun_skips_complete_cells(finished: Path):
    markers = sorted(finished.glob("cells/**/COMPLETE"))
    before = {m: m.stat().st_mtime_ns for m in markers}
    proc = anbench(*tiny_run(finished.parent), cwd=REPO)
    assert "0 cells run, 5 already complete" in proc.stderr + proc.stdout
    assert {m: m.stat().st_mtime_ns for m in markers} == before
    # switches that only change speed do not redo finished cells
    proc = anbench(*tiny_run(finished.parent), "--set", "methods.anprompt.cache_prefix=false",
                   "--set", "methods.anprompt.frozen_qkv=false", cwd=REPO)
    assert "0 cells run, 5 already complete" in proc.stderr + proc.stdout
    assert {m: m.stat().st_mtime_ns for m in markers} == before


def test_changed_method_params_redo_cells(tmp_path: Path):
    anbench(*tiny_run(tmp_path, methods="coop", noise="drop"), cwd=REPO)
    proc = anbench(*tiny_run(tmp_path, "--set", "methods.coop.lr=0.01", methods="coop",
                             noise="drop"), cwd=REPO)
    assert "1 cells run, 0 already complete" in proc.stderr + proc.stdout


def test_dry_run_lists_cells_without_training(tmp_path: Path):
    proc = anbench(*tiny_run(tmp_path), "--dry-run", cwd=REPO)
    assert "5 cells" in proc.stdout and "to run" in proc.stdout
    assert not (tmp_path / "default" / "cells").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "nosuch"], "unknown method 'nosuch'; known: anprompt"),
    (["--noise", "nosuch"], "unknown perturbation 'nosuch'; known: "),
    (["--datasets", "nosuch"], "unknown dataset 'nosuch'; known:"),
    (["--seeds", "abc"], "run.seeds"),
    (["--shots", "0"], "run.shots"),
    (["--datasets", "caltech101"], "caltech101"),
    (["--config", "/nonexistent/bench.yaml"], "cannot read config file"),
    (["--device", "cuda"], "cuda"),
])
def test_bad_input_fails_fast(tmp_path: Path, args: list[str], message: str):
    if args[:2] == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    proc = anbench("run", "--out", str(tmp_path), *args, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr
    assert not (tmp_path / "default" / "cells").exists()


def test_sigkill_mid_cell_then_resume(tmp_path: Path):
    args = tiny_run(tmp_path, methods="zeroshot,anprompt", noise="wsp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anbench.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "default" / "cells" / "tiny-clip" / "tiny-shapes"
    first = cells / "zeroshot" / "none" / "shots16-seed1" / "COMPLETE"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the first cell never completed"
    # The runner marks a cell RUNNING when it starts it: kill inside the anprompt cell.
    running = cells / "anprompt" / "wsp" / "shots16-seed1" / "RUNNING"
    while not running.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert running.exists(), "the anprompt cell never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    second = cells / "anprompt" / "wsp" / "shots16-seed1" / "COMPLETE"
    assert not second.exists()
    stamp = first.stat().st_mtime_ns
    out = anbench(*args, cwd=REPO)
    assert "1 cells run, 1 already complete" in out.stderr + out.stdout
    assert first.stat().st_mtime_ns == stamp and second.exists()
    table = pd.read_csv(tmp_path / "default" / "results.csv")
    assert not table.duplicated().any()
    assert set(table.method) == {"zeroshot", "anprompt"}


def test_two_runs_of_one_suite_at_once(tmp_path: Path):
    args = tiny_run(tmp_path, methods="zeroshot,coop,dapt", noise="drop")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "anbench.cli", *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    table = pd.read_csv(tmp_path / "default" / "results.csv")
    assert not table.duplicated().any()
    counts = table[(table.metric == "acc") & (table.eval_noise == "clean")].groupby(
        ["method", "split"]).size()
    assert (counts == 1).all() and len(counts) == 6
