"""Content hashes: short SHA-256 hex keys for caches, fingerprints and provenance.

One home for how tensors, models, files, text and JSON-able data are hashed, so a key computed
in one module can be recomputed in another. Every function here is a stored format: changing
what it feeds the hash changes every cache key and fingerprint derived from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: listing plugins should not pay for it
    import torch


def text_digest(text: str, length: int = 16) -> str:
    """SHA-256 hex of the UTF-8 text, first `length` characters."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def json_digest(data: Any, length: int = 16) -> str:
    """Hash of `data` as JSON with sorted keys (values JSON cannot hold are written as str())."""
    return text_digest(json.dumps(data, sort_keys=True, default=str), length)


def tensor_digest(*tensors: torch.Tensor, length: int = 24) -> str:
    """A content hash of tensors (dtype, shape and bytes, in order), independent of device and
    strides: equal tensors give equal keys wherever they live."""
    import torch

    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().to("cpu").contiguous()
        digest.update(str((array.dtype, tuple(array.shape))).encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def int64_array_digest(values: Any, length: int = 16) -> str:
    """Hash of an integer sequence: its length (8 bytes), then each value as an int64, both
    little-endian (so the key is the same on every platform)."""
    import numpy as np

    array = np.ascontiguousarray(values, dtype=np.int64)
    digest = hashlib.sha256(len(array).to_bytes(8, "little"))
    digest.update(array.astype("<i8").tobytes())
    return digest.hexdigest()[:length]


def state_dict_digest(model: torch.nn.Module, length: int = 16) -> str:
    """A short content hash of a model's parameters and buffers: each name, then its values as
    float32 bytes, in name order (so the key survives reordering and precision casts)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def file_digest(path: Path | str, length: int = 16, chunk: int = 1 << 20) -> str:
    """SHA-256 hex of a file's bytes (read in chunks), first `length` characters."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:length]
