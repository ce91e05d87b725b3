"""Grid benchmark: the same `anbench run` with fused cell groups on and off, in one run.

    .venv/bin/python bench/fusion.py                       # the default grid, all noise, 1 seed
    .venv/bin/python bench/fusion.py --seeds 1,2,3         # all three default seeds (hours)
    .venv/bin/python bench/fusion.py --device cuda --backbone vit-b-16 \\
        --set backbones.vit-b-16.pretrained=null ...       # as bench/gpu_check.sh runs it

Runs `anbench run --methods anprompt,dapt --noise all` (by default on mini's two datasets) twice
into two temporary suites, `run.fuse_cells=true` first and `false` second (a warm cache can only
help the second), prints each wall time and their ratio, then checks that the two results.csv
agree to 1e-5 on every row and the trained prompts of every cell to 1e-5. Exit status 1 when
they do not. Besides wall time it prints each run's CPU time (user + system, its decoding
workers included): with one torch thread per run (`run.threads`), CPU time counts the work
alone, while wall time on a shared machine also counts whatever else ran meanwhile.

`--noise all`: ANPrompt trains once per text perturbation and `image-feature-mix`, and every cell
is evaluated on every text and image perturbation. Extra arguments after `--` go to both runs
(e.g. `-- --set run.noise_draws=3`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run(args: argparse.Namespace, out: Path, fuse: bool, extra: list[str]
        ) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run and its decoding workers)."""
    command = [sys.executable, "-m", "anbench.cli", "run", "--methods", args.methods,
               "--noise", args.noise, "--datasets", args.datasets, "--seeds", args.seeds,
               "--out", str(out), "--quiet", "--set", f"run.fuse_cells={str(fuse).lower()}"]
    for name in ("backbone", "device", "shots", "data_root"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    for plugin in args.plugin:
        command += ["--plugin", plugin]
    for item in args.set:
        command += ["--set", item]
    command += extra
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"anbench run (fuse_cells={fuse}) failed with status "
                         f"{proc.returncode}")
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        if "cells run" in line:
            print(f"  {'fused' if fuse else 'alone'}: {line.strip()}", flush=True)
    return seconds, cpu


def compare_rows(fused: Path, alone: Path) -> tuple[int, float, list[str]]:
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(fused / "results.csv"), pd.read_csv(alone / "results.csv")
    keys = [c for c in a.columns if c != "value"]
    merged = a.merge(b, on=keys, how="outer", suffixes=("_fused", "_alone"), indicator=True)
    problems = []
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched or len(a) != len(b):
        problems.append(f"{unmatched} rows in one results.csv only ({len(a)} vs {len(b)})")
    both = merged[merged["_merge"] == "both"]
    fa, fb = both["value_fused"].to_numpy(float), both["value_alone"].to_numpy(float)
    same_nan = np.isnan(fa) == np.isnan(fb)
    diff = np.where(np.isnan(fa) & np.isnan(fb), 0.0, np.abs(fa - fb))
    worst = float(np.nanmax(diff)) if len(diff) else 0.0
    if not same_nan.all():
        problems.append(f"{int((~same_nan).sum())} rows are NaN in one run only")
    if not worst <= TOLERANCE:
        columns = ["method", "train_noise", "split", "eval_noise", "metric", "value_fused",
                   "value_alone"]
        bad = both[diff > TOLERANCE].head(5)[columns]
        problems.append(f"max |difference| {worst:.2e} > {TOLERANCE:g}, e.g.\n{bad}")
    return len(both), worst, problems


def compare_prompts(fused: Path, alone: Path) -> tuple[int, float, list[str]]:
    import torch

    cells, worst, problems = 0, 0.0, []
    for path in sorted(fused.glob("cells/**/prompts.pt")):
        other = alone / path.relative_to(fused)
        if not other.is_file():
            problems.append(f"{path.parent.relative_to(fused)}: no prompts in the unfused run")
            continue
        a, b = torch.load(path), torch.load(other)
        if a.keys() != b.keys():
            problems.append(f"{path.parent.relative_to(fused)}: different prompt tensors")
            continue
        cells += 1
        worst = max([worst] + [float((a[k] - b[k]).abs().max()) for k in a])
    if not worst <= TOLERANCE:
        problems.append(f"trained prompts differ by {worst:.2e} > {TOLERANCE:g}")
    return cells, worst, problems


