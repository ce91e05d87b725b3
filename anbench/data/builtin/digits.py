"""scikit-learn's bundled handwritten digits (UCI, 1,797 grey 8x8 images, 10 classes), embedded.

The 8x8 images (values 0..16) are stored as `uint8` (0..255, bright ink on black, like MNIST);
backbones resize them with their own preprocessing. Split deterministically and stratified per
class: 30% test, 10% val, 25% train (the few-shot pool) and the rest (35%) `pretrain`, which only
the `mini` backbone is built on, so few-shot images are new to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anbench.data.base import (
    ArraySplit,
    DatasetParams,
    DatasetSource,
    LoadedDataset,
    load_packaged_descriptions,
)
from anbench.registry import DATASETS, AnbenchError

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a photo of the digit {}.",
    "a photo of the number {}.",
    "a handwritten digit {}.",
    "a low resolution photo of the number {}.",
    "a blurry image of the digit {}.",
]
TEST_FRACTION = 0.3
VAL_FRACTION = 0.1
TRAIN_FRACTION = 0.25
SPLIT_SEED = 20_250_806


def stratified_split(labels: np.ndarray, seed: int = SPLIT_SEED,
                     test_fraction: float = TEST_FRACTION,
                     val_fraction: float = VAL_FRACTION,
                     train_fraction: float = TRAIN_FRACTION) -> dict[str, np.ndarray]:
    """Index arrays for test / val / train / pretrain, stratified per class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": [], "pretrain": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        n_train = int(round(len(idx) * train_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:n_test + n_val + n_train])
        parts["pretrain"].append(idx[n_test + n_val + n_train:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


@DATASETS.register("digits", description="scikit-learn handwritten digits, 10 classes, 8 px "
                   "(embedded)")
class Digits(DatasetSource):
    """scikit-learn's handwritten digits, 10 classes, 8x8 grey images (embedded)."""

    class Params(DatasetParams):
        pass

    def status(self) -> tuple[bool, str]:
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            return False, "pip install scikit-learn"
        return True, "scikit-learn bundled data (sklearn.datasets.load_digits)"

    def load(self, cache_dir: Path) -> LoadedDataset:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise AnbenchError("dataset 'digits' needs scikit-learn: pip install scikit-learn") \
                from None
        bunch = load_digits()
        images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
        parts = stratified_split(labels)
        descriptions = self._descriptions(
            CLASSNAMES, load_packaged_descriptions("digits", CLASSNAMES))
        return LoadedDataset(
            name="digits",
            classnames=list(CLASSNAMES),
            templates=list(TEMPLATES),
            descriptions=descriptions,
            train=ArraySplit(images[parts["train"]], labels[parts["train"]]),
            val=ArraySplit(images[parts["val"]], labels[parts["val"]]),
            test=ArraySplit(images[parts["test"]], labels[parts["test"]]),
            pretrain=ArraySplit(images[parts["pretrain"]], labels[parts["pretrain"]]),
            info={"source": "sklearn.datasets.load_digits", "image_size": 8,
                  "license": "CC BY 4.0 (UCI optical recognition of handwritten digits)"},
        )
