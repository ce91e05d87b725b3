"""Fashion-MNIST (Zalando, MIT): 70,000 grey 28x28 images of 10 clothing classes, embedded.

Read from the IDX files of Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`),
from `data_root`, or from a torchvision download in the cache (with internet). The official
60,000 training images are split deterministically into val (5,000, 500 per class), train
(10,000, 1,000 per class: the few-shot pool) and `pretrain` (the other 45,000), which only the
`mini` backbone is built on, so few-shot images are new to it; test is the official 10,000.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from anbench.data.base import (
    ArraySplit,
    DatasetParams,
    DatasetSource,
    LoadedDataset,
    load_packaged_descriptions,
)
from anbench.paths import cache_dir as default_cache_dir
from anbench.registry import DATASETS, AnbenchError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a small grey picture of a {}.",
]
VAL_PER_CLASS = 500
TRAIN_PER_CLASS = 1000
SPLIT_SEED = 20_250_806  # fixed: the train/val split is part of the dataset's definition
FIX = ("install it with `sudo apt-get install dataset-fashion-mnist`, or run once with internet "
       "access to download it, or pass data_root=<folder with the four IDX files>")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise AnbenchError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise AnbenchError(f"{path} is truncated ({array.size} values for shape {shape})")
    return array.reshape(shape)


def _find_in(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def stratified_holdout(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Boolean mask of `per_class` items per class, chosen with a fixed seed (numpy PCG64)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        take = min(per_class, len(idx) // 2)
        mask[np.sort(rng.choice(idx, size=take, replace=False))] = True
    return mask


def split_masks(train_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint boolean masks over the official training images: val, train, pretrain."""
    val = stratified_holdout(train_labels, VAL_PER_CLASS, SPLIT_SEED)
    rest = np.flatnonzero(~val)
    train = np.zeros(len(train_labels), dtype=bool)
    train[rest[stratified_holdout(train_labels[rest], TRAIN_PER_CLASS, SPLIT_SEED + 1)]] = True
    return {"val": val, "train": train, "pretrain": ~(val | train)}


@DATASETS.register("fashion-mnist", description="Fashion-MNIST, 10 clothing classes, 28 px "
                   "(embedded: Debian dataset-fashion-mnist)")
class FashionMNIST(DatasetSource):
    """Fashion-MNIST, 10 clothing classes, 28 px grey images (embedded)."""

    class Params(DatasetParams):
        download: bool = True  # with internet, fetch through torchvision when nothing is found

    def _candidates(self, cache_dir: Path) -> list[Path]:
        folders: list[Path] = []
        if self.params.data_root:
            root = Path(self.params.data_root).expanduser()
            folders += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
        folders += [DEBIAN_DIR, cache_dir / "datasets" / "FashionMNIST" / "raw"]
        return folders

    def locate(self, cache_dir: Path | None = None) -> dict[str, Path] | None:
        for folder in self._candidates(cache_dir or default_cache_dir()):
            found = _find_in(folder)
            if found:
                return found
        return None

    def status(self, cache_dir: Path | None = None) -> tuple[bool, str]:
        found = self.locate(cache_dir)
        if found:
            return True, str(found["train_images"].parent)
        return False, FIX

    def _download(self, cache_dir: Path) -> dict[str, Path] | None:
        if not self.params.download:
            return None
        try:
            from torchvision.datasets import FashionMNIST as TVFashionMNIST

            TVFashionMNIST(root=str(cache_dir / "datasets"), train=True, download=True)
            TVFashionMNIST(root=str(cache_dir / "datasets"), train=False, download=True)
        except Exception:  # offline, blocked, or a changed mirror: fall through to the message
            return None
        return _find_in(cache_dir / "datasets" / "FashionMNIST" / "raw")

    def load(self, cache_dir: Path) -> LoadedDataset:
        found = self.locate(cache_dir) or self._download(cache_dir)
        if not found:
            looked = ", ".join(str(p) for p in self._candidates(cache_dir))
            raise AnbenchError(f"Fashion-MNIST IDX files not found (looked in {looked}); {FIX}")
        train_x, train_y = read_idx(found["train_images"]), read_idx(found["train_labels"])
        test_x, test_y = read_idx(found["test_images"]), read_idx(found["test_labels"])
        if len(train_x) != len(train_y) or len(test_x) != len(test_y):
            raise AnbenchError(f"Fashion-MNIST files in {found['train_images'].parent} disagree "
                               "in length")
        masks = split_masks(train_y)
        descriptions = self._descriptions(
            CLASSNAMES, load_packaged_descriptions("fashion-mnist", CLASSNAMES))
        return LoadedDataset(
            name="fashion-mnist",
            classnames=list(CLASSNAMES),
            templates=list(TEMPLATES),
            descriptions=descriptions,
            train=ArraySplit(train_x[masks["train"]], train_y[masks["train"]]),
            val=ArraySplit(train_x[masks["val"]], train_y[masks["val"]]),
            test=ArraySplit(test_x, test_y),
            pretrain=ArraySplit(train_x[masks["pretrain"]], train_y[masks["pretrain"]]),
            info={"source": str(found["train_images"].parent), "image_size": 28,
                  "license": "MIT (Zalando Research)"},
        )
