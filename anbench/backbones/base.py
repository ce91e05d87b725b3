"""What a backbone plugin returns: an open_clip model plus what is needed to feed it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict


class BackboneParams(BaseModel):
    """Parameters every backbone accepts; plugins subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LoadedBackbone:
    """A frozen open_clip model (`CLIP` or `CustomTextCLIP`) and its input pipeline.

    `label` is what results and reports call it (the mini backbone is never called CLIP).
    `weights_hash` identifies the weights, so caches and manifests can be keyed by it.
    """

    name: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]
    weights_hash: str
    label: str
    info: dict[str, Any] = field(default_factory=dict)


def hash_state_dict(model: torch.nn.Module) -> str:
    """A short content hash of a model's parameters and buffers (order-stable)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Backbones are always frozen: only method prompt modules train."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
