"""Image conditions at evaluation: the subsample, the corrupted-image path, metrics, rows,
arrays, caches, settings and an end-to-end run through the CLI (tiny CLIP, generated images)."""

from __future__ import annotations

import math
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
from anbench import metrics
from anbench.cell import CellEnvironment, resolve_cell, run_cell
from anbench.config import BenchConfig, ConfigError, RunSection, load_config
from anbench.data.base import ArraySplit, Subset, load_image
from anbench.data.images import eval_transform
from anbench.data.loader import ImageSet
from anbench.evaluation import EvalNoise, SplitResult, result_arrays, result_rows
from anbench.image_eval import eval_positions, make_image_eval, split_transform
from anbench.image_perturbation import ImagePerturbation, build_image_perturbation
from anbench.prefix_cache import PrefixCache
from anbench.registry import DATASETS, IMAGE_PERTURBATIONS, METHODS, AnbenchError
from anbench.results_schema import RESULT_COLUMNS, with_modality
from anbench.store import CellKey

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "tests" / "plugins" / "tiny_suite.py")


class Unchanged(ImagePerturbation):
    """Acts on pixels and returns them as they are: the corrupted path must then give the clean
    features exactly."""

    category = "digital"
    stochastic = False

    def corrupt(self, image, rng, severity):
        return image.copy()


def _config(cache: Path, **run) -> BenchConfig:
    return BenchConfig(run=RunSection(backbone="tiny-clip", datasets=["tiny-shapes"],
                                      cache_dir=str(cache), device="cpu", noise_draws=2,
                                      shots=4, **run),
                       methods={"coop": {"epochs": 1, "n_ctx": 2}})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> CellEnvironment:
    return CellEnvironment.load(_config(tmp_path_factory.mktemp("cache")), progress=False)


def _zeroshot(env: CellEnvironment):
    cls = METHODS.get("zeroshot")
    return cls(cls.Params(), env.adapter).eval()


# ------------------------------------------------------------------ subsample and transforms

def test_the_subsample_is_fixed_by_image_ids_not_by_order_or_seed(tmp_path: Path):
    loaded = DATASETS.get("tiny-shapes")().load(tmp_path)
    n = len(loaded.test)
    forward = ImageSet(loaded, Subset(loaded.test, range(n)), None)
    backward = ImageSet(loaded, Subset(loaded.test, list(reversed(range(n)))), None)
    picked = eval_positions(forward, 7, "tiny-shapes", "base")
    assert len(picked) == 7 and list(picked) == sorted(set(picked.tolist()))
    mirrored = eval_positions(backward, 7, "tiny-shapes", "base")
    assert sorted(n - 1 - mirrored) == list(picked)  # the same images, wherever they sit
    assert list(eval_positions(forward, 7, "tiny-shapes", "base")) == list(picked)
    assert list(eval_positions(forward, 7, "tiny-shapes", "new")) != list(picked)
    for everything in (0, None, n, n + 5):
        assert list(eval_positions(forward, everything, "tiny-shapes", "base")) == list(
            range(n))


def test_corrupting_between_geometry_and_tensor_is_exact():
    transform = eval_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    geometry, rest = split_transform(transform)
    assert geometry is not None
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 255, (20, 24, 3), dtype=np.uint8),
                  np.repeat(rng.integers(0, 255, (20, 24, 1), dtype=np.uint8), 3, axis=2)):
        image = Image.fromarray(array)
        assert torch.equal(rest(geometry(image)), transform(image))
    plain = object()
    assert split_transform(plain) == (None, plain)


def test_an_unchanged_image_through_the_corrupted_path_gives_the_clean_features(env):
    data = env.data("tiny-shapes", 1, 4)
    method = _zeroshot(env)
    for split, images in data.images.items():
        image_eval = make_image_eval(method, images, dataset="tiny-shapes", split=split,
                                     seed=1, limit=5, draws=1, features=env.image_features)
        clean = env.image_features(method, images)["clean"][torch.as_tensor(
            image_eval.positions)]
        through = image_eval.encode(Unchanged(), 1.0, 0)["clean"]
        torch.testing.assert_close(through, clean, rtol=0, atol=1e-6)
    # grey images are stored as one channel and come back as the same RGB
    grey = np.random.default_rng(0).integers(0, 255, (6, 20, 20), dtype=np.uint8)
    images = ImageSet(_Loader(), Subset(ArraySplit(grey, np.zeros(6, int)), range(6)),
                      env.backbone.preprocess_eval)
    image_eval = make_image_eval(method, images, dataset="grey", split="all", seed=1, limit=4,
                                 draws=1, features=env.image_features)
    clean = env.image_features(method, images)["clean"][torch.as_tensor(image_eval.positions)]
    torch.testing.assert_close(image_eval.encode(Unchanged(), 1.0, 0)["clean"], clean,
                               rtol=0, atol=1e-6)