def cell_seconds(root: Path) -> dict[str, dict[str, float]]:
    """Mean seconds of a cell per method, and of its training and evaluation (meta.json)."""
    sums: dict[str, dict[str, float]] = {}
    for meta_path in root.glob("cells/**/meta.json"):
        meta = json.loads(meta_path.read_text())
        method = meta_path.relative_to(root / "cells").parts[2]
        entry = sums.setdefault(method, {"cells": 0, "seconds": 0.0, "train": 0.0,
                                         "evaluate": 0.0})
        entry["cells"] += 1
        entry["seconds"] += float(meta.get("seconds", 0.0))
        for part in ("train", "evaluate"):
            entry[part] += float(meta.get("timing", {}).get(part, 0.0))
    return {method: {k: (v / e["cells"] if k != "cells" else v) for k, v in e.items()}
            for method, e in sums.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="anprompt,dapt")
    parser.add_argument("--noise", default="all")
    parser.add_argument("--datasets", default="fashion-mnist,digits")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--shots", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--plugin", action="append", default=[])
    parser.add_argument("--set", action="append", default=[], help="dotted.key=value, both runs")
    parser.add_argument("--out", default=None, help="keep both suites here (default: a temp "
                        "folder, removed at the end)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    print(f"grid: --methods {args.methods} --noise {args.noise} --datasets {args.datasets} "
          f"--seeds {args.seeds}{' ' + ' '.join(extra) if extra else ''}; load average "
          f"{load:.1f} on {cpus} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="anbench-fusion-") as temp:
        base = Path(args.out) if args.out else Path(temp)
        fused_out, alone_out = base / "fused", base / "alone"
        fused_s, fused_cpu = run(args, fused_out, True, extra)
        print(f"fused (run.fuse_cells=true):  {fused_s:8.1f} s wall, {fused_cpu:8.1f} s CPU",
              flush=True)
        alone_s, alone_cpu = run(args, alone_out, False, extra)
        print(f"alone (run.fuse_cells=false): {alone_s:8.1f} s wall, {alone_cpu:8.1f} s CPU",
              flush=True)
        ratio, cpu_ratio = alone_s / fused_s, alone_cpu / fused_cpu
        # CPU time counts the work whatever else runs on the machine; wall time is what a user
        # waits, and on a shared machine it also measures the other jobs.
        print(f"ratio (alone / fused): {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time")
        fused_root, alone_root = fused_out / "default", alone_out / "default"
        rows, row_diff, problems = compare_rows(fused_root, alone_root)
        cells, prompt_diff, prompt_problems = compare_prompts(fused_root, alone_root)
        problems += prompt_problems
        print(f"results.csv: {rows} rows, max |fused - alone| {row_diff:.1e}; prompts of "
              f"{cells} cells, max |fused - alone| {prompt_diff:.1e} (tolerance "
              f"{TOLERANCE:g})")
        per_method: dict[str, Any] = {"fused": cell_seconds(fused_root),
                                      "alone": cell_seconds(alone_root)}
        for method in sorted(per_method["alone"]):
            f, a = per_method["fused"].get(method, {}), per_method["alone"][method]
            print(f"  {method}: {int(a['cells'])} cells, mean per cell alone {a['seconds']:.1f} s "
                  f"(train {a['train']:.1f}, evaluate {a['evaluate']:.1f}); fused "
                  f"{f.get('seconds', float('nan')):.1f} s (train {f.get('train', 0):.1f}, "
                  f"evaluate {f.get('evaluate', 0):.1f})")
        print(f"load average now {os.getloadavg()[0]:.1f} on {cpus} CPUs")
        for problem in problems:
            print(f"MISMATCH: {problem}")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "fused_s": fused_s, "alone_s": alone_s, "ratio": ratio,
                "fused_cpu_s": fused_cpu, "alone_cpu_s": alone_cpu, "cpu_ratio": cpu_ratio,
                "rows": rows,
                "row_diff": row_diff, "prompt_cells": cells, "prompt_diff": prompt_diff,
                "per_method": per_method, "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
