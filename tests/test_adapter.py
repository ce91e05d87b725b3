"""The backbone adapter against open_clip's own encoders, for both text-tower layouts."""

from __future__ import annotations

import pytest
import torch

from anbench.backbones.adapter import BackboneAdapter

SENTENCES = ["a photo of a cat.", "a small red bird with dark stripes.", "a dog."]
LAYOUTS = ["clip_backbone", "hf_backbone"]


@pytest.fixture(params=LAYOUTS)
def adapter(request: pytest.FixtureRequest) -> BackboneAdapter:
    return BackboneAdapter(request.getfixturevalue(request.param))


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _prompts(n_layers: int, k: int, width: int, seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(k, width, generator=gen) for _ in range(n_layers)]


def test_no_prompts_equals_open_clip(adapter: BackboneAdapter):
    tokens = adapter.tokenize(SENTENCES)
    ref_text = adapter.model.encode_text(tokens)
    assert (adapter.encode_text(tokens) - ref_text).abs().max() <= 1e-5
    images = _images()
    ref_image = adapter.model.encode_image(images)
    out = adapter.encode_image(images)
    assert (out.features - ref_image).abs().max() <= 1e-5
    assert out.prompt_tokens is None


def test_layouts_are_detected(clip_backbone, hf_backbone):
    assert BackboneAdapter(clip_backbone).text_layout == "causal"
    assert BackboneAdapter(hf_backbone).text_layout == "hf"
    assert BackboneAdapter(hf_backbone).mask_token == "[MASK]"


def test_block_ranges_compose(adapter: BackboneAdapter):
    """Running [0, l) then [l, L) equals one run: what the frozen-prefix cache relies on."""
    tokens = adapter.tokenize(SENTENCES)
    first = adapter.text_layers - 1
    prompts = _prompts(1, 2, adapter.text_width)
    whole = adapter.encode_text(tokens, prompts=prompts, first_layer=first)
    prefix = adapter.text_blocks(adapter.text_input(tokens), 0, first)
    split = adapter.text_head(adapter.text_blocks(prefix, first, None, prompts, first))
    assert torch.equal(whole, split)
    images = _images()
    vprompts = _prompts(1, 2, adapter.vision_width)
    whole_img = adapter.encode_image(images, vprompts, first).features
    vprefix = adapter.image_blocks(adapter.image_input(images), 0, first)
    split_img = adapter.image_head(adapter.image_blocks(vprefix, first, None, vprompts, first))
    assert torch.equal(whole_img, split_img.features)


@pytest.mark.parametrize("first_layer", [1, 2])
def test_prompts_leave_earlier_layers_unchanged(adapter: BackboneAdapter, first_layer: int):
    tokens = adapter.tokenize(SENTENCES)
    n = adapter.text_layers - first_layer
    prompts = _prompts(n, 3, adapter.text_width)
    clean = adapter.text_input(tokens)
    prompted = adapter.text_input(tokens)
    for layer in range(adapter.text_layers):
        clean = adapter.text_blocks(clean, layer, layer + 1)
        prompted = adapter.text_blocks(prompted, layer, layer + 1, prompts, first_layer)
        if layer < first_layer:
            assert torch.equal(clean.x, prompted.x), f"layer {layer} changed"
        elif layer >= first_layer:
            assert prompted.x.shape[1] == clean.x.shape[1] + 3
    with_prompts = adapter.text_head(prompted)
    assert (with_prompts - adapter.text_head(clean)).abs().max() > 1e-4  # prompts do act


def test_later_layers_overwrite_prompt_slots(adapter: BackboneAdapter):
    tokens = adapter.tokenize(SENTENCES)
    first = adapter.text_layers - 2
    prompts = _prompts(2, 3, adapter.text_width)
    state = adapter.text_blocks(adapter.text_input(tokens), 0, first + 1, prompts, first)
    state = adapter._with_text_prompt(state, prompts[1])
    assert torch.equal(state.x[:, 1:4], prompts[1].expand(len(SENTENCES), -1, -1))
    assert state.n_prompts == 3