class _Loader:
    @staticmethod
    def load_image(item):
        return load_image(item)


def test_corrupted_images_and_frozen_features_are_cached_and_equal_uncached(tmp_path: Path,
                                                                              env):
    data = env.data("tiny-shapes", 1, 4)
    images, method = data.images["base"], _zeroshot(env)
    fog = build_image_perturbation("fog")

    def build(cache, features):
        return make_image_eval(method, images, dataset="tiny-shapes", split="base", seed=3,
                               limit=6, draws=1, features=features, cache=cache)

    from anbench.feature_cache import image_features

    feature_cache = PrefixCache(directory=tmp_path / "features")

    def cached(m, image_set):
        return image_features(m, image_set, weights_hash="w", cache=feature_cache)

    def uncached(m, image_set):
        return image_features(m, image_set, weights_hash="w", cache=None)

    first = build(PrefixCache(directory=tmp_path / "corrupted"), cached)
    a = first.encode(fog, 4.0, 0)["clean"]
    assert first.stats["corrupted_computed"] == 1 and feature_cache.stats.misses == 1
    again = build(PrefixCache(directory=tmp_path / "corrupted"), cached)  # a later run
    b = again.encode(fog, 4.0, 0)["clean"]
    assert again.stats["corrupted_computed"] == 0 and again.stats["corrupted_cached"] == 1
    assert feature_cache.stats.hits == 1  # the frozen features of the corrupted images
    c = build(None, uncached).encode(fog, 4.0, 0)["clean"]
    assert torch.equal(a, b) and torch.equal(a, c)
    other_seed = make_image_eval(method, images, dataset="tiny-shapes", split="base", seed=4,
                                 limit=6, draws=1, features=uncached).encode(fog, 4.0, 0)
    assert not torch.equal(other_seed["clean"], a)  # the run seed keys the corruption
    assert len(list((tmp_path / "corrupted").glob("*.pt"))) == 1


# ------------------------------------------------------------------ metrics, rows, arrays

def _split_result(split: str) -> SplitResult:
    labels = np.array([0, 1, 2, 0, 1, 2])
    clean = np.eye(3)[labels] * 5.0  # clean: all right
    clean[5] = np.eye(3)[0] * 5.0  # ... but image 5 (label 2) predicted 0
    res = SplitResult(split, labels, ["a", "b", "c"], clean, np.eye(3))
    res.image_positions = np.array([1, 3, 5])
    noisy = np.stack([np.eye(3)[[1, 1, 2]], np.eye(3)[[2, 0, 0]]])  # two draws on 3 images
    res.image_logits["fog@2"] = noisy
    res.image_shift["fog@2"] = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.6]])
    return res


def test_image_metrics_by_hand():
    res = _split_result("base")
    # the subsample's labels [1, 0, 2]; clean predictions there [1, 0, 0] (2 of 3 right);
    # draw 0 predicts [1, 1, 2] (2 right, 1 kept), draw 1 [2, 0, 0] (1 right, 2 kept)
    assert np.allclose(res.draw_values("fog@2", "acc"), [100 * 2 / 3, 100 / 3])
    assert np.allclose(res.draw_values("fog@2", "as"), [0.0, -100 / 3])
    assert np.allclose(res.draw_values("fog@2", "lpr"), [100 / 3, 100 * 2 / 3])
    assert np.allclose(res.draw_values("fog@2", "ifs"), [0.2, 0.2])
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    g = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert np.allclose(metrics.image_feature_shift_per_image(f, g), [1 - 1 / math.sqrt(2), 2.0])
    assert math.isclose(metrics.image_feature_shift(f, g), (1 - 1 / math.sqrt(2) + 2) / 2)
    assert metrics.METRICS["ifs"].better == "lower"


