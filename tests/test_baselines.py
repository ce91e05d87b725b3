"""The CoOp-family baselines (cocoop, kgcoop, maple, promptsrc) on tiny real open_clip models:
loss terms recomputed by hand from the adapter, CoCoOp's batched form against the official
per-image loop, its zero meta-net against CoOp, deep-prompt semantics, GPA, trainable parameters
and determinism."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anbench.backbones.adapter import BackboneAdapter
from anbench.evaluation import evaluate_split
from anbench.method import Method
from anbench.perturbation import build_perturbation, mix_features
from anbench.registry import METHODS
from anbench.training import train
from tests.test_methods import TEMPLATES, data, make_task

BASELINES = ["cocoop", "kgcoop", "maple", "promptsrc"]
SMALL = {"maple": {"depth": 2}, "promptsrc": {"depth_text": 2, "depth_vision": 3}}


def module_of(name: str):
    """The module a method was registered from (imported by the registry, not by name here)."""
    return importlib.import_module(METHODS.get(name).__module__)


def build(name: str, adapter: BackboneAdapter, **overrides) -> Method:
    cls = METHODS.get(name)
    return cls(cls.Params(**{**SMALL.get(name, {}), **overrides}), adapter)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["clip", "hf"])
def adapter(request, clip_backbone, hf_backbone) -> BackboneAdapter:
    return BackboneAdapter(clip_backbone if request.param == "clip" else hf_backbone)


@pytest.fixture(scope="module")
def clip_adapter(clip_backbone) -> BackboneAdapter:
    return BackboneAdapter(clip_backbone)


def frozen(adapter: BackboneAdapter, sentences: list[str], normalize: bool = True
           ) -> torch.Tensor:
    with torch.no_grad():
        return adapter.encode_text(adapter.tokenize(sentences), normalize=normalize).float()


def frozen_image(adapter: BackboneAdapter, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(adapter.encode_image(images).features.float(), dim=-1)


# ------------------------------------------------------------------ registry

def test_registered_in_order():
    entries = {e.name: e for e in METHODS.entries()}
    for name in BASELINES:
        assert name in entries and METHODS.get(name).trains
        assert "order" in entries[name].meta
    orders = [entries[name].meta["order"] for name in BASELINES]
    assert orders == sorted(orders) and min(orders) > entries["dapt"].meta["order"]


# ------------------------------------------------------------------ context from words

def test_context_from_words_is_the_hand_written_prompt(adapter):
    """Context initialised from "a photo of a" in front of "{name}." is exactly the frozen
    encoder on "a photo of a {name}." (both text-tower layouts): the splice and the word
    embeddings agree."""
    task = make_task()
    task.sentences = [f"{name}." for name in task.classnames]
    method = build("kgcoop", adapter)
    method.setup(task, *data())
    assert method.ctx.shape[0] == 4
    ours = method.class_features(task.sentences)
    reference = frozen(adapter, [f"a photo of a {name}." for name in task.classnames])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_random_context_without_init_words(clip_adapter):
    method = build("kgcoop", clip_adapter, ctx_init="", n_ctx=3)
    method.setup(make_task(seed=2), *data())
    assert method.ctx.shape == (3, clip_adapter.text_width)
    assert 0.005 < float(method.ctx.detach().std()) < 0.05  # N(0, 0.02^2)


# ------------------------------------------------------------------ kgcoop

def test_kgcoop_loss_by_hand(adapter):
    task = make_task()
    method = build("kgcoop", adapter)
    images, labels = data()
    method.setup(task, images, labels)
    with torch.no_grad():
        method.ctx.add_(0.05 * torch.randn(method.ctx.shape, generator=torch.Generator()
                                           .manual_seed(3)))
    terms = method.loss(images, labels)
    # Independently: prompted text via the adapter, the hand-crafted prompt via the frozen
    # encoder with the dataset template (task.templates[0]).
    tokens = adapter.context_tokens(4, task.sentences)
    text = adapter.encode_text(tokens, context=method.ctx, normalize=True).float()
    hand = frozen(adapter, [TEMPLATES[0].format(n) for n in task.classnames])
    image = frozen_image(adapter, images)
    logits = adapter.logit_scale * image @ text.T
    cos = (text * hand).sum(-1)  # both unit vectors
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, labels), atol=1e-5,
                               rtol=1e-5)
    expected_kg = 8.0 * (1 - cos.mean())
    torch.testing.assert_close(terms["kg"], expected_kg, atol=1e-5, rtol=1e-5)
    # The paper's form: squared L2 distance of unit vectors is twice the code's 1 - cos.
    l2 = ((text - hand) ** 2).sum(-1).mean()
    torch.testing.assert_close(2 * terms["kg"] / 8.0, l2, atol=1e-5, rtol=1e-5)


def test_kgcoop_weight_zero_drops_the_term(clip_adapter):
    method = build("kgcoop", clip_adapter, kg_weight=0.0)
    images, labels = data()
    method.setup(make_task(), images, labels)
    assert set(method.loss(images, labels)) == {"ce"}


# ------------------------------------------------------------------ cocoop

def per_image_logits(method, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The official loop (trainers/cocoop.py CustomCLIP.forward): one text pass per image."""
    adapter = method.adapter
    rows = []
    for f in image:
        ctx_i = method.ctx + method.meta_net(f)[None]
        text = adapter.encode_text(tokens, context=ctx_i, normalize=True).float()
        rows.append(adapter.logit_scale * f @ text.T)
    return torch.stack(rows)


