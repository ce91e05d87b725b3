"""Evaluation protocols.

- **Few-shot sampling**: K images per class from the train split, drawn by a numpy PCG64
  generator seeded from a SHA-256 of (dataset, split, shots, seed) -- never Python's `hash()` --
  so every process and machine draws the same items. The chosen indices are cached as JSON under
  `<cache>/fewshot/<dataset>/` (never in the data folder), keyed by (dataset, split, shots, seed)
  and a fingerprint of the split's labels, written atomically.
- **Base-to-new**: class ids sorted, base = the first ceil(n/2), new = the rest, each relabelled
  0..; shots are sampled on all classes first, then restricted to base (CoOp's order). Train on
  base; test on the base and the new test sets.
- **All classes**: train and test on every class.
- **Cross-dataset**: train on one dataset with all classes, test on each other dataset's full
  label space.

Each protocol returns `LabelSpace`s: one label space of one dataset with its class names,
templates, descriptions and (relabelled) train / val / test views.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anbench.data.base import (
    LoadedDataset,
    Split,
    Subset,
    read_json,
    split_labels,
)
from anbench.files import atomic_write_text
from anbench.hashing import int64_array_digest
from anbench.seeds import derive_seed

VAL_SHOTS_CAP = 4  # CoOp samples min(shots, 4) validation images per class


def labels_fingerprint(labels: np.ndarray) -> str:
    """Short hash of a split's label sequence: a changed split never reuses stale indices."""
    return int64_array_digest(labels, length=12)


def sample_few_shot_indices(labels: np.ndarray, shots: int, seed: int, key: str) -> list[int]:
    """K indices per class (class by class in ascending class order, indices ascending).

    A class with K or fewer items contributes all of them (no repetition).
    """
    labels = np.asarray(labels, dtype=np.int64)
    # Keyed by the parts' str() joined by U+001F, all 64 bits (see anbench.seeds).
    rng = np.random.default_rng(derive_seed("few-shot", key, shots, seed, sep="\x1f", bits=64))
    chosen: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) > shots:
            idx = np.sort(rng.choice(idx, size=shots, replace=False))
        chosen.extend(int(i) for i in idx)
    return chosen


def _item_id(item: Any, index: int) -> str:
    return str(item) if isinstance(item, str) else f"#{index}"


def few_shot(dataset: LoadedDataset, shots: int | None, seed: int, cache_dir: Path,
             split: str = "train") -> Subset:
    """The K-shot subset of `dataset.<split>` for `seed` (cached). `shots` <= 0 / None: all."""
    items: Split = getattr(dataset, split)
    labels = split_labels(items)
    if shots is None or shots <= 0:
        return Subset(items, range(len(items)))
    fingerprint = labels_fingerprint(labels)
    path = (Path(cache_dir) / "fewshot" / dataset.name
            / f"{split}-shots{shots}-seed{seed}-{fingerprint}.json")
    if path.is_file():
        try:
            cached = read_json(path)
            indices = [int(i) for i in cached["indices"]]
            if all(0 <= i < len(items) for i in indices):
                return Subset(items, indices)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # a damaged cache file is redrawn (the draw is deterministic)
    indices = sample_few_shot_indices(labels, shots, seed, key=f"{dataset.name}/{split}")
    record = {
        "dataset": dataset.name, "split": split, "shots": shots, "seed": seed,
        "labels_fingerprint": fingerprint, "indices": indices,
        "items": [_item_id(items[i][0], i) for i in indices],
    }
    atomic_write_text(path, json.dumps(record, indent=1))
    return Subset(items, indices)


