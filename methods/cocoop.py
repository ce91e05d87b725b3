"""`cocoop`: Conditional Context Optimization (Zhou et al., CVPR 2022), as its official code
(github.com/KaiyangZhou/CoOp, trainers/cocoop.py; ViT-B/16 schedule in
configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml).

- Context: n vectors initialised from the input embeddings of "a photo of a" (`ctx_init`; empty:
  N(0, 0.02^2) with `n_ctx` vectors), in front of the class sentence (CoOp's placement).
- Meta-net pi: Linear(d, d / 16) - ReLU - Linear(d / 16, text width) on the normalised frozen
  image feature f; the context for image i is ctx + pi(f_i) (one bias added to every vector).
- Logits z_ic = tau n(f_i) . n(E_T(ctx + pi(f_i), sentence_c)); loss CE. The image encoder is
  frozen; ctx and the meta-net train.
- Batched: the official code loops over the images of a batch (and trains with batch 1); here the
  B x C (image, class) prompts of a batch go through the text encoder as one batch of B * C
  sentences (`text_rows` caps its size), which is the same computation (tested).
- Evaluation: every (image, class) pair is encoded, under every perturbation too
  (`conditional_logits`); noise mixing (alpha) acts per image. The stored class text features
  (and the text-shift metric) are those of the context alone, pi = 0.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from anbench.backbones.adapter import BackboneAdapter
from anbench.perturbation import mix_features
from anbench.registry import METHODS

from ._common import generator, init_linear_, is_images
from ._prompts import init_context_
from .coop import CoOp, CoOpParams


class CoCoOpParams(CoOpParams):
    speed_only: ClassVar[frozenset[str]] = frozenset({"text_rows"})
    # Mini-backbone schedule; the official ViT-B/16 one (sgd lr 2e-3, batch 1, 10 epochs) is in
    # bench.yaml.
    n_ctx: PositiveInt = 4
    ctx_init: str = "a photo of a"  # words the context starts as ("" for random)
    meta_ratio: PositiveInt = 16  # hidden width of the meta-net = image feature dim / ratio
    text_rows: PositiveInt = 8192  # most (image, class) sentences per text-encoder call


@METHODS.register("cocoop", description="CoCoOp: CoOp context shifted per image by a meta-net "
                                        "(official formulas, batched)",
                  meta={"order": 7, "colour": 5})
class CoCoOp(CoOp):
    """Image-conditioned text context; frozen image encoder."""

    Params = CoCoOpParams
    params: CoCoOpParams

    def __init__(self, params: CoCoOpParams, adapter: BackboneAdapter):
        dim = adapter.embed_dim
        hidden = max(dim // params.meta_ratio, 1)
        super().__init__(params, adapter)
        self.meta_net = nn.Sequential(
            nn.Linear(dim, hidden, device=adapter.device), nn.ReLU(),
            nn.Linear(hidden, adapter.text_width, device=adapter.device))
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        init_context_(self.ctx, self.adapter, self.params.ctx_init, self.params.ctx_init_std,
                      seed, "cocoop.ctx")
        if getattr(self, "meta_net", None) is not None:  # CoOp.__init__ calls this first
            init_linear_(self.meta_net[0], generator(seed, "cocoop.meta.linear1"))
            init_linear_(self.meta_net[2], generator(seed, "cocoop.meta.linear2"))

    # ------------------------------------------------------------------ conditional text
    def conditional_text(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """n(E_T(ctx + pi(f_i), sentence_c)) for every image i and class c: [N, C, d], from
        normalised image features `image` [N, d] and the classes' context tokens [C, T]."""
        classes = tokens.shape[0]
        shifted = self.ctx.unsqueeze(0) + self.meta_net(image.to(self.ctx.dtype)).unsqueeze(1)
        per_call = max(self.params.text_rows // max(classes, 1), 1)
        out = []
        for start in range(0, image.shape[0], per_call):
            ctx = shifted[start:start + per_call]  # [b, n, width]
            rows = tokens.repeat(ctx.shape[0], 1)  # image-major: row i*C + c is class c
            context = ctx.repeat_interleave(classes, dim=0)
            text = self.adapter.encode_text(rows, context=context, normalize=True).float()
            out.append(text.reshape(ctx.shape[0], classes, -1))
        return torch.cat(out)

    def _conditional_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """tau n(f_i) . t_ic: [N, C] from [N, d] and [N, C, d]."""
        image = F.normalize(image, dim=-1)
        return self.adapter.logit_scale * torch.einsum("nd,ncd->nc", image, text)

    # ------------------------------------------------------------------ contract
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not is_images(images):
            raise TypeError("loss() expects an image batch [B, 3, H, W]")
        tokens = self._require_setup()
        image = self._image(images)
        logits = self._conditional_logits(image, self.conditional_text(tokens, image))
        return {"ce": F.cross_entropy(logits, labels.to(logits.device))}

    @torch.no_grad()
    def conditional_logits(self, image_features: dict[str, torch.Tensor], sentences: list[str],
                           split: Literal["base", "new", "all"],
                           clean_sentences: list[str] | None = None,
                           alpha: float = math.inf) -> torch.Tensor:
        image = image_features["clean"].to(self.adapter.device)
        with self.adapter.autocast():
            text = self.conditional_text(self._tokens(sentences), image)
            if clean_sentences is not None and not math.isinf(alpha):
                clean = self.conditional_text(self._tokens(clean_sentences), image)
                text = mix_features(clean, text, alpha)  # per image, over the feature dim
            return self._conditional_logits(image, text.float())
