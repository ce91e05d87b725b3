"""The built-in methods on tiny real open_clip models: registration, parameters, ablation
switches, label-space hygiene, trainable parameters, determinism and prompt reloading."""

from __future__ import annotations

import math

import pytest
import torch

from anbench.backbones.adapter import BackboneAdapter
from anbench.method import Method, TaskContext
from anbench.perturbation import build_perturbation
from anbench.registry import METHODS
from anbench.training import train

BASE = ["cat", "dog", "bird"]
NEW = ["zebrasentinel", "okapisentinel"]
TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "an image of a {}."]
DESCRIPTIONS = {
    "cat": ["a small cat with dark stripes.", "a tabby cat."],
    "dog": ["a large dog.", "a dog with a red shirt."],
    "bird": [],
    # Present in the dataset's descriptions but not in the training label space.
    "zebrasentinel": ["a zebrasentinel with stripes."],
    "okapisentinel": ["an okapisentinel in the green."],
}
SMALL = {  # keep prompts short enough for the tiny models' 20-token context
    "coop": {"n_ctx": 4},
    "dapt": {"n_ctx": 4, "n_visual": 4},
}
TRAINED = ["coop", "dapt", "anprompt", "anprompt-wo-nrvpp", "anprompt-wo-waloss",
           "anprompt-wo-noise"]


def make_task(names=BASE, seed: int = 1, **extra) -> TaskContext:
    return TaskContext(
        dataset="toy", classnames=list(names),
        sentences=[TEMPLATES[0].format(n) for n in names],
        descriptions=dict(DESCRIPTIONS), templates=list(TEMPLATES), seed=seed,
        device=torch.device("cpu"), extra=dict(extra))


def data(n_per_class: int = 4, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n_per_class)
    # Class-dependent means so there is something to learn.
    means = torch.randn(classes, 3, 16, 16, generator=gen)
    images = means[labels] + 0.5 * torch.randn(len(labels), 3, 16, 16, generator=gen)
    return images, labels


def build(name: str, adapter: BackboneAdapter, **overrides) -> Method:
    cls = METHODS.get(name)
    params = cls.Params(**{**SMALL.get(name.split("-wo-")[0], {}), **overrides})
    return cls(params, adapter)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny ops are dominated by thread synchronisation; on a shared 2-core box one thread is
    # tens of times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adapter(clip_backbone) -> BackboneAdapter:
    return BackboneAdapter(clip_backbone)


# ------------------------------------------------------------------ registry and params

def test_registered_names():
    names = set(METHODS.names())
    assert {"zeroshot", "coop", "dapt", "anprompt", "anprompt-wo-nrvpp", "anprompt-wo-waloss",
            "anprompt-wo-noise"} <= names
    assert not METHODS.get("zeroshot").trains
    assert METHODS.get("anprompt").takes_train_noise
    assert not METHODS.get("dapt").takes_train_noise


def test_defaults_follow_the_spec():
    d = METHODS.get("dapt").Params()
    assert (d.optimizer, d.n_ctx, d.n_visual, d.beta_v, d.beta_t, d.inter_t) == (
        "sgd", 16, 16, 0.1, 0.1, 2.0)
    assert (d.momentum, d.weight_decay, d.warmup_lr, d.ctx_init_std) == (0.9, 5e-4, 1e-5, 0.02)
    a = METHODS.get("anprompt").Params()
    assert (a.optimizer, a.lr, a.batch_size, a.epochs, a.warmup_epochs) == (
        "adamw", 1e-3, 4, 10, 1)
    assert (a.n_prompts, a.depth, a.noise_samples, a.fusion, a.sim_weight, a.wa_weight,
            a.nrvpp_rank, a.nrvpp, a.noise_prompts) == (4, 2, 8, 0.7, 1.0, 1.0, 16, True, True)
    with pytest.raises(ValueError):
        METHODS.get("anprompt").Params(no_such_key=1)


def test_ablations_are_switches_of_one_class():
    full = METHODS.get("anprompt")
    for name, switch in [("anprompt-wo-nrvpp", {"nrvpp": False}),
                         ("anprompt-wo-waloss", {"wa_weight": 0.0}),
                         ("anprompt-wo-noise", {"noise_prompts": False})]:
        cls = METHODS.get(name)
        assert issubclass(cls, full) and issubclass(cls.Params, full.Params)
        defaults = cls.Params().model_dump()
        assert defaults == full.Params(**switch).model_dump()
        with pytest.raises(ValueError):  # constraints survive the changed default
            cls.Params(wa_weight=-1.0)


