"""`maple`: Multi-modal Prompt Learning (Khattak et al., CVPR 2023), as its official code
(github.com/muzairkhattak/multimodal-prompt-learning, trainers/maple.py and the
ResidualAttentionBlock_MaPLe of clip/model.py; ViT-B/16 schedule in
configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml).

- Language prompts: n = 2 context vectors in front of the class sentence, initialised from the
  first n token embeddings of "a photo of a" (`ctx_init`), plus J - 1 deep prompts (N(0, 0.02^2))
  that overwrite the same n slots at the input of text blocks 1 .. J - 1 (J = `depth`, 9).
- V-L coupling: each vision prompt is a linear projection of the language prompt of the same
  layer (text width -> vision width; `nn.Linear` default init): proj_0(ctx) enters the image
  encoder at block 0, proj_j(deep_j) overwrites it at blocks 1 .. J - 1. Later blocks carry the
  prompt outputs on, in both encoders. The pooled [CLS] token is what the encoder outputs.
- Loss: CE on tau n(f) n(g)^T; only the prompts and the coupling functions train.
- One difference from the official code: there the first vision prompts are appended before the
  image encoder's pre-norm (ln_pre); the adapter inserts prompt tokens after it.
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

from ._common import generator, init_linear_, init_normal_, is_images, scaled_logits
from ._prompts import encode_text_deep, init_context_


class MaPLeParams(MethodParams):
    # Mini-backbone schedule and depth (the mini encoders have 4 vision blocks); the official
    # ViT-B/16 ones (sgd lr 3.5e-3, batch 4, 5 epochs, J = 9) are in bench.yaml.
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 4
    lr: float = 3.5e-3
    n_ctx: PositiveInt = 2
    ctx_init: str = "a photo of a"  # words the context starts as ("" for random)
    depth: PositiveInt = 3  # J: prompted blocks, counting the input one
    prompt_init_std: PositiveFloat = 0.02


@METHODS.register("maple", description="MaPLe: deep language prompts coupled to the vision "
                                       "branch by linear maps (official formulas)",
                  meta={"order": 9, "colour": 8})
class MaPLe(Method):
    """Coupled deep prompts in both encoders."""

    Params = MaPLeParams
    params: MaPLeParams

    def __init__(self, params: MaPLeParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        if params.depth > min(adapter.text_layers, adapter.vision_layers):
            raise ValueError(f"depth {params.depth} exceeds the encoders' layers "
                             f"({adapter.text_layers} text, {adapter.vision_layers} vision)")
        device, n, text_w = adapter.device, params.n_ctx, adapter.text_width
        self.ctx = nn.Parameter(torch.empty(n, text_w, device=device))
        self.deep_text = nn.ParameterList(
            nn.Parameter(torch.empty(n, text_w, device=device)) for _ in range(params.depth - 1))
        self.couple = nn.ModuleList(
            nn.Linear(text_w, adapter.vision_width, device=device) for _ in range(params.depth))
        self._train_tokens: torch.Tensor | None = None
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        p = self.params
        init_context_(self.ctx, self.adapter, p.ctx_init, p.prompt_init_std, seed, "maple.ctx")
        for j, prompt in enumerate(self.deep_text):
            init_normal_(prompt, p.prompt_init_std, generator(seed, "maple.deep_text", j))
        for j, layer in enumerate(self.couple):
            init_linear_(layer, generator(seed, "maple.couple", j))

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        self.reset_parameters(task.seed)
        self._train_tokens = self._tokens(task.sentences)

    # ------------------------------------------------------------------ prompts and encoders
    def vision_prompts(self) -> list[torch.Tensor]:
        """The V-L coupling: layer j's vision prompt is F_j(layer j's language prompt)."""
        language = [self.ctx, *self.deep_text]
        return [layer(prompt) for layer, prompt in zip(self.couple, language, strict=True)]

    def _tokens(self, sentences: list[str]) -> torch.Tensor:
        return self.adapter.trim(self.adapter.context_tokens(self.params.n_ctx, sentences))

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:
        features = encode_text_deep(self.adapter, tokens, self.ctx, list(self.deep_text))
        return F.normalize(features.float(), dim=-1)

    def _image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.adapter.encode_image(images.to(self.adapter.device),
                                        prompts=self.vision_prompts(), first_layer=0)
        return F.normalize(out.features.float(), dim=-1)

    # ------------------------------------------------------------------ contract
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not is_images(images):
            raise TypeError("loss() expects an image batch [B, 3, H, W]")
        if self._train_tokens is None:
            raise RuntimeError("MaPLe.setup() must run before loss()")
        logits = scaled_logits(self._image(images), self._text(self._train_tokens),
                               self.adapter.logit_scale)
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
