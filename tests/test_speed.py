"""Issue 8: the speed optimisations change no result.

Frozen-prefix cache (memory, disk, keys, augmented-view banks), EOT / padding truncation of text
batches and evaluation reuse, each checked against the same computation without it, on the tiny
causal CLIP and the tiny BERT-style CLIP.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from anbench.backbones.adapter import BackboneAdapter
from anbench.data.images import train_transform
from anbench.evaluation import EvalNoise, encode_images, evaluate_split
from anbench.hashing import tensor_digest
from anbench.method import Method, MethodParams, TaskContext
from anbench.perturbation import build_perturbation, mix_features
from anbench.prefix_cache import (
    PrefixCache,
    cache_for,
    default_cache,
    prefix_key,
    preprocessing_tag,
)
from anbench.registry import METHODS
from anbench.training import train
from anbench.view_bank import augmented_views
from tests.tiny_models import tiny_clip

CLASSES = ["cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "an image of a {}."]
DESCRIPTIONS = {"cat": ["a small cat with dark stripes.", "a tabby cat."],
                "dog": ["a large dog.", "a dog with a red shirt."], "bird": []}
SMALL = {"coop": {"n_ctx": 4}, "dapt": {"n_ctx": 4, "n_visual": 4}}
TOL = 1e-4


class NoTrim(BackboneAdapter):
    """The same adapter without EOT / padding truncation: every text batch runs all columns."""

    def trim(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread sync dominates on a shared 2-core box
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["clip", "hf"])
def backbone(request, clip_backbone, hf_backbone):
    return clip_backbone if request.param == "clip" else hf_backbone


def make_task(seed: int = 1, **extra) -> TaskContext:
    return TaskContext(dataset="toy", classnames=list(CLASSES),
                       sentences=[TEMPLATES[0].format(c) for c in CLASSES],
                       descriptions=dict(DESCRIPTIONS), templates=list(TEMPLATES), seed=seed,
                       device=torch.device("cpu"), extra=dict(extra))


def data(n_per_class: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(n_per_class)
    means = torch.randn(len(CLASSES), 3, 16, 16, generator=gen)
    return means[labels] + 0.5 * torch.randn(len(labels), 3, 16, 16, generator=gen), labels


def build(name: str, adapter: BackboneAdapter, **overrides) -> Method:
    cls = METHODS.get(name)
    return cls(cls.Params(**{**SMALL.get(name, {}), **overrides}), adapter)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def counting(adapter: BackboneAdapter, monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count calls of one adapter method (e.g. image_input: one per image-tower batch)."""
    calls: list[int] = []
    original = getattr(adapter, name)

    def wrapped(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(adapter, name, wrapped)
    return calls


# ------------------------------------------------------------------ keys and the cache itself

def test_key_changes_with_weights_preprocessing_input_and_layer():
    base = dict(weights="w1", preprocessing="eval", tower="vision", end_layer=10,
                input_digest=tensor_digest(torch.zeros(2, 3)), precision="cpu:float32")
    key = prefix_key(**base)
    assert key == prefix_key(**base)
    for field, value in [("weights", "w2"), ("preprocessing", "augment"), ("tower", "text"),
                         ("end_layer", 9), ("input_digest", tensor_digest(torch.ones(2, 3))),
                         ("precision", "cuda:autocast-torch.bfloat16")]:
        assert prefix_key(**{**base, field: value}) != key, field
    # The digest sees dtype and shape, not only bytes.
    assert tensor_digest(torch.zeros(2, 3)) != tensor_digest(torch.zeros(3, 2))
    assert tensor_digest(torch.zeros(2)) != tensor_digest(torch.zeros(2, dtype=torch.float64))


def test_method_keys_follow_weights_and_preprocessing(clip_backbone):
    images, _ = data()
    keys = {}
    for label, backbone, prep in [("a", clip_backbone, "eval"), ("weights", tiny_clip(seed=5),
                                                                  "eval"),
                                  ("prep", clip_backbone, "augment")]:
        method = build("anprompt", BackboneAdapter(backbone))
        method._preprocessing = prep
        keys[label] = method._cache_key("vision", method.vision_first, tensor_digest(images))
    other_input = method._cache_key("vision", method.vision_first, tensor_digest(images + 1))
    assert len({*keys.values(), other_input}) == 4


def test_preprocessing_tag_and_task_cache():
    eval_tag = preprocessing_tag(train_transform(16, (0.5,) * 3, (0.5,) * 3, augment=False))
    train_tag = preprocessing_tag(train_transform(16, (0.5,) * 3, (0.5,) * 3, augment=True))
    other = preprocessing_tag(train_transform(16, (0.4,) * 3, (0.5,) * 3, augment=False))
    assert len({eval_tag, train_tag, other}) == 3 and "\n" not in eval_tag
    mine = PrefixCache()
    assert cache_for({"prefix_cache": mine}) is mine and cache_for({}) is default_cache()


def test_lru_by_bytes():
    cache = PrefixCache(max_bytes=3 * 4 * 100)  # room for three 100-float entries
    for i in range(4):
        cache.put(f"k{i}", {"x": torch.full((100,), float(i))})
    assert "k0" not in cache and len(cache) == 3 and cache.nbytes == 1200
    assert cache.get("k1") is not None  # k1 becomes the most recent
    cache.put("k4", {"x": torch.zeros(100)})
    assert "k2" not in cache and "k1" in cache
    cache.put("huge", {"x": torch.zeros(1000)})  # larger than the budget: not kept
    assert "huge" not in cache and len(cache) == 3


def test_disk_store_roundtrip_and_damage(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).view(2, 3), "mask": torch.tensor([True, False])}

    first = PrefixCache(directory=tmp_path)
    value = first.get_or_compute("abc", compute)
    assert (tmp_path / "abc.pt").is_file() and len(calls) == 1
    second = PrefixCache(directory=tmp_path)  # a new process: memory empty, disk kept
    again = second.get_or_compute("abc", compute)
    assert len(calls) == 1 and second.stats.disk_hits == 1
    assert max_diff(value, again) == 0 and again["mask"].dtype == torch.bool
    (tmp_path / "abc.pt").write_bytes(b"not a torch file")
    third = PrefixCache(directory=tmp_path)
    assert max_diff(third.get_or_compute("abc", compute), value) == 0 and len(calls) == 2
    assert PrefixCache(directory=tmp_path).get("abc") is not None  # rewritten intact