def test_rows_carry_the_modality_and_image_metrics():
    fog = EvalNoise(build_image_perturbation("fog"), 2.0)
    results = [_split_result("base"), _split_result("new")]
    rows = pd.DataFrame(result_rows(results, [fog], {"method": "m"}))
    assert set(rows.modality) == {"none", "image"}
    assert set(rows[rows.eval_noise == "clean"].modality) == {"none"}
    image = rows[rows.modality == "image"]
    assert set(image.metric) == {"acc", "as", "lpr", "ifs", "acc_std", "as_std", "lpr_std",
                                 "ifs_std", "hm", "hm_std"}
    assert image.alpha.isna().all() and set(image.severity) == {2.0}
    base = image[image.split == "base"].set_index("metric").value
    assert math.isclose(base["acc"], 50.0) and math.isclose(base["ifs"], 0.2)
    assert math.isclose(base["acc_std"], np.std([100 * 2 / 3, 100 / 3], ddof=1))
    assert math.isclose(base["as"], -50 / 3) and math.isclose(base["lpr"], 50.0)
    hm = image[(image.split == "base-new") & (image.metric == "hm")].value.item()
    assert math.isclose(hm, 50.0)  # the mean of per-draw HMs (equal splits: the accuracies)
    one_draw = _split_result("base")
    for table in (one_draw.image_logits, one_draw.image_shift):
        table["fog@2"] = table["fog@2"][:1]
    single = pd.DataFrame(result_rows([one_draw], [fog], {}))
    assert single[single.metric.str.endswith("_std")].value.isna().all()  # one draw: unknown
    arrays = result_arrays(results)
    assert arrays["base/image_logits/fog@2"].shape == (2, 3, 3)
    assert arrays["base/image_ifs/fog@2"].shape == (2, 3)
    assert list(arrays["base/image_index"]) == [1, 3, 5]
    assert not any(name.startswith("base/logits/fog") for name in arrays)


def test_results_written_before_the_modality_column_still_load(tmp_path: Path):
    old = pd.DataFrame({c: ["x"] for c in RESULT_COLUMNS if c != "modality"})
    old = pd.concat([old, old], ignore_index=True)
    old["eval_noise"] = ["clean", "drop"]
    filled = with_modality(old)
    assert list(filled.columns) == RESULT_COLUMNS
    assert list(filled.modality) == ["none", "text"]
    new = filled.copy()
    new.loc[1, "modality"] = "image"
    assert list(with_modality(new).modality) == ["none", "image"]  # present values are kept


# ------------------------------------------------------------------ settings and the plan

@pytest.mark.parametrize(("assignment", "key"), [
    ("run.image_eval_images=-1", "run.image_eval_images"),
    ("run.image_eval_images=abc", "run.image_eval_images"),
    ("run.image_eval_images=true", "run.image_eval_images"),
    ("run.image_eval_images=1.5", "run.image_eval_images"),
    ("run.image_noise_draws=0", "run.image_noise_draws"),
    ("run.image_noise_draws=null", "run.image_noise_draws"),
])
def test_image_settings_are_validated(assignment: str, key: str):
    with pytest.raises(ConfigError) as info:
        load_config(None, [assignment])
    assert f"'{key}'" in str(info.value) and "\n" not in str(info.value)


def test_image_settings_enter_the_fingerprint_only_with_image_conditions(env):
    config = _config(Path(env.cache_dir), image_eval_images=8)
    key = CellKey("tiny-clip", "tiny-shapes", "zeroshot", "none", 4, 1)
    text_only = resolve_cell(config, key, ["drop"], "w")
    assert "image_eval" not in text_only.identity()
    with_images = resolve_cell(config, key, ["drop", "fog"], "w")
    assert with_images.identity()["image_eval"] == [8, 1]
    other = resolve_cell(_config(Path(env.cache_dir), image_eval_images=9), key,
                         ["drop", "fog"], "w")
    assert other.fingerprint != with_images.fingerprint
    assert resolve_cell(_config(Path(env.cache_dir), image_eval_images=9), key, ["drop"],
                        "w").fingerprint == text_only.fingerprint


def test_an_image_corruption_cannot_be_a_training_noise():
    from anbench.runner import make_plan

    config = load_config(None, ["run.methods=[anprompt]", "run.train_noise=[gaussian-noise]"])
    with pytest.raises(AnbenchError, match="gaussian-noise cannot be a training noise"):
        make_plan(config)
    plan = make_plan(load_config(None, ["run.methods=[anprompt]", "run.noise=[image,wsp]"]))
    assert {key.train_noise for key in plan.cells} == {"image-feature-mix", "wsp"}
    assert "gaussian-noise" in plan.eval_noise


# ------------------------------------------------------------------ a cell and the CLI