@pytest.mark.parametrize("text_rows", [8192, 4])  # one text pass, and chunks of 1 image
def test_cocoop_batched_equals_per_image(adapter, text_rows):
    task = make_task()
    method = build("cocoop", adapter, text_rows=text_rows)
    images, labels = data()
    method.setup(task, images, labels)
    tokens = method._tokens(task.sentences)
    image = frozen_image(adapter, images)
    expected = per_image_logits(method, tokens, image)
    batched = method.conditional_logits({"clean": image}, task.sentences, "base")
    torch.testing.assert_close(batched, expected.detach(), atol=1e-4, rtol=1e-4)
    loss = method.loss(images, labels)["ce"]
    torch.testing.assert_close(loss, F.cross_entropy(expected, labels), atol=1e-5, rtol=1e-5)
    # Gradients of the batched loss match the per-image loop's.
    grads = torch.autograd.grad(loss, [method.ctx, method.meta_net[2].weight])
    ref = torch.autograd.grad(F.cross_entropy(per_image_logits(method, tokens, image), labels),
                              [method.ctx, method.meta_net[2].weight])
    for ours, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_cocoop_meta_net_shape(clip_adapter):
    method = build("cocoop", clip_adapter)
    dim = clip_adapter.embed_dim
    assert method.meta_net[0].in_features == dim
    assert method.meta_net[0].out_features == max(dim // 16, 1)
    assert method.meta_net[2].out_features == clip_adapter.text_width


def test_cocoop_with_zero_meta_net_equals_coop(adapter):
    task = make_task()
    images, labels = data()
    cocoop = build("cocoop", adapter)
    cocoop.setup(task, images, labels)
    with torch.no_grad():
        cocoop.meta_net[2].weight.zero_()
        cocoop.meta_net[2].bias.zero_()
    coop = METHODS.get("coop")(METHODS.get("coop").Params(n_ctx=4), adapter)
    coop.setup(task, images, labels)
    with torch.no_grad():
        coop.ctx.copy_(cocoop.ctx)
    torch.testing.assert_close(cocoop.loss(images, labels)["ce"], coop.loss(images, labels)["ce"],
                               atol=1e-5, rtol=1e-5)
    features = coop.encode_images(images)
    expected = coop.logits(features, coop.class_features(task.sentences), "base")
    ours = cocoop.conditional_logits(features, task.sentences, "base")
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # Its stored class text features are the context alone (pi = 0): CoOp's.
    torch.testing.assert_close(cocoop.class_features(task.sentences),
                               coop.class_features(task.sentences), atol=1e-5, rtol=1e-5)


def test_cocoop_noise_mixing_is_per_image(clip_adapter):
    task = make_task()
    method = build("cocoop", clip_adapter)
    images, labels = data()
    method.setup(task, images, labels)
    image = frozen_image(clip_adapter, images)
    noisy = ["a photo of a red cat.", "a photo of the dog.", "bird."]
    tokens = method._tokens(task.sentences)
    noisy_tokens = method._tokens(noisy)
    with torch.no_grad():
        clean_t = method.conditional_text(tokens, image)
        noisy_t = method.conditional_text(noisy_tokens, image)
    alpha = 0.5
    mixed = F.normalize(clean_t + alpha * noisy_t, dim=-1)
    expected = clip_adapter.logit_scale * torch.einsum("nd,ncd->nc", image, mixed)
    ours = method.conditional_logits({"clean": image}, noisy, "base", task.sentences, alpha)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    only_noisy = method.conditional_logits({"clean": image}, noisy, "base", task.sentences,
                                           math.inf)
    torch.testing.assert_close(only_noisy, method.conditional_logits({"clean": image}, noisy,
                                                                     "base"))


def test_cocoop_evaluation_uses_conditional_logits(clip_adapter):
    """evaluate_split scores CoCoOp with image-conditioned text, clean and perturbed."""
    task = make_task()
    method = build("cocoop", clip_adapter)
    images, labels = data()
    method.setup(task, images, labels)
    noise = build_perturbation("drop")
    from anbench.evaluation import EvalNoise

    result = evaluate_split(method, "base", images, labels, task.classnames, TEMPLATES[0],
                            TEMPLATES, {}, [EvalNoise(noise, 0.5)], seed=1, dataset="toy")
    image = method.encode_images(images)
    expected = method.conditional_logits(image, task.sentences, "base")
    np.testing.assert_allclose(result.clean_logits, expected.numpy(), atol=1e-4, rtol=1e-4)
    noisy_sentences = result.noisy_sentences["drop@0.5"][0]
    expected_noisy = method.conditional_logits(image, noisy_sentences, "base", task.sentences,
                                               noise.alpha)
    np.testing.assert_allclose(result.noisy_logits["drop@0.5"][0], expected_noisy.numpy(),
                               atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ maple / deep prompts

def manual_deep_text(adapter, tokens, ctx, deep):
    """The official replace rule, block by block: before text block j (1 <= j < J) the n
    context slots are overwritten with deep[j - 1]."""
    from dataclasses import replace

    n = ctx.shape[0]
    state = adapter.text_input(tokens, ctx)
    for layer in range(adapter.text_layers):
        if 1 <= layer <= len(deep):
            x = state.x.clone()
            x[:, 1:1 + n] = deep[layer - 1].to(x.dtype)
            state = replace(state, x=x)
        state = adapter.text_blocks(state, layer, layer + 1)
    return F.normalize(adapter.text_head(state).float(), dim=-1)


def test_maple_text_and_vision_prompts(adapter):
    task = make_task()
    method = build("maple", adapter)
    images, labels = data()
    method.setup(task, images, labels)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for prompt in method.deep_text:
            prompt.copy_(torch.randn(prompt.shape, generator=gen))
    tokens = method._tokens(task.sentences)
    with torch.no_grad():
        expected_text = manual_deep_text(adapter, tokens, method.ctx, list(method.deep_text))
        # Coupling: layer j's vision prompt is the j-th linear map of layer j's text prompt.
        language = [method.ctx, *method.deep_text]
        vision = [F.linear(p, layer.weight, layer.bias)
                  for p, layer in zip(language, method.couple, strict=True)]
        expected_image = F.normalize(adapter.encode_image(images, prompts=vision).features, dim=-1)
    text = method.class_features(task.sentences)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=1e-5)
    image = method.encode_images(images)["clean"]
    torch.testing.assert_close(image, expected_image, atol=1e-5, rtol=1e-5)
    terms = method.loss(images, labels)
    logits = adapter.logit_scale * expected_image @ expected_text.T
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, labels), atol=1e-5,
                               rtol=1e-5)
    # The deep prompt is really used: changing it changes the text features (a random change:
    # a constant shift of a token would vanish in the pre-norms).
    with torch.no_grad():
        method.deep_text[0].add_(torch.randn(method.deep_text[0].shape, generator=gen))
    assert not torch.allclose(method.class_features(task.sentences), text, atol=1e-4)


