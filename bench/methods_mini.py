"""Check the methods' mini-backbone defaults: train each method on 16 shots of the base classes
of each embedded dataset and compare base / new accuracy with zero-shot.

    .venv/bin/python bench/methods_mini.py                     # all methods, both datasets
    .venv/bin/python bench/methods_mini.py --methods dapt --set dapt.lr=0.01 --set dapt.epochs=30
    .venv/bin/python bench/methods_mini.py --set backbones.mini.steps=60   # another mini build

Parameters come from the resolved config (built-in defaults -> bench.yaml -> --set), exactly as
`anbench run` resolves them for the mini backbone. Prints one line per (dataset, method) and a
final verdict: every trained method must beat zero-shot base accuracy on every dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from anbench.backbones.adapter import BackboneAdapter
from anbench.backbones.loading import config_cache_dir, load_backbone
from anbench.config import load_config
from anbench.data.loading import dataset_source
from anbench.data.protocols import base_to_new
from anbench.evaluation import class_sentences, encode_images
from anbench.method import Method, TaskContext
from anbench.perturbation import build_perturbation
from anbench.registry import METHODS
from anbench.training import train

DEFAULT_METHODS = ["zeroshot", "coop", "dapt", "anprompt", "anprompt-wo-nrvpp",
                   "anprompt-wo-waloss", "anprompt-wo-noise", "cocoop", "kgcoop", "maple",
                   "promptsrc"]


def _tensors(space: Any, subset: Any, transform: Any, limit: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    items = list(subset)
    if limit is not None and len(items) > limit:  # evenly spaced, deterministic
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    images = torch.stack([transform(space.load_image(item)) for item, _ in items])
    return images, torch.as_tensor([int(y) for _, y in items], dtype=torch.long)


@torch.no_grad()
def accuracy(method: Method, images: torch.Tensor, labels: torch.Tensor, sentences: list[str],
             split: str) -> float:
    method.eval()
    features = encode_images(method, images)
    logits = method.conditional_logits(features, sentences, split)  # image-conditioned text
    if logits is None:
        logits = method.logits(features, method.class_features(sentences), split)
    return 100.0 * float((logits.argmax(-1).cpu() == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion-mnist,digits")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], help="config key=value")
    parser.add_argument("--noise", default="wsp", help="ANPrompt's training noise")
    parser.add_argument("--test-limit", type=int, default=None, help="test images per split")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = ("methods.", "backbones.", "perturbations.", "per_backbone.", "per_dataset.")
    config = load_config(sets=[s if s.startswith(sections) else f"methods.{s}"
                               for s in args.set])
    backbone = load_backbone(config, "mini", device="cpu")
    adapter = BackboneAdapter(backbone)
    cache = config_cache_dir(config)
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        loaded = dataset_source(config, dataset).load(cache)
        for seed in [int(s) for s in args.seeds.split(",")]:
            base, new = base_to_new(loaded, args.shots, seed, cache)
            transform = backbone.preprocess_eval
            train_x, train_y = _tensors(base, base.train, transform)
            tests = {split: _tensors(space, space.test, transform, args.test_limit)
                     for split, space in (("base", base), ("new", new))}
            zero_base = None
            for name in args.methods.split(","):
                cls = METHODS.get(name)
                params = config.plugin_params("methods", name, backbone="mini", dataset=dataset)
                method = cls(params, adapter)
                noise = build_perturbation(args.noise) if cls.takes_train_noise else None
                sentences = {s: class_sentences(method, list(sp.classnames), sp.template)
                             for s, sp in (("base", base), ("new", new))}
                task = TaskContext(
                    dataset=dataset, classnames=list(base.classnames),
                    sentences=sentences["base"], descriptions=base.descriptions,
                    templates=list(base.templates), seed=seed, device=adapter.device,
                    train_noise=noise, train_noise_name=args.noise if noise else "none",
                    train_noise_severity=noise.severities[0] if noise else None,
                    extra={"cache_dir": cache})
                started = time.perf_counter()
                method.setup(task, train_x, train_y)
                history = train(method, train_x, train_y, params, seed) if cls.trains else []
                seconds = time.perf_counter() - started
                acc = {split: accuracy(method, *tests[split], sentences[split], split)
                       for split in ("base", "new")}
                hm = (2 * acc["base"] * acc["new"] / (acc["base"] + acc["new"])
                      if acc["base"] + acc["new"] else 0.0)
                if name == "zeroshot":
                    zero_base = acc["base"]
                row = {"dataset": dataset, "seed": seed, "method": name, "base": acc["base"],
                       "new": acc["new"], "hm": hm, "train_s": seconds, "steps": len(history),
                       "first_loss": history[0]["loss"] if history else math.nan,
                       "last_loss": history[-1]["loss"] if history else math.nan,
                       "beats_zeroshot": None if zero_base is None or not cls.trains
                       else acc["base"] > zero_base}
                rows.append(row)
                print(f"{dataset:14s} seed {seed} {name:20s} base {acc['base']:5.1f} "
                      f"new {acc['new']:5.1f} HM {hm:5.1f}  train {seconds:5.1f}s "
                      f"({len(history)} steps, loss {row['first_loss']:.3f} -> "
                      f"{row['last_loss']:.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    failures = [r for r in rows if r["beats_zeroshot"] is False]
    for r in failures:
        print(f"FAIL: {r['method']} on {r['dataset']} (seed {r['seed']}) does not beat zero-shot "
              f"base accuracy", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
