"""Pieces shared by the CoOp-family baselines (CoCoOp, KgCoOp, MaPLe, PromptSRC): context
initialised from words, deep prompts that overwrite the context slots of the text encoder, and
the frozen teacher features. The leading underscore keeps the registry's scan away from it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from anbench.backbones.adapter import BackboneAdapter

from ._common import frozen_text, generator, init_normal_


@torch.no_grad()
def init_context_(ctx: torch.Tensor, adapter: BackboneAdapter, phrase: str, std: float,
                  seed: int, stream: str) -> bool:
    """The official initialisation of n learned context vectors: the input embeddings of the
    first n tokens of `phrase` ("a photo of a") when it has at least n tokens, else
    N(0, std^2) (CoOp's generic context; MaPLe / PromptSRC fall back to it for n > 4).
    Returns True when the words were used."""
    n = ctx.shape[0]
    words = adapter.word_embeddings(phrase) if phrase else None
    if words is not None and words.shape[0] >= n:
        ctx.copy_(words[:n].to(ctx.dtype))
        return True
    init_normal_(ctx, std, generator(seed, stream))
    return False


def phrase_length(adapter: BackboneAdapter, phrase: str) -> int:
    """Number of tokens of `phrase` (CoCoOp / KgCoOp take n_ctx from their init words)."""
    return int(adapter.word_embeddings(phrase).shape[0]) if phrase else 0


def encode_text_deep(adapter: BackboneAdapter, tokens: torch.Tensor, ctx: torch.Tensor,
                     deep: list[torch.Tensor]) -> torch.Tensor:
    """Text features (not normalised) of `"X ... X {sentence}"` tokens with `ctx` ([n, width]
    or [B, n, width]) written over the X slots at the input, and `deep[j]` written over the same
    n slots at the input of block j + 1 (MaPLe / PromptSRC's deep language prompts: the
    official blocks replace x[1:1+n] of the previous block's output)."""
    state = adapter.text_input(tokens, ctx)
    if deep:
        # The context occupies slots 1..n: tell the adapter so later prompts overwrite them.
        state = replace(state, n_prompts=int(ctx.shape[-2]))
    state = adapter.text_blocks(state, prompts=deep, first_layer=1)
    return adapter.text_head(state)


def teacher_text(adapter: BackboneAdapter, classnames: list[str], templates: list[str]
                 ) -> torch.Tensor:
    """n(mean over templates of E_T(template(class))): PromptSRC's frozen textual features
    (un-normalised per template, averaged, then normalised, as trainers/promptsrc.py); with one
    template, KgCoOp's hand-crafted features n(E_T(template(class)))."""
    sentences = [template.format(name) for template in templates for name in classnames]
    features = frozen_text(adapter, sentences) if len(templates) == 1 else _raw_text(
        adapter, sentences)
    features = features.reshape(len(templates), len(classnames), -1).mean(dim=0)
    return F.normalize(features, dim=-1)


@torch.no_grad()
def _raw_text(adapter: BackboneAdapter, sentences: list[str], chunk: int = 256) -> torch.Tensor:
    out = []
    with adapter.autocast():
        for start in range(0, len(sentences), chunk):
            tokens = adapter.trim(adapter.tokenize(sentences[start:start + chunk]))
            out.append(adapter.encode_text(tokens).float())
    return torch.cat(out)
