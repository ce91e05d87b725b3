"""A tiny backbone and dataset for end-to-end tests through the CLI (`--plugin` this file).

The backbone is a real open_clip CLIP with random weights (tests/tiny_models.py); the dataset is
six classes of generated 16 px images (a coloured square at a class-specific place), so a whole
`anbench run` takes seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `tests.` imports in a subprocess

from anbench.backbones.base import Backbone, BackboneParams, LoadedBackbone  # noqa: E402
from anbench.data.base import ArraySplit, DatasetParams, DatasetSource, LoadedDataset  # noqa: E402
from anbench.data.images import eval_transform  # noqa: E402
from anbench.registry import BACKBONES, DATASETS  # noqa: E402

CLASSES = ["red square", "green square", "blue square", "red dot", "green dot", "blue dot"]


@BACKBONES.register("tiny-clip")
class TinyClip(Backbone):
    """A 3-layer causal CLIP with random weights (tests only)."""

    class Params(BackboneParams):
        seed: int = 0

    def __init__(self, params=None):
        self.params = params or self.Params()

    def status(self, cache_dir):
        return True, "built in memory"

    def load(self, cache_dir, progress=True, device="cpu") -> LoadedBackbone:
        from tests.tiny_models import tiny_clip

        loaded = tiny_clip(self.params.seed)
        transform = eval_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        loaded.preprocess_eval = loaded.preprocess_train = transform
        loaded.name = "tiny-clip"
        loaded.model.to(device)
        return loaded


def _images(n_per_class: int, seed: int) -> ArraySplit:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        colour = ["red", "green", "blue"].index(name.split()[0])
        size = 8 if name.endswith("square") else 3
        for _ in range(n_per_class):
            image = rng.integers(0, 40, size=(16, 16, 3), dtype=np.uint8)
            top, left = rng.integers(0, 16 - size, size=2)
            image[top:top + size, left:left + size, colour] = 255
            images.append(image)
            labels.append(label)
    return ArraySplit(np.stack(images), np.array(labels))


@DATASETS.register("tiny-shapes")
class TinyShapes(DatasetSource):
    """Six classes of generated 16 px images (tests only)."""

    class Params(DatasetParams):
        pass

    def status(self):
        return True, "generated in memory"

    def load(self, cache_dir) -> LoadedDataset:
        descriptions = {name: [f"a picture of a {name}.", f"an image showing a {name}.",
                               f"a {name} on a dark background."] for name in CLASSES}
        return LoadedDataset("tiny-shapes", list(CLASSES),
                             ["a photo of a {}.", "an image of a {}.", "a picture of a {}."],
                             descriptions, train=_images(16, 1), val=_images(2, 2),
                             test=_images(4, 3))
