"""Real CLIP-like backbones from open_clip: an architecture name plus a pretrained tag or a local
weights file (the paper's setting is ViT-B-16 with OpenAI weights)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import field_validator

from anbench.backbones.base import (
    BackboneParams,
    LoadedBackbone,
    freeze,
    hash_file,
    hash_state_dict,
)
from anbench.registry import BACKBONES, AnbenchError


class OpenClipParams(BackboneParams):
    arch: str = "ViT-B-16"
    # An open_clip pretrained tag (downloaded once with internet, then read from the cache) or
    # a local .pt / .bin / .safetensors path. None builds random weights (benchmarks only).
    pretrained: str | None = "openai"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        import open_clip

        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture '{arch}'")
        return arch


@BACKBONES.register("open-clip")
class OpenClipBackbone:
    """Any open_clip architecture with a pretrained tag or a local weights file."""

    Params = OpenClipParams

    def __init__(self, params: OpenClipParams | None = None):
        self.params = params or self.Params()

    def _weights_path(self) -> Path | None:
        pretrained = self.params.pretrained
        if pretrained is None:
            return None
        path = Path(os.path.expanduser(pretrained))
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
            return path
        return None

    def status(self, cache_dir: Path) -> tuple[bool, str]:
        p = self.params
        path = self._weights_path()
        if p.pretrained is None:
            return True, f"{p.arch} with random weights (benchmarks only)"
        if path is not None:
            if path.is_file():
                return True, f"{p.arch} weights at {path}"
            return False, f"{p.arch} weights not found at {path}"
        return (False, f"{p.arch} '{p.pretrained}' weights are fetched by open_clip on first use "
                f"(needs internet once); offline, set backbones.{self.registry_name}.pretrained "
                f"to a local weights file")

    def load(self, cache_dir: Path, progress: bool = True, device: str = "cpu") -> LoadedBackbone:
        import open_clip

        p = self.params
        path = self._weights_path()
        if path is not None and not path.is_file():
            raise AnbenchError(f"{p.arch} weights not found at {path}; download them (e.g. "
                               f"open_clip's '{p.arch}' openai checkpoint) and put them there")
        pretrained = str(path) if path is not None else p.pretrained
        try:
            model, _, preprocess_eval = open_clip.create_model_and_transforms(
                p.arch, pretrained=pretrained, cache_dir=str(cache_dir / "open_clip"))
        except Exception as exc:  # offline hub failures come in many exception types
            raise AnbenchError(
                f"cannot load {p.arch} weights '{p.pretrained}' ({exc.__class__.__name__}); with "
                f"no internet, set backbones.{self.registry_name}.pretrained=/path/to/weights.pt"
            ) from None
        _, preprocess_train, _ = open_clip.create_model_and_transforms(p.arch, pretrained=None)
        tokenizer = open_clip.get_tokenizer(p.arch)
        model = freeze(model).to(device)
        weights = hash_file(path) if path is not None else hash_state_dict(model)
        return LoadedBackbone(
            name=self.registry_name, model=model, tokenizer=tokenizer,
            preprocess_train=preprocess_train, preprocess_eval=preprocess_eval,
            weights_hash=weights, label=f"{p.arch} ({p.pretrained or 'random weights'})",
            info={"arch": p.arch, "pretrained": p.pretrained})



@BACKBONES.register("vit-b-16")
class VitB16Backbone(OpenClipBackbone):
    """ViT-B/16 CLIP, the paper's setting; OpenAI weights by default."""

    class Params(OpenClipParams):
        arch: str = "ViT-B-16"


@BACKBONES.register("vit-b-32")
class VitB32Backbone(OpenClipBackbone):
    """ViT-B/32 CLIP; OpenAI weights by default."""

    class Params(OpenClipParams):
        arch: str = "ViT-B-32"
