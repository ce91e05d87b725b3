"""Seed derivation: every random stream in anbench is keyed by the values that define it.

A stream (one perturbed sentence, one parameter group's initialisation, one augmented view, one
few-shot draw) gets its seed from a SHA-256 of its key parts, never from Python's salted
`hash()` or from a shared global stream, so it is the same in any order, batch, process or
machine, and adding a stream leaves the others unchanged.

The key text is the JSON list of the parts (types matter: `1` and `"1"` differ), or, for the
few-shot sampler, the parts' `str()` joined by a separator (`sep`); callers convert their parts
to the types they key by. Changing any of this changes every derived draw, hence every result.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: perturbations and data do not need it
    import torch

Part = int | float | str


def key_digest(*parts: Part, sep: str | None = None) -> bytes:
    """The 32-byte SHA-256 of the parts' key text (JSON list, or `str()`s joined by `sep`)."""
    text = json.dumps(list(parts)) if sep is None else sep.join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def derive_seed(*parts: Part, bits: int = 63, sep: str | None = None) -> int:
    """An integer seed in [0, 2**bits) from the first 8 digest bytes (little-endian).

    63 bits by default (a non-negative int64, what the initialisation and view seeds use); the
    few-shot sampler keys by all 64."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    return int.from_bytes(key_digest(*parts, sep=sep)[:8], "little") & ((1 << bits) - 1)


def numpy_rng(*parts: Part, sep: str | None = None) -> np.random.Generator:
    """A PCG64 Generator seeded with the whole digest (eight 32-bit words)."""
    words = np.frombuffer(key_digest(*parts, sep=sep), dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def torch_generator(*parts: Part) -> torch.Generator:
    """A CPU torch Generator seeded with `derive_seed(*parts)` (63 bits)."""
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))
