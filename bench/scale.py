"""Scale benchmark: a synthetic CoOp-layout dataset of a given size through `run_cell`.

    .venv/bin/python bench/scale.py                                   # 2,000 and 20,000 images
    .venv/bin/python bench/scale.py --test-images 20000 --classes 400 --backbone vit-b-16 \
        --device cuda                                                 # on a GPU
    .venv/bin/python bench/scale.py --quick                           # 300 images, seconds

For every size it writes a Caltech101-layout dataset (`caltech-101/101_ObjectCategories/` +
`split_zhou_Caltech101.json`: `--classes` classes, `--shots` training and `--test-images` test
JPEGs of `--resolution` px) under a temporary folder, then runs each method's cell in a fresh
child process (so peak memory is per size) with a fresh cache, and prints per cell: load, train
and evaluate seconds, test images per second of evaluation, and peak resident memory of the
main process and of the largest decoding worker (`ru_maxrss`, cumulative over the child's cells; a
forked worker's RSS counts the pages it shares with the main process) and the peak proportional
set size of the main process and its workers together (sampled from /proc every 0.2 s).

Backbones: `scale-vit-224` (default): a random open_clip CLIP whose vision tower takes 224 px
(patch 32, width 64, 2 layers): cheap to run on a CPU, but its decoded images are full size
(602 KB each as float32, 12 GB for 20,000). `mini` (the embedded backbone, 28 px) and
`vit-b-16` (random weights unless `--set backbones.vit-b-16.pretrained=...`) also work.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from anbench.backbones.base import Backbone, BackboneParams, LoadedBackbone  # noqa: E402
from anbench.registry import BACKBONES  # noqa: E402

SPLIT_FILE = "split_zhou_Caltech101.json"


@BACKBONES.register("scale-vit-224", description="random open_clip CLIP with a small 224 px "
                    "ViT (benchmarks only)")
class ScaleVit224(Backbone):
    """A random CLIP whose images are 224 px: decoding costs as much as ViT-B/16's."""

    class Params(BackboneParams):
        seed: int = 0

    def __init__(self, params: Any = None):
        self.params = params or self.Params()

    def status(self, cache_dir: Path) -> tuple[bool, str]:
        return True, "built in memory (random weights)"

    def load(self, cache_dir: Path, progress: bool = True, device: str = "cpu"
             ) -> LoadedBackbone:
        import open_clip
        import torch
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        from anbench.backbones.base import freeze, hash_state_dict
        from anbench.data.images import eval_transform

        torch.manual_seed(self.params.seed)
        model = freeze(open_clip.CLIP(
            embed_dim=64,
            vision_cfg=CLIPVisionCfg(image_size=224, patch_size=32, width=64, layers=2,
                                     head_width=32),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2,
                                 layers=2)))
        transform = eval_transform(224, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        model.to(device)
        return LoadedBackbone("scale-vit-224", model, open_clip.get_tokenizer("ViT-B-32"),
                              transform, transform, hash_state_dict(model),
                              "small 224 px ViT (random weights)")


def write_dataset(root: Path, classes: int, shots: int, test_images: int, resolution: int,
                  seed: int = 0) -> Path:
    """A Caltech101-layout dataset under `root` (the data root); returns the data root."""
    rng = np.random.default_rng(seed)
    base = root / "caltech-101"
    images = base / "101_ObjectCategories"
    splits: dict[str, list[list[Any]]] = {"train": [], "val": [], "test": []}
    counts = {"train": shots, "val": 1}
    per_class_test = np.full(classes, test_images // classes)
    per_class_test[: test_images % classes] += 1
    for label in range(classes):
        name = f"class_{label:04d}"
        (images / name).mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, size=3)
        for part, count in (*counts.items(), ("test", int(per_class_test[label]))):
            for i in range(count):
                # a class colour and a random bright square: small, cheap JPEGs
                pixels = np.empty((resolution, resolution, 3), dtype=np.uint8)
                pixels[:] = colour
                size = resolution // 4
                top, left = rng.integers(0, resolution - size, size=2)
                pixels[top:top + size, left:left + size] = 255
                relpath = f"{name}/{part}_{i:05d}.jpg"
                Image.fromarray(pixels).save(images / relpath, quality=85)
                splits[part].append([relpath, label, name])
    (base / SPLIT_FILE).write_text(json.dumps(splits))
    return root


def peak_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest finished child."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process (shared pages split among their sharers)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class PssSampler:
    """Samples this process + its children (decoding workers) every 0.2 s: the peak of their
    summed PSS is the memory the cell really holds (fork shares pages, RSS counts them twice)."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.2):
            try:
                children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
            except OSError:
                children = []
            total = _pss_kb(me) + sum(_pss_kb(int(pid)) for pid in children)
            self.peak_kb = max(self.peak_kb, total)


def run_child(args: argparse.Namespace) -> None:
    """Run each method's cell on the dataset at `--data-root`; one JSON line per cell."""
    from anbench.cell import CellEnvironment, resolve_cell, run_cell
    from anbench.config import BenchConfig, RunSection
    from anbench.store import CellKey

    methods = args.methods.split(",")
    run = RunSection(backbone=args.backbone, datasets=["caltech101"], data_root=args.data_root,
                     cache_dir=args.cache_dir, device=args.device, noise_draws=args.noise_draws,
                     shots=args.shots, workers=args.workers, quiet=True)
    extra: dict[str, Any] = {"methods": {m: {"epochs": args.epochs} for m in methods
                                         if m != "zeroshot"}}
    if args.backbone == "vit-b-16":
        extra["backbones"] = {"vit-b-16": {"pretrained": args.pretrained}}
    config = BenchConfig(run=run, **extra)
    sampler = PssSampler() if Path("/proc/self/smaps_rollup").exists() else None
    started = time.time()
    env = CellEnvironment.load(config, progress=False)
    print(json.dumps({"event": "backbone", "seconds": round(time.time() - started, 2)}),
          flush=True)
    for method in methods:
        key = CellKey(args.backbone, "caltech101", method, "none", args.shots, 1)
        spec = resolve_cell(config, key, args.noise.split(","), env.backbone.weights_hash)
        result = run_cell(spec, env)
        timing = result.meta["timing"]
        data = env.data("caltech101", 1, args.shots)
        tested = sum(len(images) for images in data.images.values())
        own, worker = peak_mb()
        print(json.dumps({
            "event": "cell", "method": method, "test_images": tested,
            "train_images": len(data.tensors["train"][0]), **timing,
            "images_per_s": round(tested / max(timing["evaluate"], 1e-9), 1),
            "peak_mb": round(own), "worker_peak_mb": round(worker),
            "peak_pss_mb": round(sampler.peak_kb / 1024) if sampler else None,
            "accuracy": {k: round(v, 2) for k, v in result.accuracies.items()},
        }), flush=True)


def measure(args: argparse.Namespace, test_images: int, folder: Path) -> list[dict[str, Any]]:
    started = time.time()
    write_dataset(folder / "data", args.classes, args.shots, test_images, args.resolution)
    written = time.time() - started
    command = [sys.executable, str(Path(__file__).resolve()), "--child",
               "--data-root", str(folder / "data"), "--cache-dir", str(folder / "cache"),
               *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("backbone", "methods", "noise", "noise_draws", "shots", "epochs",
                          "device", "pretrained") and v is not None],
               *([f"--workers={args.workers}"] if args.workers is not None else [])]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"scale child failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cells = [row for row in rows if row["event"] == "cell"]
    for row in cells:
        row["written_s"] = round(written, 1)
    return cells


