"""Suites for the API / HTML / TensorBoard tests.

`tiny_bench_yaml` points `anbench.run` at the tiny backbone and dataset (tests/plugins), so the
README's notebook example runs in seconds. `synthetic_suite` writes cells through the real store
(`SuiteStore.write_cell`) from hand-made logits and sentences, without any training, so a test
can control every value, including hostile text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anbench import metrics
from anbench.store import CellKey, SuiteStore

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "tiny_suite.py"


def tiny_bench_yaml(path: Path) -> Path:
    path.write_text(
        f"plugins: ['{PLUGIN}']\n"
        "run: {backbone: tiny-clip, datasets: [tiny-shapes], noise_draws: 2}\n"
        "methods: {coop: {epochs: 2}, dapt: {epochs: 2}, anprompt: {epochs: 1, "
        "noise_samples: 2}}\n", encoding="utf-8")
    return path


def _cell(store: SuiteStore, key: CellKey, classes: dict[str, list[str]], seed: int,
          history: list[dict]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arrays, rows, sentences = {}, [], {}
    base = {"suite": store.root.name, "dataset": key.dataset, "backbone": key.backbone,
            "method": key.method, "train_noise": key.train_noise, "shots": key.shots,
            "seed": key.seed}
    nan = float("nan")
    accs = {}
    for split, names in classes.items():
        labels = np.repeat(np.arange(len(names)), 4)
        clean = rng.normal(size=(len(labels), len(names))).astype(np.float32)
        clean[np.arange(len(labels)), labels] += 1.0
        noisy = clean[None] + rng.normal(scale=0.8, size=(2, *clean.shape)).astype(np.float32)
        text = rng.normal(size=(len(names), 8)).astype(np.float32)
        arrays.update({f"{split}/labels": labels, f"{split}/logits/clean": clean,
                       f"{split}/text/clean": text, f"{split}/logits/drop@0.3": noisy,
                       f"{split}/text/drop@0.3": np.stack([text, text])})
        clean_sentences = [f"a photo of a {n}." for n in names]
        sentences[split] = {"clean": clean_sentences,
                            "drop@0.3": [[s.replace("photo ", "") for s in clean_sentences],
                                         [s.replace("a ", "", 1) for s in clean_sentences]]}
        acc = metrics.accuracy(clean, labels)
        accs[split] = acc
        rows.append({**base, "split": split, "eval_noise": "clean", "severity": nan,
                     "alpha": nan, "metric": "acc", "value": acc})
        for metric, value in (
                ("acc", np.mean([metrics.accuracy(n, labels) for n in noisy])),
                ("lpr", np.mean([metrics.logit_preservation_rate(clean, n) for n in noisy])),
                ("as", np.mean([metrics.accuracy_shift(clean, n, labels) for n in noisy])),
                ("ts", 0.0)):
            rows.append({**base, "split": split, "eval_noise": "drop", "severity": 0.3,
                         "alpha": float("inf"), "metric": metric, "value": float(value)})
    rows.append({**base, "split": "base-new", "eval_noise": "clean", "severity": nan,
                 "alpha": nan, "metric": "hm",
                 "value": metrics.harmonic_mean(accs["base"], accs["new"])})
    meta = {"seconds": 1.5, "history": history, "method_params": {"lr": 0.002, "epochs": 2},
            "train_noise": None, "eval_noise": [{"name": "drop", "severity": 0.3}],
            "noise_draws": 2, "sentences": sentences, "classes": classes}
    frame = pd.DataFrame(rows)
    store.write_cell(key, f"fp-{key.method}", frame, arrays, None, meta, weights_hash="w0")
    return frame


def synthetic_suite(root: Path, classes: dict[str, list[str]] | None = None) -> SuiteStore:
    """Two cells (coop, dapt) on one dataset, evaluated clean and under drop@0.3 (2 draws)."""
    classes = classes or {"base": ["cat", "dog", "owl"], "new": ["fox", "eel"]}
    store = SuiteStore(root)
    history = [{"loss": 2.0 - 0.1 * i, "ce": 2.0 - 0.1 * i, "epoch": i // 3, "step": i + 1,
                "lr": 0.002, "seconds": 0.1 * i} for i in range(6)]
    for seed, method in enumerate(("coop", "dapt"), start=1):
        _cell(store, CellKey("tiny-clip", "shapes", method, "none", 4, 1), classes, seed,
              history)
    store.write_results()
    return store
