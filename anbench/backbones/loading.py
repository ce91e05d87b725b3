"""Load a registered backbone with its configured parameters, wrapped in the adapter."""

from __future__ import annotations

from pathlib import Path

from anbench.backbones.base import LoadedBackbone
from anbench.config import BenchConfig
from anbench.device import resolve_device
from anbench.paths import cache_dir as default_cache_dir
from anbench.registry import BACKBONES


def config_cache_dir(config: BenchConfig) -> Path:
    return Path(config.run.cache_dir).expanduser() if config.run.cache_dir else default_cache_dir()


def backbone_source(config: BenchConfig, name: str):
    """The backbone plugin instance with its validated parameters."""
    cls = BACKBONES.get(name)
    return cls(config.plugin_params("backbones", name))


def load_backbone(config: BenchConfig, name: str | None = None, device: str = "auto",
                  progress: bool = True) -> LoadedBackbone:
    name = name or config.run.backbone
    source = backbone_source(config, name)
    target = resolve_device(device)
    return source.load(config_cache_dir(config), progress=progress, device=str(target))
