"""Image conditions at evaluation: which test images, their corrupted pixels, and a method's
features of them.

- **Subsample.** `run.image_eval_images` images per split (0 or null: all) are drawn once,
  without replacement, by a generator keyed by (`SUBSET_SEED`, dataset, split, test-set size)
  over the images' stable ids (their index in the dataset's test split): the same images for
  every method, seed and run, so image-condition results stay paired.
- **Where corruptions act.** On the image as the backbone sees it: after the geometric part of
  its evaluation preprocessing (resize, centre crop) and before the conversion to a normalised
  tensor, as ImageNet-C corrupts 224 px centre crops. A preprocessing that is not a torchvision
  `Compose` with a to-tensor step is applied whole after corrupting the decoded image.
- **Corrupted pixels** are computed once per (test images, perturbation and its parameters,
  severity, run seed, draw) and kept in memory and under `<cache>/corrupted/` (uint8; later
  cells, methods and runs read them). Image ids key the rng: `<dataset>/<test index>`.
- **Features.** Corrupted images stream through `anbench.data.loader.ImageSet` with the rest of
  the preprocessing; methods with frozen image features (`feature_cache.is_frozen`) cache them
  in the feature cache, keyed by the corrupted pixels themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from anbench.data.base import Subset
from anbench.data.loader import ImageSet
from anbench.hashing import json_digest
from anbench.image_perturbation import ImagePerturbation, apply_corruption
from anbench.seeds import numpy_rng

#: Fixes the image subsample (not the run seed: every seed evaluates the same images).
SUBSET_SEED = 0
#: Bump when what a cached corrupted image means changes.
CORRUPTED_VERSION = 1

Features = dict[str, torch.Tensor]


def eval_positions(images: ImageSet, limit: int | None, dataset: str, split: str
                   ) -> np.ndarray:
    """Positions (sorted) in `images` of the image-condition subsample: all when `limit` is
    0, None or at least the set's size."""
    n = len(images)
    if not limit or limit >= n:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(getattr(images.subset, "indices", range(n)), dtype=np.int64)
    by_id = np.argsort(ids, kind="stable")  # by stable image id, not by position
    rng = numpy_rng(SUBSET_SEED, "image-eval", str(dataset), str(split), int(n))
    return np.sort(by_id[rng.choice(n, size=int(limit), replace=False)])


def split_transform(transform: Any) -> tuple[Callable[[Image.Image], Image.Image] | None, Any]:
    """(geometry, rest) of a torchvision `Compose`: the steps before its first to-tensor step,
    and the steps from there on. (None, transform) when it cannot be split."""
    steps = getattr(transform, "transforms", None)
    if not isinstance(steps, list | tuple):
        return None, transform
    first = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), None)
    if not first:
        return None, transform
    compose = type(transform)
    return compose(list(steps[:first])), compose(list(steps[first:]))


class _Pixels:
    """An ImageSet source over decoded uint8 arrays (grey `[H, W]` or `[H, W, 3]`)."""

    @staticmethod
    def load_image(item: np.ndarray) -> Image.Image:
        return Image.fromarray(item).convert("RGB")


def _as_array(image: Image.Image) -> np.ndarray:
    """uint8 `[H, W]` for grey content (every channel equal), else `[H, W, 3]`: grey images are
    corrupted as grey (see perturbations/image_corruptions.py)."""
    array = np.asarray(image.convert("RGB"))
    if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0],
                                                                        array[..., 2]):
        return np.ascontiguousarray(array[..., 0])
    return np.ascontiguousarray(array)


def corrupted_key(images: ImageSet, positions: np.ndarray, p: ImagePerturbation,
                  severity: float, seed: int, draw: int, geometry: Any, dataset: str) -> str:
    """Cache key of the corrupted pixels: the images (content digest of the subsample) and the
    dataset their rng ids name, where the corruption acts (the geometry steps), the
    perturbation with its parameters except the severity sweep, the severity, seed and draw."""
    from anbench.data.loader import subset_digest
    from anbench.prefix_cache import preprocessing_tag

    subset = Subset(images.subset.parent, [images.subset.indices[i] for i in positions])
    params = {k: v for k, v in p.params.model_dump(mode="json").items() if k != "severity"}
    return json_digest({"v": CORRUPTED_VERSION, "images": subset_digest(subset),
                        "dataset": str(dataset),
                        "geometry": preprocessing_tag(geometry), "name": p.name,
                        "version": p.version, "params": params, "severity": float(severity),
                        "seed": int(seed), "draw": int(draw)}, length=32)