def test_maple_depth_beyond_layers_is_refused(clip_adapter):
    with pytest.raises(ValueError, match="exceeds the encoders' layers"):
        build("maple", clip_adapter, depth=clip_adapter.text_layers + 1)


# ------------------------------------------------------------------ promptsrc

def test_promptsrc_losses_by_hand(adapter):
    task = make_task()
    method = build("promptsrc", adapter, teacher_templates="dataset")
    images, labels = data()
    method.setup(task, images, labels)
    terms = method.loss(images, labels)
    with torch.no_grad():
        tokens = method._tokens(task.sentences)
        text = manual_deep_text(adapter, tokens, method.ctx, list(method.deep_text))
        image = F.normalize(adapter.encode_image(images, prompts=list(method.vision))
                            .features.float(), dim=-1)
        f0 = frozen_image(adapter, images)
        raw = torch.stack([frozen(adapter, [t.format(n) for n in task.classnames], False)
                           for t in TEMPLATES]).mean(0)
        teacher = F.normalize(raw, dim=-1)
    tau = adapter.logit_scale
    z, z0 = tau * image @ text.T, tau * f0 @ teacher.T
    p0 = z0.softmax(-1)
    kl = (p0 * (p0.log() - z.log_softmax(-1))).sum() / z.numel()
    expected = {"ce": F.cross_entropy(z, labels),
                "scl_text": 25.0 * (text - teacher).abs().mean(),
                "scl_image": 10.0 * (image - f0).abs().mean(),
                "scl_logits": kl}
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].detach(), value, atol=1e-5, rtol=1e-4)
    # Zero weights drop the terms.
    bare = build("promptsrc", adapter, text_weight=0, image_weight=0, logit_weight=0)
    bare.setup(task, images, labels)
    assert set(bare.loss(images, labels)) == {"ce"}


