"""Zero-shot top-1 accuracy of a backbone on a dataset split (the mini build records it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from anbench.backbones.base import LoadedBackbone
from anbench.backbones.mini_data import grey_images, normalise_grey
from anbench.backbones.mini_model import encode_texts
from anbench.registry import AnbenchError


@torch.no_grad()
def zeroshot_accuracy(backbone: LoadedBackbone, dataset: Any, split: str = "test",
                      template: str | None = None, batch_size: int = 256,
                      limit: int | None = None) -> float:
    """Top-1 zero-shot accuracy of a loaded backbone on a dataset split (all its classes).

    `dataset` is a `LoadedDataset` or a protocol `LabelSpace`; the class prompts use `template`
    (default: the dataset's own, `templates[0]`). Images go through `preprocess_eval`.
    """
    model = backbone.model
    model.eval()
    device = next(model.parameters()).device
    prompts = dataset.prompts(template)
    text = encode_texts(model, backbone.tokenizer, prompts).to(device)
    items = getattr(dataset, split)
    n = len(items) if limit is None else min(limit, len(items))
    if n == 0:
        raise AnbenchError(f"dataset {getattr(dataset, 'name', '')} has no {split} images")
    correct = 0
    for start in range(0, n, batch_size):
        chunk = [items[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([backbone.preprocess_eval(dataset.load_image(item)) for item, _ in chunk])
        features = model.encode_image(x.to(device), normalize=True).float()
        predicted = (features @ text.T).argmax(dim=1).cpu()
        correct += int((predicted == torch.tensor([y for _, y in chunk])).sum())
    return correct / n


@torch.no_grad()
def fast_zeroshot(model: torch.nn.Module, tokenizer: Callable, dataset: Any, size: int,
                  split: str = "test", batch_size: int = 512) -> float:
    """Same number as `zeroshot_accuracy` for grey images, without the per-image PIL pipeline."""
    from anbench.data.base import split_labels

    items = getattr(dataset, split)
    grey = torch.from_numpy(np.array(grey_images(items, dataset.load_image, size)))
    labels = torch.from_numpy(split_labels(items))
    if len(labels) == 0:
        raise AnbenchError(f"dataset {getattr(dataset, 'name', '')} has no {split} images")
    text = encode_texts(model, tokenizer, dataset.prompts())
    correct = 0
    for start in range(0, len(labels), batch_size):
        features = model.encode_image(normalise_grey(grey[start:start + batch_size]),
                                      normalize=True)
        correct += int(((features @ text.T).argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(labels)
