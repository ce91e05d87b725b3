"""Real CLIP-like backbones from open_clip: an architecture name plus a pretrained tag or a local
weights file (the paper's setting is ViT-B-16 with OpenAI weights)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import field_validator

from anbench.backbones.base import (
    Backbone,
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
class OpenClipBackbone(Backbone):
    """Any open_clip architecture with a pretrained tag or a local weights file."""

    Params = OpenClipParams
    builds_on_first_use = False  # a pretrained tag needs internet: `status` says how to fetch it
    params: OpenClipParams

    def _weights_path(self) -> Path | None:
        pretrained = self.params.pretrained
        if pretrained is None:
            return None
        path = Path(os.path.expanduser(pretrained))
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
            return path
        return None

    def _downloaded(self, cache_dir: Path) -> Path | None:
        """The pretrained tag's file in the cache, where open_clip puts it (None: not there).

        Mirrors `open_clip.pretrained.download_pretrained`: the HF hub entry when the tag has
        one (its .safetensors form first), else the file named by the URL.
        """
        import open_clip
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        cfg = open_clip.get_pretrained_cfg(self.params.arch, self.params.pretrained or "")
        root = Path(cache_dir) / "open_clip"
        if cfg.get("hf_hub"):
            from huggingface_hub import try_to_load_from_cache

            repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or HF_WEIGHTS_NAME
            names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
            if filename != HF_WEIGHTS_NAME and filename.endswith((".bin", ".pth")):
                names.append(filename[:-4] + ".safetensors")
            for name in [*names, filename]:
                found = try_to_load_from_cache(repo, name, cache_dir=str(root))
                if isinstance(found, str):
                    return Path(found)
            return None
        path = root / os.path.basename(cfg.get("url", ""))
        return path if cfg.get("url") and path.is_file() else None

    def status(self, cache_dir: Path) -> tuple[bool, str]:
        import open_clip

        p = self.params
        path = self._weights_path()
        if p.pretrained is None:
            return True, f"{p.arch} with random weights (benchmarks only)"
        if path is not None:
            if path.is_file():
                return True, f"{p.arch} weights at {path}"
            return False, f"{p.arch} weights not found at {path}"
        key = f"backbones.{self.registry_name}.pretrained"
        if not open_clip.get_pretrained_cfg(p.arch, p.pretrained):
            known = ", ".join(open_clip.list_pretrained_tags_by_model(p.arch)) or "(none)"
            return False, (f"{p.arch} has no pretrained tag '{p.pretrained}' (known: {known}); "
                           f"or set {key} to a local weights file")
        downloaded = self._downloaded(cache_dir)
        if downloaded is not None:
            return True, f"{p.arch} '{p.pretrained}' weights downloaded: {downloaded}"
        return (False, f"{p.arch} '{p.pretrained}' weights are not downloaded yet: run "
                f"`anbench backbone build {self.registry_name}` once with internet, or set "
                f"{key} to a local weights file")

    def tokenizer(self):
        """The tokenizer `load` gives, without loading the weights."""
        import open_clip

        return open_clip.get_tokenizer(self.params.arch)

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