def corrupt_images(images: ImageSet, positions: np.ndarray, p: ImagePerturbation,
                   severity: float, seed: int, draw: int, dataset: str, geometry: Any
                   ) -> list[np.ndarray]:
    """The corrupted uint8 images of the subsample, in order."""
    out = []
    for position in positions:
        item, _ = images.subset[int(position)]
        image = images.source.load_image(item)
        if geometry is not None:
            image = geometry(image)
        index = images.subset.indices[int(position)]
        out.append(apply_corruption(p, _as_array(image), seed, severity,
                                    f"{dataset}/{index}", draw))
    return out


def _pack(arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    shapes = np.array([list(a.shape) + [1] * (3 - a.ndim) for a in arrays], dtype=np.int64)
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return {"pixels": torch.from_numpy(flat), "shapes": torch.from_numpy(shapes),
            "grey": torch.tensor([a.ndim == 2 for a in arrays], dtype=torch.bool)}


def _unpack(entry: dict[str, torch.Tensor]) -> list[np.ndarray]:
    flat = entry["pixels"].cpu().numpy()
    out, start = [], 0
    for shape, grey in zip(entry["shapes"].tolist(), entry["grey"].tolist(), strict=True):
        size = int(np.prod(shape))
        array = flat[start:start + size].reshape(shape)
        out.append(array[..., 0] if grey else array)
        start += size
    return out


@dataclass
class ImageEval:
    """Image conditions of one split for one trained method (built by `make_image_eval`).

    `encode(perturbation, severity, draw)` gives the method's features of the corrupted
    subsample. `draws` noise draws per condition; `set_id` keys feature mixing's rng."""

    positions: np.ndarray
    encode: Callable[[ImagePerturbation, float, int], Features]
    draws: int = 1
    set_id: str = ""
    stats: dict[str, int] = field(default_factory=dict)


def make_image_eval(method: Any, images: ImageSet, *, dataset: str, split: str, seed: int,
                    limit: int | None, draws: int, features: Callable[[Any, ImageSet], Features],
                    cache: Any = None, shared: Any = None) -> ImageEval:
    """The `ImageEval` of one split: `features(method, image_set)` encodes an ImageSet (the
    cell environment's, which uses the frozen-feature cache); `cache` (a PrefixCache or None)
    holds corrupted pixels. `shared` (a fused group's `anbench.cell_group.SharedImageConditions`
    or None) encodes each condition once for all the group's members."""
    positions = eval_positions(images, limit, dataset, split)
    geometry, rest = split_transform(images.transform)
    labels = images.labels.numpy()[positions]
    stats = {"corrupted_computed": 0, "corrupted_cached": 0}

    def pixels(p: ImagePerturbation, severity: float, draw: int) -> list[np.ndarray]:
        def compute() -> dict[str, torch.Tensor]:
            stats["corrupted_computed"] += 1
            return _pack(corrupt_images(images, positions, p, severity, seed, draw, dataset,
                                        geometry))

        if cache is None:
            return _unpack(compute())
        key = corrupted_key(images, positions, p, severity, seed, draw, geometry, dataset)
        hit = key in cache or (cache.path(key) is not None and cache.path(key).is_file())
        stats["corrupted_cached"] += int(hit)
        return _unpack(cache.get_or_compute(key, compute, "cpu"))

    def image_set(p: ImagePerturbation, severity: float, draw: int) -> ImageSet:
        arrays = pixels(p, severity, draw)
        parent = [(array, int(label)) for array, label in zip(arrays, labels, strict=True)]
        return ImageSet(_Pixels(), Subset(parent, range(len(parent))), rest)

    def encode(p: ImagePerturbation, severity: float, draw: int) -> Features:
        if shared is not None:  # members of a group: same images, seed and subsample
            key = (dataset, split, seed, int(limit or 0), p.name, str(p.version),
                   p.params.model_dump_json(), float(severity), int(draw))
            return shared.features(method, key, lambda: image_set(p, severity, draw),
                                   len(positions))
        return features(method, image_set(p, severity, draw))

    return ImageEval(positions, encode, draws, f"{dataset}/{split}", stats)
