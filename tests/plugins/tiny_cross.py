"""A second tiny dataset for cross-dataset tests (`--plugin` this file with tiny_suite.py).

Four classes of generated 16 px stripe images: horizontal or vertical, red or blue.
"""

from __future__ import annotations

import numpy as np

from anbench.data.base import ArraySplit, DatasetParams, DatasetSource, LoadedDataset
from anbench.registry import DATASETS

CLASSES = ["red horizontal stripes", "blue horizontal stripes", "red vertical stripes",
           "blue vertical stripes"]


def _images(n_per_class: int, seed: int) -> ArraySplit:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        channel = 0 if name.startswith("red") else 2
        for _ in range(n_per_class):
            image = rng.integers(0, 40, size=(16, 16, 3), dtype=np.uint8)
            offset = int(rng.integers(0, 4))
            if "horizontal" in name:
                image[offset::4, :, channel] = 255
            else:
                image[:, offset::4, channel] = 255
            images.append(image)
            labels.append(label)
    return ArraySplit(np.stack(images), np.array(labels))


@DATASETS.register("tiny-stripes")
class TinyStripes(DatasetSource):
    """Four classes of generated 16 px stripe images (tests only)."""

    class Params(DatasetParams):
        pass

    def status(self):
        return True, "generated in memory"

    def load(self, cache_dir) -> LoadedDataset:
        descriptions = {name: [f"a pattern of {name}."] for name in CLASSES}
        return LoadedDataset("tiny-stripes", list(CLASSES), ["a photo of {}.", "an image of {}."],
                             descriptions, train=_images(4, 11), val=_images(1, 12),
                             test=_images(5, 13))