# ------------------------------------------------------------------ trainable parameters

def test_only_prompt_parameters_are_trainable(adapter: BackboneAdapter):
    d, tw, vw = adapter.embed_dim, adapter.text_width, adapter.vision_width
    expected = {
        "coop": 4 * tw,
        "dapt": 4 * tw + 4 * vw,
        # R + per-layer maps (2 layers, both encoders) + NRVPP low rank (16)
        "anprompt": 4 * d + 2 * (d * tw + tw) + 2 * (d * vw + vw) + vw * 16 + 16 * d,
        "anprompt-wo-nrvpp": 4 * d + 2 * (d * tw + tw) + 2 * (d * vw + vw),
        "zeroshot": 0,
    }
    for name, count in expected.items():
        method = build(name, adapter)
        trainable = list(method.trainable_parameters())
        assert sum(p.numel() for p in trainable) == count, name
        assert not any(p.requires_grad for p in adapter.model.parameters())
        named = {n for n, p in method.named_parameters() if p.requires_grad}
        assert not any(n.startswith("adapter.") for n in named), name


# ------------------------------------------------------------------ ablation switches

def _setup(name: str, adapter: BackboneAdapter, task: TaskContext | None = None, **overrides):
    images, labels = data()
    method = build(name, adapter, **overrides)
    method.setup(task or make_task(), images, labels)
    return method, images, labels


def test_wo_waloss_drops_only_the_wa_term(adapter: BackboneAdapter):
    full, images, labels = _setup("anprompt", adapter)
    wo, _, _ = _setup("anprompt-wo-waloss", adapter)
    a, b = full.loss(images[:4], labels[:4]), wo.loss(images[:4], labels[:4])
    assert set(a) == {"ce_clean", "ce_nrvpp", "sim", "wa"}
    assert set(b) == {"ce_clean", "ce_nrvpp", "sim"}
    for key in b:
        assert torch.equal(a[key], b[key]), key
    assert a["wa"].item() > 0


def test_wo_nrvpp_has_no_prompt_token_feature(adapter: BackboneAdapter):
    full, images, labels = _setup("anprompt", adapter)
    wo, _, _ = _setup("anprompt-wo-nrvpp", adapter)
    a, b = full.loss(images[:4], labels[:4]), wo.loss(images[:4], labels[:4])
    assert "ce_nrvpp" not in b and set(b) == {"ce_clean", "sim", "wa"}
    # Same prompts, same f^c: CE on z^c is weighted 1 instead of s; sim is unchanged.
    assert b["ce_clean"].item() == pytest.approx(a["ce_clean"].item() / 0.7, rel=1e-5)
    assert torch.equal(a["sim"], b["sim"])
    assert not any("nrvpp" in n for n, _ in wo.named_parameters())
    feats = wo.encode_images(images)
    assert set(feats) == {"clean"}
    text = wo.class_features(make_task().sentences)
    assert torch.equal(wo.logits(feats, text, "base"), wo.logits(feats, text, "new"))
    full_feats = full.encode_images(images)
    assert set(full_feats) == {"clean", "nrvpp"}
    assert torch.allclose(full_feats["clean"], feats["clean"], atol=1e-6)


def test_wo_noise_zeroes_only_the_noise_prompts(adapter: BackboneAdapter):
    full, _, _ = _setup("anprompt", adapter)
    wo, _, _ = _setup("anprompt-wo-noise", adapter)
    assert full.noise_centroids.abs().sum() > 0
    assert torch.equal(wo.noise_centroids, torch.zeros_like(wo.noise_centroids))
    for (n1, p1), (n2, p2) in zip(full.named_parameters(), wo.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)  # same init
    assert torch.equal(full.t_wn, wo.t_wn)  # the weak-noise targets are untouched


def test_prediction_rule(adapter: BackboneAdapter):
    method, images, _ = _setup("anprompt", adapter)
    feats = method.encode_images(images)
    text = method.class_features(make_task().sentences)
    tau = adapter.logit_scale
    z_c = tau * feats["clean"] @ text.T
    z_r = tau * feats["nrvpp"] @ text.T
    assert torch.allclose(method.logits(feats, text, "base"), 0.7 * z_c + 0.3 * z_r, atol=1e-5)
    assert torch.allclose(method.logits(feats, text, "new"), z_c, atol=1e-5)
    assert torch.allclose(method.logits(feats, text, "all"), z_c, atol=1e-5)