def test_pooled_position_follows_the_sentence(clip_backbone, hf_backbone):
    causal = BackboneAdapter(clip_backbone)
    tokens = causal.tokenize(SENTENCES)
    eot = tokens.argmax(dim=-1)
    k = 4
    state = causal.text_blocks(causal.text_input(tokens), prompts=_prompts(1, k, 32), first_layer=1)
    assert torch.equal(state.pooled.float().argmax(dim=-1), eot + k)
    model = causal.model
    expected = model.ln_final(state.x[torch.arange(3), eot + k]) @ model.text_projection
    assert torch.allclose(causal.text_head(state), expected)

    hf = BackboneAdapter(hf_backbone)
    tokens = hf.tokenize(SENTENCES)
    state = hf.text_blocks(hf.text_input(tokens), prompts=_prompts(1, k, 32), first_layer=1)
    sentence = tokens != 0
    assert torch.equal(state.pooled[:, 1:1 + k], torch.zeros(3, k, dtype=torch.bool))
    assert torch.equal(state.pooled[:, [0, *range(1 + k, state.x.shape[1])]], sentence)
    means = torch.stack([state.x[i, state.pooled[i]].mean(0) for i in range(3)])
    assert torch.allclose(hf.text_head(state), hf.model.text.proj(means), atol=1e-6)


def test_prompted_text_does_not_depend_on_batch_padding(adapter: BackboneAdapter):
    prompts = _prompts(2, 3, adapter.text_width)
    first = adapter.text_layers - 2
    batch = adapter.encode_text(adapter.tokenize(SENTENCES), prompts=prompts, first_layer=first)
    alone = adapter.encode_text(adapter.tokenize(SENTENCES[:1]), prompts=prompts, first_layer=first)
    assert (batch[:1] - alone).abs().max() <= 1e-5


def test_context_equal_to_placeholder_embeddings_is_identity(adapter: BackboneAdapter):
    tokens = adapter.context_tokens(4, ["cat.", "dog."])
    placeholder = tokens[0, 1]
    if adapter.text_layout == "hf":
        table = adapter._hf_embeddings.word_embeddings
    else:
        table = adapter.model.token_embedding
    context = table(placeholder).expand(4, -1)
    assert (adapter.encode_text(tokens, context=context)
            - adapter.model.encode_text(tokens)).abs().max() <= 1e-5
    other = torch.randn(4, adapter.text_width)
    assert (adapter.encode_text(tokens, context=other)
            - adapter.model.encode_text(tokens)).abs().max() > 1e-4


def test_shallow_and_deep_image_prompts(adapter: BackboneAdapter):
    images = _images()
    k = 5
    shallow = adapter.encode_image(images, _prompts(1, k, adapter.vision_width), first_layer=0)
    assert shallow.prompt_tokens.shape == (3, k, adapter.vision_width)
    assert (shallow.features - adapter.model.encode_image(images)).abs().max() > 1e-4
    deep = adapter.encode_image(images, _prompts(2, k, adapter.vision_width), first_layer=1)
    assert deep.features.shape == (3, adapter.embed_dim)


def test_only_prompt_parameters_receive_gradients(adapter: BackboneAdapter):
    context = torch.nn.Parameter(torch.randn(4, adapter.text_width) * 0.02)
    text_prompt = torch.nn.Parameter(torch.randn(2, adapter.text_width) * 0.02)
    image_prompt = torch.nn.Parameter(torch.randn(2, adapter.vision_width) * 0.02)
    tokens = adapter.context_tokens(4, ["cat.", "dog."])
    text = adapter.encode_text(tokens, context=context, prompts=[text_prompt],
                               first_layer=adapter.text_layers - 1, normalize=True)
    image = adapter.encode_image(_images(2), [image_prompt], adapter.vision_layers - 1)
    logits = torch.nn.functional.normalize(image.features, dim=-1) @ text.T
    logits.logsumexp(-1).sum().backward()
    for param in (context, text_prompt, image_prompt):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert all(p.grad is None for p in adapter.model.parameters())
    assert not any(p.requires_grad for p in adapter.model.parameters())


def test_trim_keeps_features(adapter: BackboneAdapter):
    """Cutting trailing columns after the last pooled / real token changes no feature."""
    tokens = adapter.tokenize(SENTENCES)
    trimmed = adapter.trim(tokens)
    assert trimmed.shape[1] < tokens.shape[1]
    assert torch.equal(trimmed, tokens[:, :trimmed.shape[1]])
    full = adapter.encode_text(tokens)
    assert (adapter.encode_text(trimmed) - full).abs().max() <= 1e-5
    prompts = _prompts(2, 3, adapter.text_width)
    first = adapter.text_layers - 2
    full = adapter.encode_text(tokens, prompts=prompts, first_layer=first)
    cut = adapter.encode_text(trimmed, prompts=prompts, first_layer=first)
    assert (cut - full).abs().max() <= 1e-5
