"""Image pipelines: a backbone's own evaluation preprocessing and the training augmentation.

- `eval_transform`: the backbone's own preprocessing, built with open_clip's `image_transform`
  (resize the shortest side with bicubic interpolation, centre crop, RGB, to tensor, normalise
  with the backbone's mean / std) -- exactly what `open_clip.create_model_and_transforms` gives.
- `train_transform(augment=True)`: CoOp's training augmentation -- `RandomResizedCrop` (scale
  0.08..1, bicubic) and a random horizontal flip -- then the same normalisation.
  `augment=False` gives the evaluation pipeline (no randomness), e.g. for feature caches or for
  datasets where flips change the meaning (digits). The random draws come from torch's global
  generator: seed it (`torch.manual_seed`) for reproducible augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

Transform = Callable[[Image.Image], torch.Tensor]

DEFAULT_SCALE = (0.08, 1.0)  # Dassl's INPUT.RRCROP_SCALE, used by CoOp / CoCoOp / DAPT


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """A model's image size, mean, std, interpolation and resize mode (open_clip's convention)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = getattr(model, "visual", model)
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    if isinstance(size, list | tuple):
        size = tuple(size)
        size = size[0] if size[0] == size[-1] else size
    return {
        "size": size,
        "mean": tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
        "std": tuple(cfg.get("std", OPENAI_DATASET_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
    }


def eval_transform(size: int | tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                   interpolation: str = "bicubic", resize_mode: str = "shortest") -> Transform:
    """The backbone's evaluation preprocessing (open_clip `image_transform(is_train=False)`)."""
    from open_clip import image_transform

    return image_transform(size, is_train=False, mean=mean, std=std,
                           interpolation=interpolation, resize_mode=resize_mode)


def train_transform(size: int | tuple[int, int], mean: tuple[float, ...],
                    std: tuple[float, ...], augment: bool = True,
                    scale: tuple[float, float] = DEFAULT_SCALE, flip: bool = True,
                    interpolation: str = "bicubic", resize_mode: str = "shortest") -> Transform:
    """Training preprocessing: random resized crop + horizontal flip when `augment`, else eval."""
    if not augment:
        return eval_transform(size, mean, std, interpolation, resize_mode)
    mode = (T.InterpolationMode.BILINEAR if interpolation == "bilinear"
            else T.InterpolationMode.BICUBIC)
    steps: list[Any] = [T.RandomResizedCrop(size, scale=scale, interpolation=mode)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(mean=mean, std=std)]
    return T.Compose(steps)


def transforms_for(model: torch.nn.Module, augment: bool = True,
                   scale: tuple[float, float] = DEFAULT_SCALE,
                   flip: bool = True) -> tuple[Transform, Transform]:
    """(train, eval) transforms from a model's own preprocessing configuration."""
    cfg = preprocess_cfg(model)
    common = dict(interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    return (train_transform(cfg["size"], cfg["mean"], cfg["std"], augment=augment, scale=scale,
                            flip=flip, **common),
            eval_transform(cfg["size"], cfg["mean"], cfg["std"], **common))


def batch_images(images: list[Image.Image], transform: Transform) -> torch.Tensor:
    """Stack transformed images into one `[B, 3, H, W]` batch."""
    return torch.stack([transform(image) for image in images])
