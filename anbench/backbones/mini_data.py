"""What the `mini` vision tower trains on: grey images, joint labels and weighted captions.

Images: the `pretrain` splits of the configured datasets (disjoint from the few-shot pools),
each repeated `repeat[name]` times per epoch, in a fixed seeded order. Captions: every class
named by its aliases (plural and synonyms, e.g. "trousers", "chinos", "leggings" for `trouser`;
"3", "numeral 3" for `three`, from `anbench/resources/aliases/`) and, with `alias_share` < 1, by
its benchmark class name, in generic templates and the datasets' own. The hand-written class
descriptions are NOT used for training, so they stay held-out paraphrases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anbench.backbones.mini_model import MEAN, STD
from anbench.backbones.mini_params import MiniParams
from anbench.registry import AnbenchError

# Caption templates for training (in addition to each dataset's own templates).
TRAIN_TEMPLATES = [
    "{}",
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a pixelated photo of the {}.",
    "a grayscale image of a {}.",
]


def grey_images(split: Sequence, load_image: Callable, size: int) -> np.ndarray:
    """Every image of a split through the eval resize / crop, as grey `uint8 [N, size, size]`.

    For grey sources this equals the backbone's `preprocess_eval` up to the final normalisation
    (the three RGB channels are identical), so training and evaluation see the same pixels.
    """
    from torchvision import transforms as T

    images = getattr(split, "images", None)
    if images is not None and images.ndim == 3 and images.shape[1:] == (size, size):
        return np.ascontiguousarray(images)  # already the right size: resize is the identity
    resize = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(size)])
    out = np.empty((len(split), size, size), dtype=np.uint8)
    for i in range(len(split)):
        item, _ = split[i]
        out[i] = np.asarray(resize(load_image(item).convert("L")), dtype=np.uint8)
    return out


def normalise_grey(batch: torch.Tensor) -> torch.Tensor:
    """`uint8 [B, H, W]` grey -> normalised float `[B, 3, H, W]` (ToTensor + Normalize)."""
    x = batch.to(torch.float32).div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def random_shift(batch: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `shift` pixels (zero padding), drawn from `generator`."""
    if shift <= 0:
        return batch
    n, h, w = batch.shape
    padded = F.pad(batch, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(batch)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


class TrainingData:
    """Grey images, joint labels and the caption texts of every joint class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, repeats: np.ndarray,
                 captions: list[str], caption_class: np.ndarray, caption_weight: np.ndarray,
                 datasets: list[dict[str, Any]]):
        self.images = images
        self.labels = labels
        self.repeats = repeats
        self.captions = captions
        self.caption_class = caption_class
        self.caption_weight = caption_weight  # per class, the weights of its captions sum to 1
        self.datasets = datasets


def aliases_file(dataset: str) -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "aliases" / f"{dataset}.json"


def class_aliases(dataset: str, classnames: list[str]) -> dict[str, list[str]]:
    """Other words for each class, from `anbench/resources/aliases/<dataset>.json`."""
    path = aliases_file(dataset)
    if not path.is_file():
        raise AnbenchError(f"the mini backbone has no class aliases for dataset {dataset!r} "
                           f"(expected {path}); set backbones.mini.alias_share=0")
    aliases = json.loads(path.read_text(encoding="utf-8"))
    missing = [c for c in classnames if not aliases.get(c)]
    if missing:
        raise AnbenchError(f"{path} has no aliases for {missing}")
    return {c: list(aliases[c]) for c in classnames}


def training_data(params: MiniParams, cache_dir: Path) -> TrainingData:
    from anbench.data.base import split_labels
    from anbench.registry import DATASETS

    images, labels, repeats = [], [], []
    captions: list[str] = []
    caption_class: list[int] = []
    caption_weight: list[float] = []
    info: list[dict[str, Any]] = []
    offset = 0
    for name in params.datasets:
        dataset = DATASETS.get(name)().load(Path(cache_dir))
        # The `pretrain` split where the dataset has one: disjoint from the few-shot pool, so the
        # prompts train on images the tower has never seen (as with CLIP on the paper's data).
        split = dataset.pretrain if dataset.pretrain is not None else dataset.train
        grey = grey_images(split, dataset.load_image, params.image_size)
        images.append(grey)
        labels.append(split_labels(split) + offset)
        repeat = params.repeat_of(name)
        repeats.append(np.full(len(grey), repeat, dtype=np.int64))
        aliases = class_aliases(name, dataset.classnames) if params.alias_share > 0 else {}
        templates = list(dict.fromkeys([*TRAIN_TEMPLATES, *dataset.templates]))
        for c, classname in enumerate(dataset.classnames):
            groups = [([classname], 1.0 - params.alias_share)]
            if aliases:
                groups.append((aliases[classname], params.alias_share))
            for words, share in groups:
                if share <= 0:  # left out, not kept as a negative the tower is pushed from
                    continue
                texts = [t.format(w) for w in words for t in templates]
                captions += texts
                caption_class += [offset + c] * len(texts)
                caption_weight += [share / len(texts)] * len(texts)
        info.append({"name": name, "images": len(grey), "classes": dataset.num_classes,
                     "repeat": repeat, "label_offset": offset})
        offset += dataset.num_classes
    return TrainingData(np.concatenate(images), np.concatenate(labels), np.concatenate(repeats),
                        captions, np.asarray(caption_class, dtype=np.int64),
                        np.asarray(caption_weight, dtype=np.float64), info)


def epoch_order(data: TrainingData, epoch: int, seed: int) -> np.ndarray:
    """The fixed sample order of one epoch (each item repeated `repeats[i]` times)."""
    base = np.repeat(np.arange(len(data.labels)), data.repeats)
    rng = np.random.default_rng([seed, epoch, 0x6D696E69])
    return base[rng.permutation(len(base))]


def batches(data: TrainingData, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless full batches of indices, epoch after epoch (an epoch's remainder is dropped)."""
    per_epoch = int(data.repeats.sum())
    if batch_size < 1 or per_epoch < batch_size:  # would never yield a batch
        raise AnbenchError(f"backbones.mini.batch_size ({batch_size}) must be between 1 and the "
                           f"{per_epoch} training images of an epoch")
    epoch = 0
    while True:
        order = epoch_order(data, epoch, seed)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
        epoch += 1