def base_new_class_ids(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's split: sorted class ids, base = first ceil(n/2), new = the rest."""
    ids = list(range(num_classes))
    m = math.ceil(num_classes / 2)
    return ids[:m], ids[m:]


@dataclass
class LabelSpace:
    """One label space of one dataset: what a runner cell trains on or evaluates.

    `class_ids` are the dataset's original class ids, in the order of the new labels
    (label `i` here is class `class_ids[i]` of the dataset). `split` is "all", "base" or "new".
    `train` is the few-shot training set (empty where the protocol does not train on it).
    """

    dataset: str
    split: str
    class_ids: list[int]
    classnames: list[str]
    templates: list[str]
    descriptions: dict[str, list[str]]
    train: Subset
    val: Subset
    test: Subset
    source: LoadedDataset = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def template(self) -> str:
        return self.templates[0]

    def load_image(self, item: Any):
        return self.source.load_image(item)

    def prompts(self, template: str | None = None) -> list[str]:
        template = template or self.templates[0]
        return [template.format(name) for name in self.classnames]

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "classes": self.num_classes,
                "train": len(self.train), "val": len(self.val), "test": len(self.test)}


def restrict(subset: Subset, class_ids: Sequence[int]) -> Subset:
    """Keep the items of these classes, relabelled to their position in `class_ids`."""
    label_map = {int(c): i for i, c in enumerate(class_ids)}
    keep = [subset.indices[k] for k, y in enumerate(subset.labels) if int(y) in label_map]
    parent_map = None
    if subset.label_map is not None:  # compose: parent label -> subset label -> new label
        parent_map = {p: label_map[s] for p, s in subset.label_map.items() if s in label_map}
    return Subset(subset.parent, keep, parent_map if parent_map is not None else label_map)


def _space(dataset: LoadedDataset, split: str, class_ids: list[int], train: Subset,
           val: Subset, test: Subset) -> LabelSpace:
    names = [dataset.classnames[c] for c in class_ids]
    return LabelSpace(
        dataset=dataset.name, split=split, class_ids=list(class_ids), classnames=names,
        templates=list(dataset.templates),
        descriptions={n: list(dataset.descriptions.get(n, [])) for n in names},
        train=restrict(train, class_ids), val=restrict(val, class_ids),
        test=restrict(test, class_ids), source=dataset,
    )


def _val_shots(shots: int | None) -> int | None:
    return None if shots is None or shots <= 0 else min(shots, VAL_SHOTS_CAP)


def all_classes(dataset: LoadedDataset, shots: int | None, seed: int,
                cache_dir: Path) -> LabelSpace:
    """Every class: K-shot train, min(K, 4)-shot val, full test."""
    ids = list(range(dataset.num_classes))
    return _space(dataset, "all", ids,
                  few_shot(dataset, shots, seed, cache_dir, "train"),
                  few_shot(dataset, _val_shots(shots), seed, cache_dir, "val"),
                  few_shot(dataset, None, seed, cache_dir, "test"))


def base_to_new(dataset: LoadedDataset, shots: int | None, seed: int,
                cache_dir: Path) -> tuple[LabelSpace, LabelSpace]:
    """(base, new): shots drawn on all classes first, then split; new has no training data."""
    base_ids, new_ids = base_new_class_ids(dataset.num_classes)
    train = few_shot(dataset, shots, seed, cache_dir, "train")
    val = few_shot(dataset, _val_shots(shots), seed, cache_dir, "val")
    test = few_shot(dataset, None, seed, cache_dir, "test")
    base = _space(dataset, "base", base_ids, train, val, test)
    empty = Subset(dataset.train, [])
    new = _space(dataset, "new", new_ids, empty, val, test)
    return base, new


def cross_dataset(source: LoadedDataset, targets: Sequence[LoadedDataset], shots: int | None,
                  seed: int, cache_dir: Path) -> tuple[LabelSpace, dict[str, LabelSpace]]:
    """Train on `source` (all classes, K shots); evaluate on each target's full test set."""
    train_space = all_classes(source, shots, seed, cache_dir)
    evals: dict[str, LabelSpace] = {}
    for target in targets:
        if target.name == source.name:
            continue
        empty = Subset(target.train, [])
        ids = list(range(target.num_classes))
        evals[target.name] = _space(target, "all", ids, empty,
                                    few_shot(target, None, seed, cache_dir, "val"),
                                    few_shot(target, None, seed, cache_dir, "test"))
    return train_space, evals
