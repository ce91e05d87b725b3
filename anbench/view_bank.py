"""A bank of pre-drawn augmented views per training image.

With augmentation on, every epoch would otherwise draw a fresh random crop, and a frozen prefix
could never be reused. Instead the runner draws `views` augmented views per image once
(deterministically from the seed and each image's id), stacks them as `[N, V, C, H, W]` and hands
that to `anbench.training.train`, which trains epoch `e` on view `e % V` and computes each view's
frozen inputs once (so the prefix cache covers every view).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from anbench.seeds import derive_seed


def view_seed(seed: int, item_id: str, view: int) -> int:
    """The RNG seed of one view: depends only on (seed, image id, view index), not on order."""
    return derive_seed(int(seed), str(item_id), int(view))


def augmented_views(images: Sequence[Any], transform: Callable[[Any], torch.Tensor], views: int,
                    seed: int, ids: Sequence[str] | None = None) -> torch.Tensor:
    """`[N, views, C, H, W]`: `views` draws of `transform` per image.

    torchvision's random transforms draw from torch's global generator; it is seeded per view and
    restored afterwards, so the bank is reproducible and the caller's RNG stream is untouched.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    out = []
    with torch.random.fork_rng(devices=[]):
        for image, item_id in zip(images, ids, strict=True):
            drawn = []
            for view in range(views):
                torch.manual_seed(view_seed(seed, item_id, view))
                drawn.append(transform(image))
            out.append(torch.stack(drawn))
    if not out:
        raise ValueError("no images to augment")
    return torch.stack(out)
