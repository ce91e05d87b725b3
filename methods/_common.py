"""Pieces shared by the built-in methods: seeded initialisation, frozen encodings and the loss
formulas of DAPT and ANPrompt as small pure functions (so tests can check them by hand).

The leading underscore keeps the registry's package scan from treating this as a plugin.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from anbench.backbones.adapter import BackboneAdapter
from anbench.hashing import json_digest, tensor_digest
from anbench.seeds import torch_generator


def generator(seed: int, *parts: Any) -> torch.Generator:
    """A CPU generator that depends only on (seed, parts): each parameter group draws from its
    own stream, so adding or removing a module (an ablation) leaves the others' init unchanged."""
    return torch_generator(int(seed), *map(str, parts))


@torch.no_grad()
def init_normal_(param: torch.Tensor, std: float, gen: torch.Generator) -> None:
    param.copy_(torch.randn(param.shape, generator=gen) * std)


@torch.no_grad()
def init_uniform_(param: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * bound)


@torch.no_grad()
def init_linear_(layer: torch.nn.Linear, gen: torch.Generator) -> None:
    """nn.Linear's own default (kaiming-uniform, a=sqrt(5)), drawn from `gen`."""
    bound = 1 / math.sqrt(layer.in_features)
    init_uniform_(layer.weight, bound, gen)
    if layer.bias is not None:
        init_uniform_(layer.bias, bound, gen)


def is_images(inputs: Any) -> bool:
    """Raw image batches are [B, 3, H, W]; anything else is a method's cached training input."""
    return isinstance(inputs, torch.Tensor) and inputs.dim() == 4


@torch.no_grad()
def frozen_text(adapter: BackboneAdapter, sentences: list[str], chunk: int = 256) -> torch.Tensor:
    """n(E_T(s)) of the frozen, un-prompted text encoder, float32 [N, d]."""
    out = []
    with adapter.autocast():
        for start in range(0, len(sentences), chunk):
            tokens = adapter.trim(adapter.tokenize(sentences[start:start + chunk]))
            out.append(adapter.encode_text(tokens, normalize=True).float())
    return torch.cat(out) if out else torch.zeros(0, adapter.embed_dim, device=adapter.device)


@torch.no_grad()
def frozen_images(adapter: BackboneAdapter, images: torch.Tensor, chunk: int = 256
                  ) -> torch.Tensor:
    """n(E_I(x)) of the frozen, un-prompted image encoder, float32 [N, d]."""
    out = []
    with adapter.autocast():
        for start in range(0, len(images), chunk):
            batch = images[start:start + chunk].to(adapter.device)
            out.append(F.normalize(adapter.encode_image(batch).features.float(), dim=-1))
    return torch.cat(out)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of `features` (DAPT's prototypes: means of normalised features, not
    re-normalised). Every class must have at least one sample."""
    labels = labels.to(features.device).long()
    counts = torch.bincount(labels, minlength=num_classes)
    if counts.numel() > num_classes or bool((counts[:num_classes] == 0).any()):
        missing = [c for c in range(num_classes) if c >= counts.numel() or counts[c] == 0]
        raise ValueError(f"labels must cover classes 0..{num_classes - 1}; missing {missing}")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype,
                       device=features.device)
    sums.index_add_(0, labels, features)
    return sums / counts[:, None].to(features.dtype)


# --------------------------------------------------------------------------- DAPT losses

def intra_dispersion(image_features: torch.Tensor, prototypes: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """DAPT's visual loss: mse(n(f_i), s_{y_i}), mean over batch and feature dims."""
    return F.mse_loss(F.normalize(image_features, dim=-1), prototypes[labels])


def inter_dispersion(text_features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """DAPT's text loss: mean_{i<j} exp(-t ||n(g_i) - n(g_j)||^2) (0 for a single class)."""
    g = F.normalize(text_features, dim=-1)
    if g.shape[0] < 2:
        return g.sum() * 0.0
    return torch.pdist(g).pow(2).mul(-t).exp().mean()


# --------------------------------------------------------------------------- ANPrompt losses

def scaled_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                  scale: torch.Tensor | float) -> torch.Tensor:
    """tau n(f) n(T)^T."""
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def wa_loss(z_clean: torch.Tensor, z_noise: torch.Tensor) -> torch.Tensor:
    """Variance-adaptive weak alignment:
    sum_{i,k} p^n_ik (log p^n_ik - log p^c_ik) / ((std(z^c) + 1e-6) * B * C),
    std over all B*C entries of z^c (torch's default, unbiased)."""
    batch, classes = z_clean.shape
    log_pc = F.log_softmax(z_clean, dim=-1)
    log_pn = F.log_softmax(z_noise, dim=-1)
    kl = (log_pn.exp() * (log_pn - log_pc)).sum()
    return kl / ((z_clean.std() + 1e-6) * batch * classes)


def sim_loss(f_clean: torch.Tensor, f_zero: torch.Tensor, t_clean: torch.Tensor,
             t_zero: torch.Tensor) -> torch.Tensor:
    """(1 - mean_i cos(f^c_i, f^0_i)) + (1 - mean_c cos(T_c, T^0_c)) (unweighted)."""
    image = 1 - F.cosine_similarity(f_clean, f_zero, dim=-1).mean()
    text = 1 - F.cosine_similarity(t_clean, t_zero, dim=-1).mean()
    return image + text


def strings_hash(strings: list[str]) -> str:
    return json_digest(list(strings))


def tensor_hash(*tensors: torch.Tensor) -> str:
    return tensor_digest(*tensors, length=16)
