"""Per-unit scores of one stored cell, read from its arrays.npz: what the bootstrap resamples.

For each split and evaluation condition (`clean` or `{perturbation}@{severity:g}`):

- images: `acc` (100 if correct), and under a perturbation `lpr` (100 if the prediction is kept)
  and `as` (perturbed minus clean correctness, pp), each a mean over the K noise draws;
- classes: `ts` (1 - cos of clean and perturbed class text feature), a mean over the draws;
- per draw: the metric of each draw (std over draws = the `*_std` of the results table).

Their means over units are exactly the metrics of results.csv. A noisy array of the older shape
([N, C] logits, [C, d] text features) is one draw.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anbench.registry import AnbenchError

CLEAN = "clean"
IMAGE_METRICS = ("acc", "lpr", "as")
CLASS_METRICS = ("ts",)


def unit_kind(metric: str) -> str:
    return "classes" if metric in CLASS_METRICS else "images"


def condition_key(eval_noise: str, severity: float) -> str:
    """The arrays.npz name of an evaluation condition: 'clean' or 'drop@0.3'."""
    return CLEAN if eval_noise == CLEAN else f"{eval_noise}@{severity:g}"


def resample_streams(dataset: str, split: str, metric: str) -> tuple[tuple[str, ...], tuple[str]]:
    """(unit stream, seed stream) of a test set for `anbench.stats.Bootstrap`: the same for
    every method evaluated on it (paired), and the seed stream shared by its splits (a
    resampled seed is one trained model on base and new)."""
    return (dataset, split, unit_kind(metric)), (dataset,)


@dataclass
class SplitScores:
    split: str
    labels: np.ndarray  # [N] the test labels (the same for every method on this test set)
    scores: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (cond, metric)
    per_draw: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # [K] per draw

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(cond for cond, _ in self.scores))

    def units(self, metric: str) -> int:
        return next(len(v) for (c, m), v in self.scores.items()
                    if unit_kind(m) == unit_kind(metric))

    def draws(self, condition: str) -> int:
        return len(self.per_draw.get((condition, "acc"), np.empty(1)))


def stacked(per_seed: Mapping[int, SplitScores], kind: str
            ) -> tuple[list[tuple[str, str]], dict[int, np.ndarray]]:
    """The (condition, metric) columns of one unit kind that every seed has, and per seed the
    [N, M] matrix of those columns: one bootstrap pass resamples them all."""
    first = next(iter(per_seed.values()))
    columns = [k for k in first.scores if unit_kind(k[1]) == kind
               and all(k in s.scores for s in per_seed.values())]
    return columns, {seed: np.stack([s.scores[c] for c in columns], axis=1)
                     for seed, s in per_seed.items()}


def load_cell_scores(path: Path | str) -> dict[str, SplitScores]:
    """split -> scores, from a cell's arrays.npz; a damaged file is one `AnbenchError` line."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise AnbenchError(f"cannot read {path}: {exc}") from None
    splits = [name.split("/")[0] for name in arrays if name.endswith("/labels")]
    try:
        return {split: _split_scores(split, arrays) for split in splits}
    except (KeyError, ValueError, IndexError) as exc:
        raise AnbenchError(f"{path} does not hold the arrays of an evaluated cell ({exc})"
                           ) from None


def _split_scores(split: str, arrays: dict[str, np.ndarray]) -> SplitScores:
    labels = np.asarray(arrays[f"{split}/labels"]).astype(np.int64).ravel()
    clean_logits = np.asarray(arrays[f"{split}/logits/clean"], dtype=np.float64)
    clean_text = np.asarray(arrays[f"{split}/text/clean"], dtype=np.float64)
    if clean_logits.ndim != 2 or len(clean_logits) != len(labels) or clean_text.ndim != 2:
        raise ValueError(f"{split}: clean logits {clean_logits.shape} do not fit "
                         f"{len(labels)} labels")
    out = SplitScores(split, labels)
    clean_pred = clean_logits.argmax(axis=-1)
    clean_ok = (clean_pred == labels).astype(np.float64) * 100.0
    out.scores[(CLEAN, "acc")] = clean_ok
    out.per_draw[(CLEAN, "acc")] = np.array([clean_ok.mean()])
    prefix = f"{split}/logits/"
    conditions = [name[len(prefix):] for name in arrays
                  if name.startswith(prefix) and name != f"{prefix}{CLEAN}"]
    unit_text = clean_text / np.linalg.norm(clean_text, axis=-1, keepdims=True)
    for cond in conditions:
        logits = np.asarray(arrays[prefix + cond], dtype=np.float64)
        text = np.asarray(arrays[f"{split}/text/{cond}"], dtype=np.float64)
        logits = logits[None] if logits.ndim == 2 else logits  # [K, N, C]
        text = text[None] if text.ndim == 2 else text  # [K, C, d]
        if logits.shape[1:] != clean_logits.shape or text.shape[1:] != clean_text.shape:
            raise ValueError(f"{split}/{cond}: shapes {logits.shape}, {text.shape} do not fit "
                             "the clean arrays")
        pred = logits.argmax(axis=-1)  # [K, N]
        ok = (pred == labels).astype(np.float64) * 100.0
        kept = (pred == clean_pred).astype(np.float64) * 100.0
        shift = ok - clean_ok
        unit_noisy = text / np.linalg.norm(text, axis=-1, keepdims=True)
        ts = 1.0 - np.einsum("kcd,cd->kc", unit_noisy, unit_text)  # [K, C]
        for metric, per in (("acc", ok), ("lpr", kept), ("as", shift), ("ts", ts)):
            out.scores[(cond, metric)] = per.mean(axis=0)
            out.per_draw[(cond, metric)] = per.mean(axis=1)
    return out
