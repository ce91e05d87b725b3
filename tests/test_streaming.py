"""Streamed test sets, the shared frozen-feature cache and the cross-dataset protocol.

Everything runs the tiny causal CLIP and the generated tiny datasets (tests/plugins/), through
the real DataLoader (worker processes included), the real cache and `run_cell`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tests.plugins.tiny_suite  # noqa: F401  (registers tiny-clip and tiny-shapes)
from anbench.backbones.adapter import BackboneAdapter
from anbench.cell import CellEnvironment, resolve_cell, run_cell
from anbench.config import BenchConfig, RunSection
from anbench.data.base import PathSplit, Subset, load_image
from anbench.data.images import eval_transform
from anbench.data.loader import ImageSet, resolve_workers, subset_digest
from anbench.data.protocols import base_to_new
from anbench.evaluation import EvalNoise, encode_images, evaluate_split
from anbench.feature_cache import feature_key, image_features, is_frozen
from anbench.method import TaskContext
from anbench.perturbation import build_perturbation
from anbench.prefix_cache import PrefixCache
from anbench.registry import DATASETS, METHODS, AnbenchError
from anbench.store import CellKey

REPO = Path(__file__).resolve().parents[1]
PLUGINS = [str(REPO / "tests" / "plugins" / name) for name in ("tiny_suite.py", "tiny_cross.py")]
TRANSFORM = eval_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _old_decode(space, subset, transform) -> torch.Tensor:
    """What the runner did before streaming: every image decoded into one tensor."""
    return torch.stack([transform(space.load_image(item)) for item, _ in subset])


@pytest.fixture(scope="module")
def spaces(tmp_path_factory: pytest.TempPathFactory):
    loaded = DATASETS.get("tiny-shapes")().load(tmp_path_factory.mktemp("cache"))
    return base_to_new(loaded, 4, 1, tmp_path_factory.mktemp("fewshot"))


def _method(name: str, backbone, **params):
    cls = METHODS.get(name)
    method = cls(cls.Params(**params), BackboneAdapter(backbone))
    task = TaskContext(dataset="tiny-shapes", classnames=["red square", "green square"],
                       sentences=["a photo of a red square.", "a photo of a green square."],
                       descriptions={}, templates=["a photo of a {}."], seed=1,
                       device=torch.device("cpu"))
    images = torch.randn(2, 3, 16, 16)
    method.setup(task, images, torch.tensor([0, 1]))
    return method.eval()


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_images_equal_the_decoded_tensor(spaces, workers: int):
    base, _ = spaces
    old = _old_decode(base, base.test, TRANSFORM)
    images = ImageSet(base, base.test, TRANSFORM)
    assert torch.equal(images.decode(workers=workers), old)
    batches = list(images.batches(batch_size=5, workers=workers))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert torch.equal(torch.cat(batches), old)
    assert torch.equal(images.labels, torch.as_tensor(base.test.labels))


@pytest.mark.parametrize("name", ["zeroshot", "dapt"])
def test_streamed_features_equal_the_decoded_path(spaces, clip_backbone, name: str):
    base, _ = spaces
    method = _method(name, clip_backbone, **({"n_ctx": 2} if name == "dapt" else {}))
    old = encode_images(method, _old_decode(base, base.test, TRANSFORM), batch_size=256)
    images = ImageSet(base, base.test, TRANSFORM)
    same_batches = image_features(method, images, weights_hash="w", workers=2)
    assert set(same_batches) == set(old)
    for key in old:  # same batch boundaries: the same numbers
        assert torch.equal(same_batches[key], old[key])
    other_batches = image_features(method, images, weights_hash="w", workers=0, batch_size=5)
    for key in old:
        torch.testing.assert_close(other_batches[key], old[key], rtol=0, atol=1e-6)


def test_evaluate_split_takes_precomputed_features(spaces, clip_backbone):
    base, _ = spaces
    method = _method("zeroshot", clip_backbone)
    tensor = _old_decode(base, base.test, TRANSFORM)
    labels = torch.as_tensor(base.test.labels)
    noises = [EvalNoise(build_perturbation("drop", None), 0.5)]
    args = (labels, list(base.classnames), base.template, list(base.templates),
            base.descriptions, noises, 1, "tiny-shapes")
    old = evaluate_split(method, "base", tensor, *args, draws=2)
    streamed = ImageSet(base, base.test, TRANSFORM).batches(batch_size=256, workers=0)
    new = evaluate_split(method, "base", streamed, *args, draws=2)
    cached = evaluate_split(method, "base", encode_images(method, tensor), *args, draws=2)
    for result in (new, cached):
        np.testing.assert_array_equal(result.clean_logits, old.clean_logits)
        np.testing.assert_array_equal(result.noisy_logits["drop@0.5"],
                                      old.noisy_logits["drop@0.5"])


def test_frozen_flag_is_declared_not_inherited(clip_backbone):
    assert is_frozen(_method("zeroshot", clip_backbone))
    assert is_frozen(_method("coop", clip_backbone, n_ctx=2))
    assert not is_frozen(_method("dapt", clip_backbone, n_ctx=2))  # a CoOp subclass

    class Prompted(METHODS.get("coop")):
        pass

    assert not is_frozen(Prompted(Prompted.Params(n_ctx=2), BackboneAdapter(clip_backbone)))


def test_feature_key_covers_weights_transform_and_images(spaces, clip_backbone):
    base, new = spaces
    adapter = BackboneAdapter(clip_backbone)
    images = ImageSet(base, base.test, TRANSFORM)
    key = feature_key("w1", images, adapter)
    rebuilt = ImageSet(base, Subset(base.test.parent, list(base.test.indices)), TRANSFORM)
    assert feature_key("w1", rebuilt, adapter) == key  # same images: same key
    assert feature_key("w2", images, adapter) != key
    other_transform = eval_transform(16, (0.4, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert feature_key("w1", ImageSet(base, base.test, other_transform), adapter) != key
    assert feature_key("w1", ImageSet(new, new.test, TRANSFORM), adapter) != key
    fewer = ImageSet(base, Subset(base.test.parent, base.test.indices[:-1]), TRANSFORM)
    assert feature_key("w1", fewer, adapter) != key


def test_file_digest_changes_when_an_image_file_changes(tmp_path: Path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    subset = Subset(PathSplit(paths, [0, 1, 2]), [0, 1, 2])
    before = subset_digest(subset)
    assert subset_digest(Subset(PathSplit(paths, [0, 1, 2]), [0, 1, 2])) == before
    Image.fromarray(np.full((9, 9, 3), 7, dtype=np.uint8)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))
    assert subset_digest(subset) != before


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_image_is_a_one_line_error(tmp_path: Path, workers: int):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(range(256)))
    split = PathSplit([str(good), str(bad)], [0, 1])

    class Source:
        load_image = staticmethod(load_image)

    with pytest.raises(AnbenchError) as info:
        ImageSet(Source(), Subset(split, [0, 1]), TRANSFORM).decode(workers=workers)
    message = str(info.value)
    assert "\n" not in message and "bad.jpg" in message and "cannot decode image" in message


def test_worker_count_defaults():
    assert resolve_workers(None, 10) == 0  # small sets decode in the calling process
    assert resolve_workers(None, 10_000) >= 1
    assert resolve_workers(3, 10) == 3


# ----------------------------------------------------------------------------- run_cell + cache

def _config(cache: Path, **run) -> BenchConfig:
    config = BenchConfig(run=RunSection(backbone="tiny-clip", datasets=["tiny-shapes"],
                                        cache_dir=str(cache), device="cpu", noise_draws=2,
                                        shots=4, **run),
                         methods={"coop": {"epochs": 1, "n_ctx": 2}})
    return config


def _cell(config: BenchConfig, env: CellEnvironment, method: str):
    key = CellKey("tiny-clip", "tiny-shapes", method, "none", 4, 1)
    return run_cell(resolve_cell(config, key, ["drop"], env.backbone.weights_hash), env)


def test_feature_cache_hits_across_methods_and_runs(tmp_path: Path):
    config = _config(tmp_path / "cache")
    env = CellEnvironment.load(config, progress=False)
    zeroshot = _cell(config, env, "zeroshot")
    assert env.feature_cache.stats.misses == 2  # base and new test sets, encoded once each
    coop = _cell(config, env, "coop")
    assert env.feature_cache.stats.hits == 2 and env.feature_cache.stats.misses == 2
    _cell(config, env, "dapt")  # prompted image path: never read from or written to the cache
    assert env.feature_cache.stats.hits == 2 and len(env.feature_cache) == 2
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2

    later = CellEnvironment.load(config, progress=False)  # another run: read from disk
    again = _cell(config, later, "zeroshot")
    assert later.feature_cache.stats.disk_hits == 2 and later.feature_cache.stats.misses == 0
    for name, value in zeroshot.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], value)

    off = _config(tmp_path / "cache-off", feature_cache=False)
    env_off = CellEnvironment.load(off, progress=False)
    assert env_off.feature_cache is None
    for method, cached in (("zeroshot", zeroshot), ("coop", coop)):
        fresh = _cell(off, env_off, method)
        for name, value in cached.arrays.items():
            np.testing.assert_array_equal(fresh.arrays[name], value)
    assert not (tmp_path / "cache-off" / "features").exists()
    assert set(zeroshot.meta["timing"]) == {"load", "train", "evaluate"}


def test_cell_matches_the_decoded_tensor_path(tmp_path: Path):
    config = _config(tmp_path / "cache")
    env = CellEnvironment.load(config, progress=False)
    result = _cell(config, env, "zeroshot")
    data = env.data("tiny-shapes", 1, 4)
    method = METHODS.get("zeroshot")(METHODS.get("zeroshot").Params(), env.adapter)
    for split, space in data.spaces.items():
        tensor = _old_decode(space, space.test, env.backbone.preprocess_eval)
        features = encode_images(method.eval(), tensor)
        np.testing.assert_allclose(result.arrays[f"{split}/logits/clean"],
                                   method.logits(features, torch.as_tensor(
                                       result.arrays[f"{split}/text/clean"]), split).numpy(),
                                   rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- cross-dataset

def _anbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _cross(out: Path, *extra: str) -> list[str]:
    plugins = [arg for path in PLUGINS for arg in ("--plugin", path)]
    return ["run", *plugins, "--backbone", "tiny-clip", "--methods", "zeroshot,coop",
            "--noise", "drop", "--out", str(out), "--quiet", "--shots", "4", "--seeds", "1",
            "--set", "run.noise_draws=2", "--set", "methods.coop.epochs=1",
            "--set", "run.protocol=cross-dataset", *extra]


def test_cross_dataset_runs_end_to_end(tmp_path: Path):
    args = _cross(tmp_path, "--datasets", "tiny-shapes,tiny-stripes",
                  "--set", "run.source_dataset=tiny-shapes")
    proc = _anbench(*args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "default" / "results.csv")
    clean = table[(table.eval_noise == "clean") & (table.metric == "acc")]
    assert set(clean.split) == {"all"}
    assert sorted(map(tuple, clean[["method", "dataset"]].values)) == [
        ("coop", "tiny-shapes"), ("coop", "tiny-stripes"),
        ("zeroshot", "tiny-shapes"), ("zeroshot", "tiny-stripes")]
    assert set(table[table.eval_noise == "drop"].dataset) == {"tiny-shapes", "tiny-stripes"}
    cells = sorted(p.relative_to(tmp_path / "default" / "cells").parts[:3]
                   for p in (tmp_path / "default" / "cells").rglob("COMPLETE"))
    assert cells == [("tiny-clip", "tiny-shapes", "coop"), ("tiny-clip", "tiny-shapes",
                                                             "zeroshot")]
    cell = next((tmp_path / "default" / "cells").rglob("coop/none/*"))
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["classes"]["tiny-stripes"][0] == "red horizontal stripes"
    with np.load(cell / "arrays.npz") as arrays:
        stripes = arrays["tiny-stripes/logits/clean"]
        assert stripes.shape == (20, 4)
        acc = 100 * float((stripes.argmax(1) == arrays["tiny-stripes/labels"]).mean())
    stored = clean[(clean.method == "coop") & (clean.dataset == "tiny-stripes")].value.item()
    assert stored == pytest.approx(acc, abs=1e-9)

    rerun = _anbench(*args, cwd=REPO)  # complete cells are skipped
    assert rerun.returncode == 0 and "0 cells run" in rerun.stderr + rerun.stdout


@pytest.mark.parametrize(("extra", "message"), [
    (["--datasets", "tiny-stripes"], "needs run.source_dataset"),
    (["--datasets", "tiny-shapes", "--set", "run.source_dataset=tiny-shapes"],
     "needs --datasets other than the source"),
])
def test_cross_dataset_bad_input(tmp_path: Path, extra: list[str], message: str):
    proc = _anbench(*_cross(tmp_path, *extra), cwd=REPO)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "default").exists()


def test_feature_cache_survives_a_damaged_file(spaces, clip_backbone, tmp_path: Path):
    base, _ = spaces
    method = _method("zeroshot", clip_backbone)
    images = ImageSet(base, base.test, TRANSFORM)
    first = image_features(method, images, weights_hash="w", workers=0,
                           cache=PrefixCache(directory=tmp_path))
    for path in tmp_path.glob("*.pt"):
        path.write_bytes(b"garbage")
    cache = PrefixCache(directory=tmp_path)
    second = image_features(method, images, weights_hash="w", workers=0, cache=cache)
    assert cache.stats.misses == 1
    assert torch.equal(first["clean"], second["clean"])
