"""The embedded default backbone `mini`: frozen pretrained MiniLM text + a ViT trained here.

Not CLIP: results are labelled "mini (MiniLM-L6 text, ViT trained here; not CLIP)". Built on
first use, inside whichever command needs it (a few minutes on 2 CPU cores, progress bar), and
cached by its configuration. The parts: `anbench.backbones.mini_params` (configuration),
`mini_model` (the open_clip model), `mini_data` (images and captions), `mini_train` (the
LiT-style training), `mini_zeroshot` (accuracy) and `mini_cache` (build, cache, load).
"""

from __future__ import annotations

from pathlib import Path

from anbench.backbones import mini_cache
from anbench.backbones.base import Backbone, LoadedBackbone
from anbench.backbones.mini_model import LABEL, build_tokenizer
from anbench.backbones.mini_params import MiniParams
from anbench.registry import BACKBONES


@BACKBONES.register("mini", description="MiniLM-L6 text tower (pretrained, frozen) + small ViT "
                    "trained here LiT-style on the embedded datasets; not CLIP")
class MiniBackbone(Backbone):
    """MiniLM-L6 text tower (pretrained, frozen) + small ViT trained here; not CLIP."""

    Params = MiniParams
    builds_on_first_use = True  # `load` trains it into the cache when it is not there yet
    label = LABEL
    params: MiniParams

    def build(self, cache_dir: Path, progress: bool = True, force: bool = False) -> Path:
        """Train and cache the weights unless cached (`anbench backbone build mini`)."""
        return mini_cache.build(self.params, cache_dir, progress=progress, force=force)

    def load(self, cache_dir: Path, progress: bool = True, device: str = "cpu") -> LoadedBackbone:
        return mini_cache.load(self.params, cache_dir, progress=progress, device=device)

    def status(self, cache_dir: Path) -> tuple[bool, str]:
        return mini_cache.status(self.params, cache_dir)

    def tokenizer(self):
        """The tokenizer `load` gives, without building or loading the weights."""
        return build_tokenizer(self.params)
