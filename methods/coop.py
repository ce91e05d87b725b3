"""`coop`: learned context vectors in front of each class sentence.

The class text is `"X X ... X {sentence}"` with the X slots replaced by `n_ctx` shared learned
vectors (init N(0, 0.02^2), CoOp's generic initialisation); the image side is the frozen
encoder. Loss: cross-entropy on tau n(f) n(g)^T. DAPT extends this class.

`class_sentence` sets the sentence: `name` gives the official prompt "X X ... X {class}."
(trainers/coop.py in KaiyangZhou/CoOp; bench.yaml's vit-b-16 setting); `template` (the default,
for mini) the dataset template, "X X ... X a photo of a {class}.", which measured as well or
better on mini (digits, 3 seeds: CoOp HM 97.83 vs 97.64, DAPT 97.76 vs 97.45).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from anbench.backbones.adapter import BackboneAdapter
from anbench.method import Method, MethodParams, TaskContext
from anbench.registry import METHODS

from ._common import generator, init_normal_, is_images, scaled_logits


class CoOpParams(MethodParams):
    # Mini-backbone defaults (measured in bench/methods_mini.py); CoOp's ViT-B/16 schedule
    # (lr 2e-3, 200 epochs at 16 shots) belongs in bench.yaml.
    epochs: PositiveInt = 20
    lr: float = 0.02
    n_ctx: PositiveInt = 16
    ctx_init_std: PositiveFloat = 0.02


@METHODS.register("coop", description="CoOp: 16 learned context vectors before the class "
                                      "sentence (reference row)",
                  meta={"order": 1, "colour": 4})
class CoOp(Method):
    """Learned text context; frozen image encoder."""

    Params = CoOpParams
    params: CoOpParams
    frozen_image_features = True  # shares cached test-set features

    def __init__(self, params: CoOpParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        self.ctx = nn.Parameter(torch.empty(params.n_ctx, adapter.text_width,
                                            device=adapter.device))
        self._train_tokens: torch.Tensor | None = None
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic init from `seed` (setup calls it with the task seed)."""
        init_normal_(self.ctx, self.params.ctx_init_std, generator(seed, "coop.ctx"))

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        self.reset_parameters(task.seed)
        self._train_tokens = self._tokens(task.sentences)

    # ------------------------------------------------------------------ encoders
    def _tokens(self, sentences: list[str]) -> torch.Tensor:
        return self.adapter.trim(self.adapter.context_tokens(self.params.n_ctx, sentences))

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompted class text features, normalised, with gradients."""
        return self.adapter.encode_text(tokens, context=self.ctx, normalize=True).float()

    def _image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features, normalised (frozen for CoOp)."""
        with torch.no_grad():
            features = self.adapter.encode_image(images.to(self.adapter.device)).features
        return F.normalize(features.float(), dim=-1)

    def _require_setup(self) -> torch.Tensor:
        if self._train_tokens is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before loss()")
        return self._train_tokens

    # ------------------------------------------------------------------ contract
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not is_images(images):
            raise TypeError("loss() expects an image batch [B, 3, H, W]")
        text = self._text(self._require_setup())
        image = self._image(images)
        logits = scaled_logits(image, text, self.adapter.logit_scale)
        return {"ce": F.cross_entropy(logits, labels.to(logits.device))}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.adapter.autocast():
            return {"clean": self._image(images)}

    @torch.no_grad()
    def class_features(self, sentences: list[str]) -> torch.Tensor:
        with self.adapter.autocast():
            return self._text(self._tokens(sentences))

    def logits(self, image_features: dict[str, torch.Tensor], text_features: torch.Tensor,
               split: Literal["base", "new", "all"]) -> torch.Tensor:
        return scaled_logits(image_features["clean"], text_features, self.adapter.logit_scale)