def test_weak_noise_follows_the_perturbation(adapter: BackboneAdapter):
    """alpha = inf (drop) replaces the clean feature; wsp's tiny alpha barely moves it."""
    wsp, _, _ = _setup("anprompt", adapter)
    drop_task = make_task()
    drop_task.train_noise = build_perturbation("drop", {"severity": 0.5})
    drop, _, _ = _setup("anprompt", adapter, task=drop_task)
    assert wsp.setup_info["noise"] == "wsp" and wsp.setup_info["alpha"] == 0.001
    assert drop.setup_info["noise"] == "drop" and math.isinf(drop.setup_info["alpha"])
    assert drop.setup_info["changed"] > 0
    assert not torch.equal(wsp.noise_centroids, drop.noise_centroids)


# ------------------------------------------------------------------ label-space hygiene

def test_new_class_text_never_reaches_setup_or_training(adapter: BackboneAdapter,
                                                        monkeypatch: pytest.MonkeyPatch):
    seen: list[str] = []
    original = adapter.tokenize

    def recording(texts):
        seen.extend(texts)
        return original(texts)

    monkeypatch.setattr(adapter, "tokenize", recording)
    images, labels = data()
    for name in ["dapt", "anprompt", "anprompt-wo-nrvpp"]:
        method = build(name, adapter, epochs=1, warmup_epochs=0)
        method.setup(make_task(), images, labels)
        train(method, images, labels, method.params, seed=1)
        if name == "dapt":
            assert method.prototypes.shape[0] == len(BASE)
    assert seen and not any("sentinel" in text for text in seen)
    method.class_features(["a photo of a zebrasentinel."])  # the recorder does see new text
    assert any("sentinel" in text for text in seen)


# ------------------------------------------------------------------ training

@pytest.mark.parametrize("name", TRAINED)
def test_a_few_steps_lower_the_loss(adapter: BackboneAdapter, name: str):
    images, labels = data()
    method = build(name, adapter, epochs=8, warmup_epochs=0, batch_size=len(labels),
                   lr=0.05 if name in ("coop", "dapt") else 5e-3)
    method.setup(make_task(), images, labels)
    with torch.no_grad():
        before = sum(method.loss(images, labels).values()).item()
    history = train(method, images, labels, method.params, seed=1)
    with torch.no_grad():
        after = sum(method.loss(images, labels).values()).item()
    assert len(history) == 8
    assert after < before, (name, before, after)


@pytest.mark.parametrize("name", ["dapt", "anprompt"])
def test_same_seed_same_prompts(adapter: BackboneAdapter, name: str):
    images, labels = data()
    states = []
    for seed in (1, 1, 2):
        method = build(name, adapter, epochs=2, warmup_epochs=0, lr=1e-2)
        method.setup(make_task(seed=seed), images, labels)
        train(method, images, labels, method.params, seed=seed)
        states.append(method.prompt_state())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("name", ["coop", "dapt", "anprompt", "anprompt-wo-nrvpp"])
def test_prompt_state_reloads_for_another_label_space(adapter: BackboneAdapter, name: str):
    images, labels = data()
    trained = build(name, adapter, epochs=1, warmup_epochs=0, lr=1e-2)
    trained.setup(make_task(), images, labels)
    train(trained, images, labels, trained.params, seed=1)
    state = trained.prompt_state()
    other = build(name, adapter)
    other.setup(make_task(NEW), *data(classes=len(NEW)))
    # Nothing in the state is sized by the label space: 3 and 2 classes give the same shapes.
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in other.prompt_state().items()}
    assert not any(word in key for key in state for word in ("prototypes", "t_wn", "t_zero"))
    if name.startswith("anprompt"):
        assert "noise_centroids" in state  # N is part of the trained prompt
    # A method built for the new label space (never set up) gets the same features.
    fresh = build(name, adapter)
    fresh.load_prompt_state(state)
    shared = ["a photo of a zebrasentinel.", "a photo of a cat."]
    assert torch.allclose(fresh.class_features(shared), trained.class_features(shared),
                          atol=1e-6)
    a, b = fresh.encode_images(images), trained.encode_images(images)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    new_text = fresh.class_features([TEMPLATES[0].format(n) for n in NEW])
    assert fresh.logits(a, new_text, "new").shape == (len(images), len(NEW))
    with pytest.raises(KeyError):
        fresh.load_prompt_state({**state, "bogus": torch.zeros(1)})