def test_run_cell_evaluates_image_conditions(env):
    config = _config(Path(env.cache_dir), image_eval_images=5, image_noise_draws=2)
    key = CellKey("tiny-clip", "tiny-shapes", "coop", "none", 4, 1)
    spec = resolve_cell(config, key, ["drop", "contrast", "gaussian-noise",
                                      "image-feature-mix"], env.backbone.weights_hash)
    result = run_cell(spec, env)
    rows = result.rows
    assert list(rows.columns) == RESULT_COLUMNS
    image = rows[rows.modality == "image"]
    assert set(image.eval_noise) == {"contrast", "gaussian-noise", "image-feature-mix"}
    contrast_std = image[(image.eval_noise == "contrast") & (image.metric == "acc_std")]
    assert (contrast_std.value == 0).all()  # draws nothing: both draws are the same
    logits = result.arrays["base/image_logits/gaussian-noise@5"]
    assert logits.shape[:2] == (2, 5) and not np.array_equal(logits[0], logits[1])
    index = result.arrays["base/image_index"]
    labels = result.arrays["base/labels"][index]
    acc = image[(image.split == "base") & (image.eval_noise == "gaussian-noise")
                & (image.severity == 5) & (image.metric == "acc")].value.item()
    assert math.isclose(acc, np.mean([metrics.accuracy(lg, labels) for lg in logits]))
    assert result.meta["image_eval"]["evaluated"] == {"base": 5, "new": 5}


def test_anprompt_trains_with_the_weak_image_noise(env):
    config = _config(Path(env.cache_dir))
    config.methods["anprompt"] = {"epochs": 2, "noise_samples": 2}

    def prompts(noise: str) -> dict[str, torch.Tensor]:
        key = CellKey("tiny-clip", "tiny-shapes", "anprompt", noise, 4, 1)
        result = run_cell(resolve_cell(config, key, ["drop"], env.backbone.weights_hash), env)
        return result.prompts

    mixed, again, wsp = prompts("image-feature-mix"), prompts("image-feature-mix"), prompts("wsp")
    assert all(torch.equal(mixed[k], again[k]) for k in mixed)  # seeded per step
    # the text side used wsp in both: the weak-noise centroids N are the same ...
    assert torch.equal(mixed["noise_centroids"], wsp["noise_centroids"])
    # ... while mixing the batch's image features changed what was learnt
    assert any(not torch.equal(mixed[k], wsp[k]) for k in mixed)


def _anbench(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=900)


def _tiny(out: Path, cache: Path, *extra: str, methods: str = "zeroshot,coop,anprompt"
          ) -> list[str]:
    return ["run", "--plugin", PLUGIN, "--backbone", "tiny-clip", "--datasets", "tiny-shapes",
            "--methods", methods, "--noise", "wsp", "--eval-noise",
            "text,image", "--train-noise", "image-feature-mix", "--out", str(out), "--quiet",
            "--seeds", "1", "--set", "run.noise_draws=2", "--set", "methods.coop.epochs=1",
            "--set", "methods.anprompt.epochs=1", "--set", "methods.anprompt.noise_samples=2",
            "--set", "run.image_eval_images=6", "--set", f"run.cache_dir={cache}", *extra]


@pytest.mark.slow
def test_a_tiny_run_with_text_and_image_noise_through_the_cli(tmp_path: Path):
    proc = _anbench(*_tiny(tmp_path / "runs", tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "runs" / "default" / "results.csv")
    assert list(table.columns) == RESULT_COLUMNS
    assert set(table.modality) == {"none", "text", "image"}
    image = table[table.modality == "image"]
    assert set(image.eval_noise) == set(IMAGE_PERTURBATIONS.names())
    assert set(image.metric) >= {"acc", "as", "lpr", "ifs", "hm"}
    assert set(table[table.method == "anprompt"].train_noise) == {"image-feature-mix"}
    # the frozen methods' corrupted features came from the feature cache; without it: equal
    proc = _anbench(*_tiny(tmp_path / "nocache", tmp_path / "cache2", "--set",
                           "run.feature_cache=false", methods="zeroshot,coop"))
    assert proc.returncode == 0, proc.stderr
    fresh = pd.read_csv(tmp_path / "nocache" / "default" / "results.csv")
    keys = ["method", "split", "eval_noise", "severity", "metric"]
    frozen = image[image.method.isin(["zeroshot", "coop"])].set_index(keys).value.sort_index()
    again = fresh[fresh.modality == "image"].set_index(keys).value.sort_index()
    pd.testing.assert_series_equal(frozen, again, check_exact=False, rtol=0, atol=1e-9)


def test_image_rows_through_the_cli(tmp_path: Path):
    out = tmp_path / "runs"
    proc = _anbench("run", "--plugin", PLUGIN, "--backbone", "tiny-clip", "--datasets",
                    "tiny-shapes", "--methods", "zeroshot", "--eval-noise", "drop,noise",
                    "--out", str(out), "--quiet", "--seeds", "1", "--set",
                    "run.image_eval_images=4", "--set", f"run.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "default" / "results.csv")
    image = table[table.modality == "image"]
    assert set(image.eval_noise) == {"gaussian-noise", "shot-noise", "impulse-noise"}
    assert set(table[table.eval_noise == "drop"].modality) == {"text"}
    assert len(list((tmp_path / "cache" / "corrupted").glob("*.pt"))) == 2 * 3 * 5
