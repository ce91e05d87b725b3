"""The backbone plugin contract: the `Backbone` base class, its `BackboneParams`, and what
`load` returns (`LoadedBackbone`: an open_clip model plus what is needed to feed it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from anbench.hashing import file_digest, state_dict_digest


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


class Backbone(ABC):
    """Base class of backbone plugins (`@BACKBONES.register(name)` checks it is subclassed).

    Subclasses set `Params` (a `BackboneParams` model) and implement `status` and `load`.
    `builds_on_first_use` says whether a backbone that `status` reports as not ready can still
    be used because `load` makes it (as `mini` trains itself into the cache): `anbench run` then
    goes ahead and builds it inside the run instead of stopping, and `anbench doctor` does not
    count it as missing for the default run.
    """

    Params: ClassVar[type[BackboneParams]] = BackboneParams
    builds_on_first_use: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""  # set by the registry

    def __init__(self, params: BackboneParams | dict[str, Any] | None = None):
        if params is None:
            params = self.Params()
        elif isinstance(params, dict):
            params = self.Params(**params)
        elif not isinstance(params, self.Params):
            params = self.Params(**params.model_dump())
        self.params = params

    @abstractmethod
    def status(self, cache_dir: Path) -> tuple[bool, str]:
        """(ready to load?, where the weights are or the exact command / path that fixes it).

        Raise `AnbenchError` when it cannot be used here at all (a required package missing, a
        damaged cache): `anbench run` then stops even for a backbone that builds on first use.
        """

    @abstractmethod
    def load(self, cache_dir: Path, progress: bool = True, device: str = "cpu") -> LoadedBackbone:
        """The frozen model on `device`; may build or fetch it first (`progress` shows a bar)."""


def hash_state_dict(model: torch.nn.Module) -> str:
    """A backbone's `weights_hash`: `anbench.hashing.state_dict_digest` (each parameter and
    buffer as float32 bytes under its name, in name order; 16 hex characters). Recorded in mini
    builds, manifests and cell fingerprints, so its form must not change."""
    return state_dict_digest(model)


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    """`anbench.hashing.file_digest`: SHA-256 of the file's bytes, 16 hex characters."""
    return file_digest(path, chunk=chunk)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Backbones are always frozen: only method prompt modules train."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