def test_hf_text_tower(hf_backbone):
    """Both trained methods run on the BERT-style tower (masked mean pooling)."""
    adapter = BackboneAdapter(hf_backbone)
    images, labels = data()
    for name in ["dapt", "anprompt"]:
        method = build(name, adapter, epochs=1, warmup_epochs=0)
        method.setup(make_task(), images, labels)
        history = train(method, images, labels, method.params, seed=1)
        assert all(math.isfinite(r["loss"]) for r in history)
        text = method.class_features(make_task().sentences)
        assert torch.allclose(text.norm(dim=-1), torch.ones(len(BASE)), atol=1e-5)


# ------------------------------------------------------------------ DAPT specifics

def test_dapt_prototypes_and_visual_init(adapter: BackboneAdapter, tmp_path):
    images, labels = data()
    method = build("dapt", adapter)
    method.setup(make_task(cache_dir=str(tmp_path)), images, labels)
    bound = math.sqrt(6 / (3 * adapter.patch_size ** 2 + adapter.vision_width))
    assert method.visual_prompts.abs().max() <= bound
    assert method.visual_prompts.shape == (4, adapter.vision_width)
    with torch.no_grad():
        frozen = torch.nn.functional.normalize(adapter.encode_image(images).features, dim=-1)
    expected = torch.stack([frozen[labels == c].mean(0) for c in range(len(BASE))])
    assert torch.allclose(method.prototypes, expected, atol=1e-6)
    assert method.prototype_info["cache"] == "miss"
    again = build("dapt", adapter)
    again.setup(make_task(cache_dir=str(tmp_path)), images, labels)
    assert again.prototype_info["cache"] == "hit"
    assert torch.equal(again.prototypes, method.prototypes)
    info = again.prototype_info
    assert info["weights_hash"] == adapter.backbone.weights_hash and info["seed"] == 1
    other = build("dapt", adapter)
    other.setup(make_task(seed=2, cache_dir=str(tmp_path)), images, labels)
    assert other.prototype_info["cache"] == "miss"  # provenance is part of the key
    nocache = build("dapt", adapter)
    nocache.setup(make_task(), images, labels)
    assert nocache.prototype_info["cache"] == "off"


def test_dapt_loss_terms_are_weighted(adapter: BackboneAdapter):
    method, images, labels = _setup("dapt", adapter, beta_v=2.0, beta_t=3.0)
    terms = method.loss(images, labels)
    with torch.no_grad():
        from anbench.methods._common import inter_dispersion, intra_dispersion
        image = method._image(images)
        text = method._text(method._train_tokens)
        assert terms["intra"].item() == pytest.approx(
            2.0 * intra_dispersion(image, method.prototypes, labels).item(), rel=1e-5)
        assert terms["inter"].item() == pytest.approx(3.0 * inter_dispersion(text).item(),
                                                      rel=1e-5)
    zero, _, _ = _setup("dapt", adapter, beta_v=0.0, beta_t=0.0)
    assert set(zero.loss(images, labels)) == {"ce"}


def test_zeroshot_matches_open_clip(adapter: BackboneAdapter):
    method = build("zeroshot", adapter)
    images, _ = data()
    sentences = make_task().sentences
    with torch.no_grad():
        ref_i = torch.nn.functional.normalize(adapter.model.encode_image(images), dim=-1)
        ref_t = torch.nn.functional.normalize(
            adapter.model.encode_text(adapter.tokenize(sentences)), dim=-1)
    feats = method.encode_images(images)
    text = method.class_features(sentences)
    assert torch.allclose(feats["clean"], ref_i, atol=1e-5)
    assert torch.allclose(text, ref_t, atol=1e-5)
    assert list(method.trainable_parameters()) == []
    assert train(method, images, torch.zeros(len(images), dtype=torch.long),
                 method.params, seed=1) == []