def table(rows: list[dict[str, Any]], backbone: str, resolution: int) -> str:
    lines = [f"backbone {backbone}, {resolution} px images; peak memory is cumulative over the "
             "cells of one size (one process)", "",
             "| test images | method | load s | train s | evaluate s | images/s | peak RSS MB "
             "| largest worker RSS MB | peak PSS MB, main + workers |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['test_images']:,} | {row['method']} | {row['load']:.1f} | "
                     f"{row['train']:.1f} | {row['evaluate']:.1f} | {row['images_per_s']:,.0f} "
                     f"| {row['peak_mb']:,} | {row['worker_peak_mb']:,} | "
                     f"{row.get('peak_pss_mb') or 'n/a'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-images", default="2000,20000",
                        help="comma-separated test-set sizes, one run each")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--backbone", default="scale-vit-224")
    parser.add_argument("--pretrained", default=None, help="vit-b-16 weights (default random)")
    parser.add_argument("--methods", default="zeroshot,coop,dapt")
    parser.add_argument("--noise", default="drop")
    parser.add_argument("--noise-draws", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="one size of 300 images, 10 classes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return
    if args.quick:
        args.test_images, args.classes = "300", 10
    sizes = [int(size) for size in args.test_images.split(",")]
    rows: list[dict[str, Any]] = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="anbench-scale-") as folder:
            cells = measure(args, size, Path(folder))
        for row in cells:
            print(json.dumps(row), flush=True)
        rows += cells
    print()
    print(table(rows, args.backbone, args.resolution))
    if len(sizes) > 1:
        peaks = {size: max(r["peak_mb"] for r in rows if r["test_images"] == size)
                 for size in sizes}
        print(f"\npeak RSS by size: {peaks}; spread {max(peaks.values()) - min(peaks.values())} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
