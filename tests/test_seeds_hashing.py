"""Seed derivation and content hashes have one home each and reproduce every historic value.

Each expected value below is computed from the formula the call site used before it moved to
`anbench.seeds` / `anbench.hashing`, written out here: stored results, caches and fingerprints
must not change.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from anbench import hashing, seeds
from anbench.data.protocols import labels_fingerprint
from anbench.methods._common import generator, strings_hash, tensor_hash
from anbench.perturbation import build_perturbation, derive_rng
from anbench.prefix_cache import prefix_key
from anbench.view_bank import view_seed

SEEDS = [0, 1, 7, 2**40]
ITEMS = ["pets/12/3", "preview", "0:1", "ünïcode/😀"]


def _sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


# --------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("seed", SEEDS)
def test_perturbation_rng_is_the_historic_one(seed: int):
    for name in ["drop", "wsp"]:
        for severity, key in [(0.1, "0.1"), (0.1 + 0.2, "0.3"), (1, "1"), (1.0, "1")]:
            for item in ITEMS:
                old_key = json.dumps([seed, name, key, item])
                words = np.frombuffer(_sha(old_key), dtype="<u4").tolist()
                old = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
                new = derive_rng(seed, name, severity, item)
                assert new.integers(0, 2**62, 4).tolist() == old.integers(0, 2**62, 4).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_init_generator_is_the_historic_one(seed: int):
    for parts in [(), ("ctx",), ("nrvpp", 3), ("a", 1.5, "ü")]:
        old_key = json.dumps([seed, *map(str, parts)])
        value = int.from_bytes(_sha(old_key)[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
        old = torch.Generator().manual_seed(value)
        new = generator(seed, *parts)
        assert new.initial_seed() == value
        assert torch.equal(torch.randn(5, generator=new), torch.randn(5, generator=old))


@pytest.mark.parametrize("seed", SEEDS)
def test_view_seed_is_the_historic_one(seed: int):
    for item in ITEMS:
        for view in range(3):
            old_key = json.dumps([seed, item, view])
            old = int.from_bytes(_sha(old_key)[:8], "little") & (2**63 - 1)
            assert view_seed(seed, item, view) == old


def test_derive_seed_ranges_and_types():
    assert 0 <= seeds.derive_seed("x", 1) < 2**63
    full = seeds.derive_seed("x", 1, bits=64)
    assert seeds.derive_seed("x", 1) == full & (2**63 - 1)
    assert seeds.derive_seed("x", 1, bits=8) == full & 0xFF
    assert seeds.derive_seed(1) != seeds.derive_seed("1")  # JSON keys keep types apart
    assert seeds.derive_seed(1, sep="/") == seeds.derive_seed("1", sep="/")  # str() keys do not
    for bits in (0, 65):
        with pytest.raises(ValueError, match="bits"):
            seeds.derive_seed("x", bits=bits)


def test_streams_are_independent_of_order_and_process_state():
    np.random.seed(0)
    torch.manual_seed(0)
    a = seeds.numpy_rng("s", 1).random(3)
    np.random.seed(99)
    torch.manual_seed(99)
    seeds.numpy_rng("t", 2).random(10)  # another stream drawn in between
    assert np.array_equal(seeds.numpy_rng("s", 1).random(3), a)
    assert not np.array_equal(seeds.numpy_rng("s", 2).random(3), a)
    gen = seeds.torch_generator("s", 1)
    assert gen.initial_seed() == seeds.derive_seed("s", 1)


# --------------------------------------------------------------------------- hashes

def _old_tensor_hash(tensors: list[torch.Tensor], length: int) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().to("cpu").contiguous()
        digest.update(str((array.dtype, tuple(array.shape))).encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def _tensors() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, generator=gen), torch.arange(6).reshape(2, 3),
            torch.randn(3, 4, generator=gen).T, torch.ones(2, dtype=torch.bfloat16)]


def test_tensor_digests_are_the_historic_ones():
    tensors = _tensors()
    # prefix_cache.tensor_digest (24 characters) and methods/_common.tensor_hash (16)
    assert hashing.tensor_digest(*tensors) == _old_tensor_hash(tensors, 24)
    assert tensor_hash(*tensors) == _old_tensor_hash(tensors, 16)
    assert hashing.tensor_digest(tensors[2]) == hashing.tensor_digest(tensors[2].contiguous())
    assert hashing.tensor_digest(torch.zeros(2, 3)) != hashing.tensor_digest(torch.zeros(3, 2))
    assert hashing.tensor_digest(torch.zeros(2)) != hashing.tensor_digest(
        torch.zeros(2, dtype=torch.float64))


def test_json_and_text_digests_are_the_historic_ones():
    names = ["tabby cat", "dog", "ü"]
    assert strings_hash(names) == hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]
    fields = {"v": 1, "weights": "w", "preprocessing": "p", "tower": "text", "end_layer": 3,
              "input": "abc", "precision": "cpu:float32", "extra": ""}
    old_key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    assert prefix_key(weights="w", preprocessing="p", tower="text", end_layer=3,
                      input_digest="abc", precision="cpu:float32") == old_key
    noise = build_perturbation("drop", {"severity": [0.2, 0.4]})
    blob = json.dumps(noise.describe(5, 0.2), sort_keys=True)
    assert noise.fingerprint(5, 0.2) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert hashing.text_digest("ab", 12) == hashlib.sha256(b"ab").hexdigest()[:12]


def test_labels_fingerprint_is_the_historic_one():
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32)
    digest = hashlib.sha256(len(labels).to_bytes(8, "little"))
    digest.update(labels.astype("<i8").tobytes())
    assert labels_fingerprint(labels) == digest.hexdigest()[:12]
    assert labels_fingerprint(labels) != labels_fingerprint(labels[::-1])


def test_state_dict_and_file_digests_are_the_historic_ones(tmp_path):
    # The formulas of anbench/backbones/base.py's hash_state_dict and hash_file (weights hashes
    # stored in manifests and cache keys).
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    assert hashing.state_dict_digest(model) == digest.hexdigest()[:16]
    assert hashing.state_dict_digest(model.double()) == digest.hexdigest()[:16]
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 9000)  # several read chunks
    assert hashing.file_digest(path, chunk=4096) == hashlib.sha256(
        path.read_bytes()).hexdigest()[:16]