# ------------------------------------------------------------------ frozen-prefix cache: ANPrompt

def test_prefix_cache_on_off_same_loss_and_prompts(backbone):
    adapter = BackboneAdapter(backbone)
    images, labels = data()
    params = dict(epochs=2, batch_size=4, lr=5e-2, noise_samples=2, kmeans_n_init=1)
    states, losses = {}, {}
    for cached in (True, False):
        method = build("anprompt", adapter, cache_prefix=cached, **params)
        method.setup(make_task(prefix_cache=PrefixCache()), images, labels)
        inputs = method.training_inputs(images)
        assert isinstance(inputs, dict) == cached
        index = torch.tensor([0, 4, 8])
        batch = ({k: v[index] for k, v in inputs.items()} if cached else inputs[index])
        losses[cached] = {k: v.detach() for k, v in method.loss(batch, labels[index]).items()}
        train(method, images, labels, method.params, seed=3)
        states[cached] = method.prompt_state()
        features = encode_images(method, images)
        states[cached]["logits"] = method.logits(features, method.class_features(
            make_task().sentences), "base")
    assert max_diff(losses[True], losses[False]) <= TOL
    assert max_diff(states[True], states[False]) <= TOL
    untrained = build("anprompt", adapter).prompt_state()["anti_noise"]
    assert float((states[True]["anti_noise"] - untrained).abs().max()) > 1e-3  # it did train


def test_prefix_is_computed_once_per_input(clip_backbone, monkeypatch):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    cache = PrefixCache()
    vision = counting(adapter, monkeypatch, "image_input")
    text = counting(adapter, monkeypatch, "text_input")
    first = build("anprompt", adapter, epochs=3, batch_size=4, noise_samples=2, kmeans_n_init=1)
    first.setup(make_task(prefix_cache=cache), images, labels)
    text_setup = len(text)
    train(first, images, labels, first.params, seed=1)
    assert len(vision) == 1 and len(text) == text_setup  # 9 steps, no prefix recomputed
    second = build("anprompt-wo-waloss", adapter, epochs=1, noise_samples=2, kmeans_n_init=1)
    second.setup(make_task(prefix_cache=cache), images, labels)
    train(second, images, labels, second.params, seed=1)
    assert len(vision) == 1 and cache.stats.hits >= 2  # same images and sentences: reused
    uncached = build("anprompt", adapter, epochs=1, batch_size=4, cache_prefix=False,
                     noise_samples=2, kmeans_n_init=1)
    uncached.setup(make_task(prefix_cache=cache), images, labels)
    before = len(vision)
    train(uncached, images, labels, uncached.params, seed=1)
    assert len(vision) - before == 3  # the reference path: once per step


