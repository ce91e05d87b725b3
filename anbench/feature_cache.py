"""Image features of a split, streamed; frozen ones computed once and shared.

A method whose image path has no prompt (`Method.frozen_image_features`: zeroshot, coop, any
plugin that declares it) gets the same features from every cell: the frozen encoder's
normalised output for the same images. They are keyed like the prefix cache
(`anbench.prefix_cache.prefix_key`: weights hash, preprocessing, device and precision, a content
digest of the image list) and kept in a `PrefixCache`: in memory and on disk under
`<cache>/features/`, so later cells, methods and runs read them instead of decoding and
encoding the test set again. Other methods stream the images through their own encoder; only
the features (N x d) are ever held.
"""

from __future__ import annotations

from typing import Any

import torch

from anbench.data.loader import DEFAULT_BATCH, ImageSet
from anbench.evaluation import encode_images
from anbench.prefix_cache import PrefixCache, precision_tag, prefix_key, preprocessing_tag

#: Bump when what a cached feature entry means changes.
FEATURE_VERSION = 1


def is_frozen(method: Any) -> bool:
    """Whether a method's own class declares that its image features are the frozen encoder's
    (`Method.frozen_image_features`; a subclass inherits no such promise)."""
    return bool(vars(type(method)).get("frozen_image_features", False))


def feature_key(weights_hash: str, images: ImageSet, adapter: Any) -> str:
    """The cache key of the frozen features of `images` (weights, preprocessing, precision and
    the images themselves; never the labels, the method or the split)."""
    return prefix_key(weights=weights_hash, preprocessing=preprocessing_tag(images.transform),
                      tower="image-features", end_layer=-1, input_digest=images.digest(),
                      precision=precision_tag(adapter), extra=f"frozen-v{FEATURE_VERSION}")


@torch.no_grad()
def image_features(method: Any, images: ImageSet | torch.Tensor, *, weights_hash: str,
                   cache: PrefixCache | None = None, workers: int | None = None,
                   batch_size: int = DEFAULT_BATCH) -> dict[str, torch.Tensor]:
    """`method.encode_images` over every image of `images`, streamed in batches; read from and
    written to `cache` when the method's image features are frozen."""
    method.eval()
    if isinstance(images, torch.Tensor):  # an already decoded set (tests, benchmarks)
        return encode_images(method, images, batch_size)
    pin = method.adapter.device.type == "cuda"

    def compute() -> dict[str, torch.Tensor]:
        return encode_images(method, images.batches(batch_size, workers, pin), batch_size)

    if cache is None or not is_frozen(method) or len(images) == 0:
        return compute()
    key = feature_key(weights_hash, images, method.adapter)
    return cache.get_or_compute(key, compute, method.adapter.device)
