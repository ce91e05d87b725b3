"""A cache of frozen-prefix outputs: what the blocks before a method's first prompted layer give.

Those blocks see no prompt, so their outputs depend only on the backbone weights, the
preprocessing and the input (an image view or a tokenised sentence batch). Methods compute them
once and reuse them at every step and epoch.

Entries are dicts of tensors, keyed by `prefix_key` (weights hash, preprocessing tag, tower,
end layer, precision and a content digest of the input). The cache keeps them in memory under a
byte budget (least recently used first out) and, when given a directory, also on disk as
`<directory>/<key>.pt` (written atomically, checked against their provenance on load; a damaged
or foreign file is recomputed, which is exact because the computation is deterministic).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anbench.files import atomic_save_torch
from anbench.hashing import json_digest

#: Bump when what a cached prefix means changes (adapter code, value layout).
CACHE_VERSION = 1
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: a few thousand ViT-B/16 image prefixes

Entry = dict[str, torch.Tensor]


def preprocessing_tag(transform: Any) -> str:
    """A stable description of an image pipeline (torchvision transforms print their settings)."""
    return " ".join(repr(transform).split()) if transform is not None else ""


def prefix_key(*, weights: str, preprocessing: str, tower: str, end_layer: int,
               input_digest: str, precision: str = "float32", extra: str = "") -> str:
    """The cache key of the outputs of blocks [0, end_layer) of one tower for one input
    (`input_digest`: e.g. `anbench.hashing.tensor_digest` of the input)."""
    fields = {"v": CACHE_VERSION, "weights": weights, "preprocessing": preprocessing,
              "tower": tower, "end_layer": int(end_layer), "input": input_digest,
              "precision": precision, "extra": extra}
    return json_digest(fields, length=32)


def _nbytes(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


@dataclass
class CacheStats:
    hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class PrefixCache:
    """In-memory LRU (by bytes) with an optional on-disk store."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, directory: Path | str | None = None):
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory is not None else None

    # ------------------------------------------------------------------ memory
    def _remember(self, key: str, entry: Entry) -> None:
        size = _nbytes(entry)
        if size > self.max_bytes:  # would evict everything and still not fit
            return
        if key in self._entries:
            self._bytes -= _nbytes(self._entries.pop(key))
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= _nbytes(old)

    # ------------------------------------------------------------------ disk
    def _load(self, key: str, device: torch.device | str | None) -> Entry | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") != key or stored.get("version") != CACHE_VERSION:
                return None
            tensors = stored["tensors"]
        except Exception:  # damaged files fail in many ways: recompute (deterministic)
            return None
        return {name: t.to(device) if device is not None else t for name, t in tensors.items()}

    def _save(self, key: str, entry: Entry) -> None:
        path = self.path(key)
        if path is None:
            return
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in entry.items()}
        atomic_save_torch(path, {"key": key, "version": CACHE_VERSION, "tensors": tensors})

    # ------------------------------------------------------------------ lookup
    def get(self, key: str, device: torch.device | str | None = None) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry
        entry = self._load(key, device)
        if entry is not None:
            self.stats.disk_hits += 1
            self._remember(key, entry)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        entry = {name: t.detach() for name, t in entry.items()}
        self._remember(key, entry)
        self._save(key, entry)

    def get_or_compute(self, key: str, compute: Callable[[], Entry],
                       device: torch.device | str | None = None) -> Entry:
        entry = self.get(key, device)
        if entry is None:
            self.stats.misses += 1
            entry = {name: t.detach() for name, t in compute().items()}
            self.put(key, entry)
        return entry


_default: PrefixCache | None = None


def default_cache() -> PrefixCache:
    """The process-wide cache methods use when the runner hands them none (memory only)."""
    global _default
    if _default is None:
        _default = PrefixCache()
    return _default


def cache_for(extra: dict[str, Any] | None) -> PrefixCache:
    """The cache a task names (`TaskContext.extra["prefix_cache"]`), else the process default."""
    cache = (extra or {}).get("prefix_cache")
    return cache if isinstance(cache, PrefixCache) else default_cache()


def precision_tag(adapter: Any) -> str:
    """Device type and compute precision: a prefix from bf16 autocast on CUDA is not one from
    float32 on a CPU."""
    context = adapter.autocast()
    if isinstance(context, torch.autocast):
        return f"{adapter.device.type}:autocast-{context.fast_dtype}"
    dtype = next(adapter.model.parameters()).dtype
    return f"{adapter.device.type}:{dtype}"
