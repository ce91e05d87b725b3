"""The embedded default backbone `mini`: frozen pretrained MiniLM text + a ViT trained here.

Not CLIP: results are labelled "mini (MiniLM-L6 text, ViT trained here; not CLIP)". Built on
first use (a few minutes on 2 CPU cores, progress bar) and cached by its configuration; see
`anbench.backbones.mini_train` for the model and the training recipe.
"""

from __future__ import annotations

from pathlib import Path

from anbench.backbones.base import LoadedBackbone
from anbench.backbones.mini_train import LABEL, MiniParams, build, load, status
from anbench.registry import BACKBONES


@BACKBONES.register("mini", description="MiniLM-L6 text tower (pretrained, frozen) + small ViT "
                    "trained here LiT-style on the embedded datasets; not CLIP")
class MiniBackbone:
    """MiniLM-L6 text tower (pretrained, frozen) + small ViT trained here; not CLIP."""

    Params = MiniParams
    label = LABEL

    def __init__(self, params: MiniParams | dict | None = None):
        if params is None:
            params = MiniParams()
        elif isinstance(params, dict):
            params = MiniParams(**params)
        self.params = params

    def build(self, cache_dir: Path, progress: bool = True, force: bool = False) -> Path:
        """Train and cache the weights unless cached (`anbench backbone build mini`)."""
        return build(self.params, cache_dir, progress=progress, force=force)

    def load(self, cache_dir: Path, progress: bool = True, device: str = "cpu") -> LoadedBackbone:
        return load(self.params, cache_dir, progress=progress, device=device)

    def status(self, cache_dir: Path) -> tuple[bool, str]:
        return status(self.params, cache_dir)