def test_disk_cache_gives_the_same_training(clip_backbone, tmp_path):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    states = []
    for _ in range(2):  # the second run reads every prefix from disk
        cache = PrefixCache(directory=tmp_path)
        method = build("anprompt", adapter, epochs=2, noise_samples=2, kmeans_n_init=1)
        method.setup(make_task(prefix_cache=cache), images, labels)
        train(method, images, labels, method.params, seed=2)
        states.append(method.prompt_state())
    assert cache.stats.disk_hits == 2 and cache.stats.misses == 0  # text + vision
    assert max_diff(*states) == 0


# ------------------------------------------------------------------ augmented views

def _pil_images(n: int = 4) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    arrays = (torch.rand(n, 24, 24, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]


def test_view_bank_is_deterministic_and_order_free():
    transform = train_transform(16, (0.5,) * 3, (0.5,) * 3, augment=True)
    pil = _pil_images()
    ids = [f"img{i}" for i in range(len(pil))]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    bank = augmented_views(pil, transform, 3, seed=7, ids=ids)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    assert bank.shape == (4, 3, 3, 16, 16)
    assert torch.equal(bank, augmented_views(pil, transform, 3, seed=7, ids=ids))
    assert not torch.equal(bank, augmented_views(pil, transform, 3, seed=8, ids=ids))
    assert not torch.equal(bank[:, 0], bank[:, 1])  # views differ from each other
    backwards = augmented_views(pil[::-1], transform, 3, seed=7, ids=ids[::-1])
    assert torch.equal(backwards, bank.flip(0))  # a view depends on its image id, not order


class _Recorder(Method):
    """Records which images each step sees and how often training_inputs runs."""

    def __init__(self, params: MethodParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.prepared: list[float] = []
        self.seen: list[tuple[int, float]] = []

    def training_inputs(self, images):
        self.prepared.append(float(images[:, 0, 0, 0].mean()))
        return images

    def loss(self, images, labels):
        self.seen.append((int(labels[0]), float(images[0, 0, 0, 0])))
        return {"w": (self.w - images.mean()) ** 2}


def test_trainer_uses_view_epoch_mod_v(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    n, views = 4, 3
    # Image i, view v holds the constant 10 * v + i.
    bank = (10 * torch.arange(views).view(1, views, 1, 1, 1)
            + torch.arange(n).view(n, 1, 1, 1, 1)).float().expand(n, views, 3, 2, 2)
    params = MethodParams(epochs=5, batch_size=n)
    method = _Recorder(params, adapter)
    train(method, bank, torch.arange(n), params, seed=0)
    assert len(method.prepared) == views  # each view's inputs prepared once
    for epoch, (label, value) in enumerate(method.seen):
        assert value == 10 * (epoch % views) + label
    single = _Recorder(params, adapter)
    flat = _Recorder(params, adapter)
    train(single, bank[:, :1], torch.arange(n), params, seed=0)
    train(flat, bank[:, 0], torch.arange(n), params, seed=0)
    assert single.seen == flat.seen and torch.equal(single.w, flat.w)


def test_anprompt_bank_cache_on_off(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    bank = torch.stack([images, images.flip(-1)], dim=1)  # two "views" per image
    states = []
    for cached in (True, False):
        cache = PrefixCache()
        method = build("anprompt", adapter, epochs=3, cache_prefix=cached, noise_samples=2,
                       kmeans_n_init=1)
        method.setup(make_task(prefix_cache=cache), images, labels)
        train(method, bank, labels, method.params, seed=4)
        states.append(method.prompt_state())
        assert len(cache) == (3 if cached else 0)  # text prefix + one vision entry per view
    assert max_diff(*states) <= TOL


# ------------------------------------------------------------------ EOT / padding truncation

@pytest.mark.parametrize("name", ["zeroshot", "coop", "dapt", "anprompt"])
def test_trim_leaves_text_features_unchanged(backbone, name):
    trimmed, full = BackboneAdapter(backbone), NoTrim(backbone)
    sentences = [TEMPLATES[1].format(c) for c in CLASSES] + ["a small cat with dark stripes."]
    tokens = trimmed.tokenize(sentences)
    assert trimmed.trim(tokens).shape[1] < tokens.shape[1]
    a, b = build(name, trimmed), build(name, full)  # same seeded init
    diff = (a.class_features(sentences) - b.class_features(sentences)).abs().max()
    assert float(diff) <= TOL


def test_trim_leaves_anprompt_training_unchanged(backbone):
    images, labels = data()
    states = []
    for adapter in (BackboneAdapter(backbone), NoTrim(backbone)):
        method = build("anprompt", adapter, epochs=2, noise_samples=2, kmeans_n_init=1)
        method.setup(make_task(prefix_cache=PrefixCache()), images, labels)
        train(method, images, labels, method.params, seed=5)
        states.append({**method.prompt_state(), "t_zero": method.t_zero, "t_wn": method.t_wn})
    assert max_diff(*states) <= TOL


# ------------------------------------------------------------------ evaluation reuse

NOISES = [("drop", 0.3), ("drop", 0.6), ("mask", 0.3), ("shuffle", 1.0), ("wsp", 1.0)]


def test_evaluation_encodes_images_once(clip_backbone, monkeypatch):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data(n_per_class=4)
    method = build("anprompt", adapter)
    noises = [EvalNoise(build_perturbation(n), s) for n, s in NOISES]
    vision = counting(adapter, monkeypatch, "image_input")
    text = counting(method, monkeypatch, "class_features")
    args = (images, labels, CLASSES, TEMPLATES[0], TEMPLATES, DESCRIPTIONS)
    clean = evaluate_split(method, "base", *args, [], 1, "toy")
    assert (len(vision), len(text)) == (1, 1)
    noisy = evaluate_split(method, "base", *args, noises, 1, "toy")
    assert (len(vision), len(text)) == (2, 1 + 1 + len(noises))  # one image pass per model
    assert abs(noisy.clean_logits - clean.clean_logits).max() == 0
    # The naive path: every condition encodes the images again.
    for noise in noises:
        features = encode_images(method, images)
        mixed = mix_features(torch.as_tensor(noisy.clean_text),
                             method.class_features(noisy.noisy_sentences[noise.key][0]),
                             noise.alpha)
        naive = method.logits(features, mixed, "base").numpy()
        assert abs(naive - noisy.noisy_logits[noise.key][0]).max() <= TOL


# ------------------------------------------------------------------ prompted blocks in pieces

@pytest.mark.parametrize("depth", [1, 2])
def test_head_only_and_frozen_qkv_keep_features(backbone, depth):
    adapter = BackboneAdapter(backbone)
    images, _ = data()
    first = adapter.vision_layers - depth
    prompts = [torch.randn(4, adapter.vision_width, generator=torch.Generator().manual_seed(i))
               for i in range(depth)]
    with torch.no_grad():
        prefix = adapter.image_blocks(adapter.image_input(images), 0, first)
        qkv = adapter.image_qkv(prefix, first)
        assert qkv is not None and qkv.shape[-1] == 3 * adapter.vision_width
        reference = adapter.image_head(adapter.image_blocks(prefix, first, None, prompts, first))
        for head_only in (False, True):
            for frozen in (None, qkv):
                out = adapter.image_head(adapter.image_blocks(
                    prefix, first, None, prompts, first, head_only=head_only, frozen_qkv=frozen))
                assert float((out.features - reference.features).abs().max()) <= 1e-5
                assert float((out.prompt_tokens - reference.prompt_tokens).abs().max()) <= 1e-5
        plain = adapter.image_head(adapter.image_blocks(prefix, first, None, head_only=True))
        full = adapter.encode_image(images).features  # = open_clip's encode_image
        assert float((plain.features - full).abs().max()) <= 1e-5
        with pytest.raises(ValueError):  # projections of un-prompted tokens need the prompts
            adapter.image_blocks(prefix, first, None, frozen_qkv=qkv)


def test_frozen_qkv_on_off_same_training(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    states = []
    for frozen in (True, False):
        method = build("anprompt", adapter, epochs=2, frozen_qkv=frozen, noise_samples=2,
                       kmeans_n_init=1)
        method.setup(make_task(prefix_cache=PrefixCache()), images, labels)
        assert ("qkv" in method.training_inputs(images)) == frozen
        train(method, images, labels, method.params, seed=6)
        states.append(method.prompt_state())
    assert max_diff(*states) <= TOL