def test_dapt_prototypes_from_augmented_views(adapter: BackboneAdapter, tmp_path):
    """With the run's augmented views in `task.extra["train_views"]`, s_c is the mean over every
    view of class c; `prototype_source: eval` keeps the eval-transform images."""
    images, labels = data()
    gen = torch.Generator().manual_seed(5)
    views = images[:, None] + 0.5 * torch.randn(len(images), 3, *images.shape[1:], generator=gen)
    with torch.no_grad():
        def frozen(x):
            return torch.nn.functional.normalize(adapter.encode_image(x).features, dim=-1)
        per_view = frozen(views.flatten(0, 1)).view(len(images), 3, -1)
        plain = frozen(images)
    from_views = torch.stack([per_view[labels == c].mean(dim=(0, 1)) for c in range(len(BASE))])
    from_images = torch.stack([plain[labels == c].mean(0) for c in range(len(BASE))])
    assert not torch.allclose(from_views, from_images, atol=1e-3)  # the test can tell them apart

    method = build("dapt", adapter)
    method.setup(make_task(cache_dir=str(tmp_path), train_views=views), images, labels)
    assert torch.allclose(method.prototypes, from_views, atol=1e-6)
    assert method.prototype_info["views"] == 3 and method.prototype_info["cache"] == "miss"
    again = build("dapt", adapter)
    again.setup(make_task(cache_dir=str(tmp_path), train_views=views), images, labels)
    assert again.prototype_info["cache"] == "hit"
    assert torch.equal(again.prototypes, method.prototypes)

    evals = build("dapt", adapter, prototype_source="eval")
    evals.setup(make_task(cache_dir=str(tmp_path), train_views=views), images, labels)
    assert torch.allclose(evals.prototypes, from_images, atol=1e-6)
    assert evals.prototype_info["views"] == 0 and evals.prototype_info["cache"] == "miss"
    without = build("dapt", adapter)  # a run without augmentation gives no views
    without.setup(make_task(cache_dir=str(tmp_path)), images, labels)
    assert torch.equal(without.prototypes, evals.prototypes)
    with pytest.raises(ValueError, match="labels"):
        build("dapt", adapter).setup(make_task(train_views=views[:-1]), images, labels)


# ------------------------------------------------------------------ the paper's prompt form

def _clip77():
    """A tiny causal CLIP with ViT-B/16's tokenizer and 77-token context (as the vit-b-16
    backbone loads it: open_clip.get_tokenizer('ViT-B-16'))."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from anbench.backbones.base import LoadedBackbone, freeze, hash_state_dict

    torch.manual_seed(0)
    model = freeze(open_clip.CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(image_size=16, patch_size=4, width=32, layers=2, head_width=8),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)))
    return LoadedBackbone("tiny-clip-77", model, open_clip.get_tokenizer("ViT-B-16"),
                          lambda x: x, lambda x: x, hash_state_dict(model), "tiny CLIP, 77 tokens")


@pytest.mark.parametrize("name", ["coop", "dapt"])
def test_vit_b_16_prompt_is_the_official_one(name: str):
    """bench.yaml's vit-b-16 setting gives the prompt of CoOp's / DAPT's official code:
    prompt_prefix = " ".join(["X"] * n_ctx); prompts = [prompt_prefix + " " + name + "."],
    tokenised with CLIP's tokenizer (trainers/coop.py in KaiyangZhou/CoOp)."""
    import open_clip

    from anbench.config import load_config
    from anbench.evaluation import class_sentences

    params = load_config().plugin_params("methods", name, backbone="vit-b-16",
                                         dataset="caltech101")
    assert params.class_sentence == "name" and params.n_ctx == 16
    names = ["cat", "yorkshire terrier", "t-shirt/top"]
    method = METHODS.get(name)(params, BackboneAdapter(_clip77()))
    task = make_task(names)
    task.sentences = class_sentences(method, names, "a photo of a {}.")
    images, labels = data(n_per_class=2)
    method.setup(task, images, labels)
    tokens = method._train_tokens
    official = open_clip.tokenize([" ".join(["X"] * 16) + " " + n + "." for n in names])
    assert torch.equal(tokens, official[:, :tokens.shape[1]])
    assert not official[:, tokens.shape[1]:].any()  # trimming cut padding only
    decoded = open_clip.get_tokenizer("ViT-B-16").decode([int(t) for t in tokens[1] if t])
    assert decoded == "<start_of_text>" + "x " * 16 + "yorkshire terrier . <end_of_text>"