def test_promptsrc_imagenet_teacher_has_60_templates(clip_adapter):
    IMAGENET_TEMPLATES = module_of("promptsrc").IMAGENET_TEMPLATES  # noqa: N806
    assert len(IMAGENET_TEMPLATES) == 60 and len(set(IMAGENET_TEMPLATES)) == 60
    assert all("{}" in t for t in IMAGENET_TEMPLATES)


def test_gpa_weights_by_hand():
    gpa_weights = module_of("promptsrc").gpa_weights
    w = gpa_weights(20, 15.0, 1.0).numpy()
    e = np.arange(1, 21)
    g = np.exp(-0.5 * (e - 15.0) ** 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(w, g / g.sum(), rtol=1e-12)
    assert w.argmax() == 14 and abs(w.sum() - 1) < 1e-12
    with pytest.raises(ValueError, match="zero weight"):
        gpa_weights(3, 1e6, 1.0)


def test_promptsrc_gpa_is_the_weighted_sum_of_epoch_prompts(clip_adapter):
    gpa_weights = module_of("promptsrc").gpa_weights
    method = build("promptsrc", clip_adapter, epochs=3, batch_size=6, gpa_mean=2.0,
                   gpa_std=1.0, lr=0.05)
    images, labels = data()
    method.setup(make_task(), images, labels)
    snapshots: list[dict[str, torch.Tensor]] = []
    original = method.on_epoch_end

    def spy(epoch: int, epochs: int) -> None:
        snapshots.append({k: v.detach().clone() for k, v in method.named_parameters()
                          if v.requires_grad})
        original(epoch, epochs)

    method.on_epoch_end = spy
    train(method, images, labels, method.params, seed=1)
    weights = gpa_weights(3, 2.0, 1.0)
    assert len(snapshots) == 3
    for name, param in method.named_parameters():
        if param.requires_grad:
            expected = sum(float(w) * s[name].double() for w, s in zip(weights, snapshots,
                                                                        strict=True))
            torch.testing.assert_close(param.detach().double(), expected, atol=1e-6,
                                       rtol=1e-6)
    assert not torch.allclose(snapshots[0]["ctx"], snapshots[-1]["ctx"])


# ------------------------------------------------------------------ all four

@pytest.mark.parametrize("name", BASELINES)
def test_only_prompt_parameters_train(clip_adapter, name):
    backbone_before = {k: v.clone() for k, v in clip_adapter.model.state_dict().items()}
    method = build(name, clip_adapter, epochs=2, batch_size=6, lr=0.05)
    images, labels = data()
    method.setup(make_task(), images, labels)
    before = {k: v.clone() for k, v in method.prompt_state().items()}
    history = train(method, images, labels, method.params, seed=1)
    assert history and all(math.isfinite(r["loss"]) for r in history)
    assert not any(p.requires_grad for p in clip_adapter.model.parameters())
    for key, value in clip_adapter.model.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    after = method.prompt_state()
    assert set(after) == set(before)
    prefixes = {"cocoop": ("ctx", "meta_net."), "kgcoop": ("ctx",),
                "maple": ("ctx", "deep_text.", "couple."),
                "promptsrc": ("ctx", "deep_text.", "vision.")}[name]
    assert all(key.startswith(prefixes) for key in after), sorted(after)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # something learned


@pytest.mark.parametrize("name", BASELINES)
def test_deterministic_and_reloadable(clip_adapter, name):
    images, labels = data()

    def run(seed: int) -> tuple[Method, dict[str, torch.Tensor]]:
        method = build(name, clip_adapter, epochs=2, batch_size=6, lr=0.05, ctx_init="")
        method.setup(make_task(seed=seed), images, labels)
        train(method, images, labels, method.params, seed=seed)
        return method, method.prompt_state()

    first, state = run(1)
    _, again = run(1)
    _, other = run(2)
    for key in state:
        assert torch.equal(state[key], again[key]), key
    assert any(not torch.equal(state[k], other[k]) for k in state)
    # Reloading the prompts into a fresh instance (another label space) reproduces the text.
    fresh = build(name, clip_adapter, epochs=2, batch_size=6, lr=0.05, ctx_init="")
    fresh.setup(make_task(names=["car", "plane"], seed=7), images[:4], labels[:4] % 2)
    fresh.load_prompt_state(state)
    sentences = ["a photo of a car.", "a photo of a plane."]
    torch.testing.assert_close(fresh.class_features(sentences), first.class_features(sentences))
    if name == "cocoop":
        feats = first.encode_images(images)
        torch.testing.assert_close(fresh.conditional_logits(feats, sentences, "new"),
                                   first.conditional_logits(feats, sentences, "new"))
    else:
        torch.testing.assert_close(fresh.encode_images(images)["clean"],
                                   first.encode_images(images)["clean"])


def test_mix_features_broadcasts_over_images():
    """CoCoOp's per-image mixing relies on mix_features acting on the last dim only."""
    a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    for i in range(2):
        torch.testing.assert_close(mix_features(a, b, 0.3)[i], mix_features(a[i], b[i], 0.3))


# ------------------------------------------------------------------ published numbers

def test_published_numbers_are_consistent():
    from anbench.metrics import harmonic_mean
    from anbench.reporting.published import published_base_to_new

    table = published_base_to_new()
    assert set(table["rows"]) >= {"zeroshot", "coop", *BASELINES}
    for method, row in table["rows"].items():
        assert row["source"] in table["sources"], method
        # Each README's HM is the HM of its Base and New (to the 2 decimals printed).
        assert abs(harmonic_mean(row["base"], row["new"]) - row["hm"]) < 0.01, method


def test_base_to_new_report_shows_published_rows_for_vit_b_16(tmp_path):
    from tests.test_reports import build as build_report
    from tests.test_reports import synthetic_results

    mini = build_report(tmp_path / "mini", synthetic_results(), "csv", ["base-to-new"])
    assert [t.name for t in mini.outcome("base-to-new").result.tables] == ["base-to-new"]
    df = synthetic_results()
    df["backbone"] = "vit-b-16"
    vit = build_report(tmp_path / "vit", df, "md", ["base-to-new"])
    tables = vit.outcome("base-to-new").result.tables
    assert [t.name for t in tables] == ["base-to-new", "base-to-new-published"]
    published = tables[1]
    assert published.cell(["published", "promptsrc"], published.columns[2].key).mean == 79.97
    assert published.cell(["published", "cocoop"], published.columns[0].key).mean == 80.47
    text = (vit.index.parent / "tables" / "base-to-new-published.md").read_text()
    assert "79.97" in text and "PromptSRC README" in text
