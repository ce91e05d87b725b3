"""First use on a fresh machine: `anbench run` with an empty cache builds the `mini` backbone
itself (with its progress bar), then trains, evaluates and reports; no separate build command.

The mini configuration is cut to seconds through `--set backbones.mini.*` (a 1-layer, 32-wide
ViT at 16 px trained for 20 steps on the digits only); everything else is the real CLI path.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from anbench.backbones import mini_cache
from anbench.backbones.builtin.mini import MiniBackbone
from anbench.backbones.mini_params import MiniParams

REPO = Path(__file__).resolve().parents[1]
# threads=1: a 2-thread build on a busy 2-core machine crawls (each step waits for a free core)
TINY_MINI = dict(datasets=["digits"], image_size=16, width=32, layers=1, head_width=16,
                 steps=20, batch_size=32, warmup_steps=3, threads=1)


def _sets() -> list[str]:
    args = []
    for key, value in TINY_MINI.items():
        text = "[" + ",".join(value) + "]" if isinstance(value, list) else str(value)
        args += ["--set", f"backbones.mini.{key}={text}"]
    return args + ["--set", "methods.coop.epochs=2"]


def _run(cache: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    args = ["run", "--backbone", "mini", "--datasets", "digits", "--methods", "zeroshot,coop",
            "--noise", "drop", "--shots", "4", "--seeds", "1", "--out", str(out), *_sets()]
    return subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_first_run_builds_mini_inside_run(tmp_path: Path):
    cache, out = tmp_path / "cache", tmp_path / "runs"
    cache.mkdir()
    proc = _run(cache, out, cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"

    # built inside the run, with its progress bar, into the folder its configuration keys
    assert "building the mini backbone (20 steps, batch 32)" in proc.stderr
    assert "building mini backbone" in proc.stderr and "20/20" in proc.stderr
    folder = mini_cache.cache_path(MiniParams(**TINY_MINI), cache)
    record = json.loads((folder / "config.json").read_text())
    assert (folder / "visual.safetensors").is_file()
    assert record["params"]["steps"] == 20 and record["params"]["width"] == 32
    assert set(record["zeroshot_test_accuracy"]) == {"digits"}

    suite = out / "default"
    manifest = json.loads((suite / "manifest.json").read_text())
    assert manifest["backbone"]["weights_hash"] == record["weights_hash"]  # the run used it
    table = pd.read_csv(suite / "results.csv")
    assert set(table["backbone"]) == {"mini"} and set(table["dataset"]) == {"digits"}
    assert set(table["method"]) == {"zeroshot", "coop"}
    assert {"clean", "drop"} <= set(table["eval_noise"])
    acc = table[(table["metric"] == "acc") & (table["eval_noise"] == "clean")]
    assert set(acc["split"]) >= {"base", "new"}
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in acc["value"])
    assert (suite / "report" / "index.md").is_file()

    # the next command finds it built (what `anbench run` checks before loading)
    ok, message = MiniBackbone(MiniParams(**TINY_MINI)).status(cache)
    assert ok and str(folder) in message
    assert len(list((cache / "backbones").glob("mini-*/config.json"))) == 1
