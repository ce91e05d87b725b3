"""`kgcoop`: Knowledge-guided Context Optimization (Yao et al., CVPR 2023), as its official code
(github.com/htyao89/KgCoOp, KgCoOp/trainers/kgcoop.py; ViT-B/16 schedule in
KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, weight 8.0 from KgCoOp/README.md).

- Text: CoOp's learned context in front of the class sentence; 4 vectors initialised from the
  input embeddings of "a photo of a" (`ctx_init`; empty: N(0, 0.02^2) with `n_ctx` vectors).
- Hand-crafted knowledge: w_c = n(E_T(template(c))) from the frozen encoder with the dataset's own
  template (CoOp's per-dataset CUSTOM_TEMPLATES, `task.templates[0]`), training classes only.
- Loss: CE(tau n(f) n(g)^T) + lambda * (1 - mean_c cos(g_c, w_c)); lambda = `kg_weight` (8.0).
  The paper writes the constraint as the squared L2 distance of normalised features; the code
  uses 1 - cos, which is half of it per class (||a - b||^2 = 2 - 2 cos for unit vectors).
- The image encoder is frozen; only the context trains (the official meta_net is unused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt

from anbench.backbones.adapter import BackboneAdapter
from anbench.method import TaskContext
from anbench.registry import METHODS

from ._common import is_images, scaled_logits
from ._prompts import init_context_, teacher_text
from .coop import CoOp, CoOpParams


class KgCoOpParams(CoOpParams):
    # Mini-backbone schedule (CoOp's mini defaults); the official ViT-B/16 one (sgd lr 2e-3,
    # batch 128, 100 epochs) is in bench.yaml.
    n_ctx: PositiveInt = 4
    ctx_init: str = "a photo of a"  # words the context starts as ("" for random)
    kg_weight: NonNegativeFloat = 8.0  # lambda


def kg_loss(text: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """KgCoOp's knowledge term: 1 - mean_c cos(g_c, w_c) (unweighted)."""
    return 1.0 - F.cosine_similarity(text, hand, dim=-1, eps=1e-7).mean()


@METHODS.register("kgcoop", description="KgCoOp: CoOp context kept close to the hand-crafted "
                                        "prompt's text features (official formulas)",
                  meta={"order": 8, "colour": 6})
class KgCoOp(CoOp):
    """CoOp context regularised towards the frozen template features."""

    Params = KgCoOpParams
    params: KgCoOpParams

    def __init__(self, params: KgCoOpParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        # Class-dependent: never part of prompt_state (non-persistent, not trainable).
        self.register_buffer("hand", torch.zeros(0, adapter.embed_dim, device=adapter.device),
                             persistent=False)

    def reset_parameters(self, seed: int) -> None:
        init_context_(self.ctx, self.adapter, self.params.ctx_init, self.params.ctx_init_std,
                      seed, "kgcoop.ctx")

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        super().setup(task, train_images, train_labels)
        self.hand = teacher_text(self.adapter, task.classnames, task.templates[:1])

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not is_images(images):
            raise TypeError("loss() expects an image batch [B, 3, H, W]")
        if self.hand.shape[0] == 0:
            raise RuntimeError("KgCoOp.setup() must run before loss()")
        text = self._text(self._require_setup())
        image = self._image(images)
        logits = scaled_logits(image, text, self.adapter.logit_scale)
        terms = {"ce": F.cross_entropy(logits, labels.to(logits.device))}
        if self.params.kg_weight:
            terms["kg"] = self.params.kg_weight * kg_loss(text, self.hand)
        return terms
