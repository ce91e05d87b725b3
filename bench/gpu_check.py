"""Helpers of bench/gpu_check.sh: bf16-vs-fp32 feature agreement, the summary table and the
projection of the paper's full base-to-new grid.

    python bench/gpu_check.py agreement --backbone vit-b-16 --device cuda --json A.json
    python bench/gpu_check.py summary --suite-dir DIR --agreement A.json --scale S.json \
        --cache CACHE.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/scale.py's backbone

# The paper's 11 datasets (CoOp, Table 1 of Zhou et al., IJCV 2022): classes, test images.
PAPER_DATASETS = {
    "imagenet": (1000, 50000), "caltech101": (100, 2465), "oxford-pets": (37, 3669),
    "stanford-cars": (196, 8041), "oxford-flowers": (102, 2463), "food101": (101, 30300),
    "fgvc-aircraft": (100, 3333), "sun397": (397, 19850), "dtd": (47, 1692),
    "eurosat": (10, 8100), "ucf101": (101, 3783),
}
PAPER_METHODS = ("coop", "dapt", "anprompt")
PAPER_SEEDS = 3
SHOTS = 16


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    """Image features of the same images in float32 and under bf16 autocast: cosine, argmax."""
    import scale  # noqa: F401  (registers scale-vit-224)
    import torch
    import torch.nn.functional as F

    from anbench.backbones.adapter import BackboneAdapter
    from anbench.backbones.loading import config_cache_dir, load_backbone
    from anbench.config import BenchConfig, RunSection
    from anbench.data.images import preprocess_cfg
    from anbench.device import resolve_device

    device = resolve_device(args.device)
    extra = {"backbones": {"vit-b-16": {"pretrained": None}}} if args.backbone == "vit-b-16" \
        else {}
    config = BenchConfig(run=RunSection(backbone=args.backbone, device=args.device), **extra)
    config_cache_dir(config)
    backbone = load_backbone(config, args.backbone, str(device), progress=False)
    adapter = BackboneAdapter(backbone).to(device)
    gen = torch.Generator().manual_seed(0)
    size = preprocess_cfg(backbone.model)["size"]
    size = size[0] if isinstance(size, list | tuple) else size
    images = torch.randn(args.images, 3, size, size, generator=gen).to(device)
    with torch.no_grad():
        fp32 = F.normalize(adapter.encode_image(images).features.float(), dim=-1)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = F.normalize(adapter.encode_image(images).features.float(), dim=-1)
        tokens = adapter.trim(adapter.tokenize([f"a photo of class {i}." for i in range(50)]))
        text = adapter.encode_text(tokens, normalize=True).float()
    cosine = F.cosine_similarity(fp32, bf16, dim=-1)
    same = (fp32 @ text.T).argmax(1) == (bf16 @ text.T).argmax(1)
    result = {"device": str(device), "backbone": args.backbone, "images": args.images,
              "min_cosine": float(cosine.min()), "argmax_agreement": float(same.float().mean())}
    print(json.dumps(result))
    return result


def _cells(suite_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for meta_path in sorted(suite_dir.rglob("meta.json")):
        meta = json.loads(meta_path.read_text())
        parts = meta_path.relative_to(suite_dir / "cells").parts
        timing = meta.get("timing", {})
        steps = len(meta.get("history", []))
        with_arrays = meta_path.parent / "arrays.npz"
        tested = 0
        if with_arrays.is_file():
            import numpy as np

            with np.load(with_arrays) as arrays:
                tested = sum(len(arrays[k]) for k in arrays.files if k.endswith("/labels"))
        rows.append({"backbone": parts[0], "dataset": parts[1], "method": parts[2],
                     "train_noise": parts[3], "seconds": meta.get("seconds", 0.0),
                     "steps": steps, "tested": tested, **timing})
    return rows


def project(cells: list[dict[str, Any]], backbone: str = "vit-b-16") -> dict[str, Any]:
    """Hours for 11 datasets x (coop, dapt, anprompt) x 3 seeds, base-to-new, 16 shots, from
    the measured seconds per training step and test images per second of each method."""
    from anbench.cell import training_steps
    from anbench.config import load_config

    config = load_config()
    rates: dict[str, tuple[float, float]] = {}
    for method in PAPER_METHODS:
        mine = [c for c in cells if c["method"] == method and c["steps"]]
        if not mine:
            continue
        per_step = sum(c["train"] for c in mine) / sum(c["steps"] for c in mine)
        per_image = sum(c["evaluate"] for c in mine) / max(1, sum(c["tested"] for c in mine))
        rates[method] = (per_step, per_image)
    total = 0.0
    per_dataset: dict[str, float] = {}
    for dataset, (classes, test_images) in PAPER_DATASETS.items():
        seconds = 0.0
        for method, (per_step, per_image) in rates.items():
            params = config.plugin_params("methods", method, backbone=backbone, dataset=dataset)
            steps = training_steps(params, math.ceil(classes / 2) * SHOTS)
            seconds += PAPER_SEEDS * (steps * per_step + test_images * per_image)
        per_dataset[dataset] = seconds
        total += seconds
    return {"rates": rates, "per_dataset_s": per_dataset, "total_h": total / 3600,
            "methods_measured": sorted(rates)}


def summary(args: argparse.Namespace) -> None:
    cells = _cells(Path(args.suite_dir))
    print("| dataset | method | noise | load s | train s | steps | s/step | evaluate s | "
          "images/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cells:
        per_step = c["train"] / c["steps"] if c["steps"] else float("nan")
        rate = c["tested"] / c["evaluate"] if c.get("evaluate") else float("nan")
        print(f"| {c['dataset']} | {c['method']} | {c['train_noise']} | {c.get('load', 0):.1f} "
              f"| {c.get('train', 0):.1f} | {c['steps']} | {per_step:.4f} | "
              f"{c.get('evaluate', 0):.1f} | {rate:,.0f} |")
    for name in ("cache", "agreement"):
        path = getattr(args, name)
        if path and Path(path).is_file():
            print(f"\n{name}: {Path(path).read_text().strip()}")
    if args.scale and Path(args.scale).is_file():
        print("\nscale probe:")
        for row in json.loads(Path(args.scale).read_text()):
            print(f"  {row['method']}: {row['test_images']} test images, load {row['load']} s, "
                  f"train {row['train']} s, evaluate {row['evaluate']} s, "
                  f"{row['images_per_s']} images/s, peak {row['peak_mb']} MB")
    if args.fusion and Path(args.fusion).is_file():
        fusion = json.loads(Path(args.fusion).read_text())
        cells_run = sum(int(m["cells"]) for m in fusion["per_method"]["alone"].values())
        print(f"\nfused vs unfused cells ({cells_run} cells, bench/fusion.py): fused "
              f"{fusion['fused_s']:.1f} s, unfused {fusion['alone_s']:.1f} s, ratio "
              f"{fusion['ratio']:.2f}x ({3600 * cells_run / fusion['fused_s']:,.0f} vs "
              f"{3600 * cells_run / fusion['alone_s']:,.0f} cells per hour); results.csv max "
              f"|diff| {fusion['row_diff']:.1e}, prompts {fusion['prompt_diff']:.1e}"
              + ("; MISMATCH: " + " | ".join(fusion["problems"]) if fusion["problems"] else ""))
    projection = project(cells, args.backbone)
    print(f"\nprojection ({args.backbone} timings of {', '.join(projection['methods_measured'])}):"
          f" 11 datasets x {len(projection['methods_measured'])} methods x {PAPER_SEEDS} seeds, "
          f"base-to-new, {SHOTS} shots: {projection['total_h']:.2f} h")
    for dataset, seconds in projection["per_dataset_s"].items():
        print(f"  {dataset}: {seconds / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description="bench/gpu_check.sh helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    agree = sub.add_parser("agreement")
    agree.add_argument("--backbone", default="vit-b-16")
    agree.add_argument("--device", default="auto")
    agree.add_argument("--images", type=int, default=64)
    agree.add_argument("--json", default=None)
    summ = sub.add_parser("summary")
    summ.add_argument("--suite-dir", required=True)
    summ.add_argument("--backbone", default="vit-b-16")
    summ.add_argument("--agreement", default=None)
    summ.add_argument("--scale", default=None)
    summ.add_argument("--cache", default=None)
    summ.add_argument("--fusion", default=None, help="bench/fusion.py --json output")
    args = parser.parse_args()
    if args.command == "agreement":
        result = agreement(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result))
    else:
        summary(args)


if __name__ == "__main__":
    main()
