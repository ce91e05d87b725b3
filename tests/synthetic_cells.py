"""A suite store written by tests: cells with hand-made logits, text features and rows.

Each method's correctness per test image is chosen (a fixed set of images it gets right), so
the accuracy differences between methods are known exactly; rows.csv is computed from the
arrays with `anbench.metrics` (independently of `anbench.cell_scores`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anbench import metrics
from anbench.results_schema import RESULT_COLUMNS
from anbench.store import CellKey, SuiteStore

N_CLASSES = 4
DRAWS = 5
CONDITION = ("drop", 0.3)  # the one perturbation, at one severity


def logits_for(labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """[N, C] logits whose argmax is the label where `correct`, another class elsewhere."""
    n = len(labels)
    logits = np.zeros((n, N_CLASSES), dtype=np.float32)
    wrong = (labels + 1) % N_CLASSES
    logits[np.arange(n), np.where(correct, labels, wrong)] = 1.0
    return logits


def cell_arrays(n: int, accuracy: float, flip: float, seed: int, rng_key: int
                ) -> dict[str, np.ndarray]:
    """Arrays of one cell: the first `accuracy` share of images right (clean); under the
    perturbation each draw turns a random `flip` share of the right ones wrong."""
    rng = np.random.default_rng(rng_key)
    arrays: dict[str, np.ndarray] = {}
    for split in ("base", "new"):
        labels = np.arange(n) % N_CLASSES
        correct = np.arange(n) < round(accuracy * n)
        arrays[f"{split}/labels"] = labels
        arrays[f"{split}/logits/clean"] = logits_for(labels, correct)
        text = rng.normal(size=(N_CLASSES, 8)).astype(np.float32)
        arrays[f"{split}/text/clean"] = text
        noisy_logits, noisy_text = [], []
        for _ in range(DRAWS):
            lost = correct & (rng.random(n) < flip)
            noisy_logits.append(logits_for(labels, correct & ~lost))
            noisy_text.append(text + rng.normal(scale=0.3, size=text.shape).astype(np.float32))
        key = f"{CONDITION[0]}@{CONDITION[1]:g}"
        arrays[f"{split}/logits/{key}"] = np.stack(noisy_logits)
        arrays[f"{split}/text/{key}"] = np.stack(noisy_text)
    return arrays


def cell_rows(key: CellKey, arrays: dict[str, np.ndarray], suite: str) -> pd.DataFrame:
    """The rows the runner writes for a cell (means over draws), from `anbench.metrics`."""
    base = {"suite": suite, "dataset": key.dataset, "backbone": key.backbone,
            "method": key.method, "train_noise": key.train_noise, "shots": key.shots,
            "seed": key.seed}
    rows = []
    nan = float("nan")
    cond = f"{CONDITION[0]}@{CONDITION[1]:g}"
    accs = {}
    for split in ("base", "new"):
        labels, clean = arrays[f"{split}/labels"], arrays[f"{split}/logits/clean"]
        accs[split] = metrics.accuracy(clean, labels)
        rows.append(base | {"split": split, "eval_noise": "clean", "severity": nan,
                            "alpha": nan, "metric": "acc", "value": accs[split]})
        noisy, text = arrays[f"{split}/logits/{cond}"], arrays[f"{split}/text/{cond}"]
        values = {
            "acc": [metrics.accuracy(lg, labels) for lg in noisy],
            "ts": [metrics.text_shift(arrays[f"{split}/text/clean"], t) for t in text],
            "lpr": [metrics.logit_preservation_rate(clean, lg) for lg in noisy],
            "as": [metrics.accuracy_shift(clean, lg, labels) for lg in noisy],
        }
        for metric, per_draw in values.items():
            rows.append(base | {"split": split, "eval_noise": CONDITION[0],
                                "severity": CONDITION[1], "alpha": float("inf"),
                                "metric": metric, "value": float(np.mean(per_draw))})
            rows.append(base | {"split": split, "eval_noise": CONDITION[0],
                                "severity": CONDITION[1], "alpha": float("inf"),
                                "metric": f"{metric}_std",
                                "value": float(np.std(per_draw, ddof=1))})
    rows.append(base | {"split": "base-new", "eval_noise": "clean", "severity": nan,
                        "alpha": nan, "metric": "hm",
                        "value": metrics.harmonic_mean(accs["base"], accs["new"])})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


# method -> (clean accuracy, share of right images a perturbation draw turns wrong)
METHODS = {"good": (0.85, 0.05), "twin": (0.85, 0.05), "bad": (0.70, 0.20)}


def write_suite(root: Path, n: int = 400, seeds: tuple[int, ...] = (1, 2),
                methods: dict[str, tuple[float, float]] | None = None,
                dataset: str = "toy", extra: list[tuple[str, str, int]] | None = None
                ) -> SuiteStore:
    """A suite at `root` (results.csv included). 'twin' has exactly the arrays of 'good'.

    `extra`: further (method, train noise, seed) cells, like 'good' but for their seed."""
    store = SuiteStore(root)
    cells = [(m, "none", s) for m in (methods or METHODS) for s in seeds] + list(extra or [])
    for method, noise, seed in cells:
        acc, flip = (methods or METHODS).get(method, METHODS["good"])
        key = CellKey("mini", dataset, method, noise, 16, seed)
        source = "good" if method == "twin" else method
        arrays = cell_arrays(n, acc + 0.01 * seed, flip, seed,
                             rng_key=seed * 1000 + sorted(METHODS).index(source)
                             if source in METHODS else seed * 1000 + 7)
        store.write_cell(key, "fp", cell_rows(key, arrays, root.name), arrays, None,
                         {"seconds": 0.0})
    store.write_results()
    return store
