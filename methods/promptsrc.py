"""`promptsrc`: Prompting with Self-regulating Constraints (Khattak et al., ICCV 2023), as its
official code (github.com/muzairkhattak/PromptSRC, trainers/promptsrc.py and the
ResidualAttentionBlock_IVLP of clip/model.py; ViT-B/16 schedule and weights in
configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml).

- Independent deep prompts: 4 text context vectors (from "a photo of a") in front of the class
  sentence plus deep text prompts overwriting them at text blocks 1 .. J_t - 1; 4 vision prompt
  tokens entering at block 0 and overwritten at blocks 1 .. J_v - 1 (all N(0, 0.02^2); J = 9).
- Frozen teachers: the un-prompted image feature f0 = n(E_I(x)); textual diversity
  t0_c = n(mean over templates of E_T(template(c))) over CLIP's 60 ImageNet templates
  (trainers/imagenet_templates.py; `teacher_templates: dataset` uses the dataset's own).
- Mutual agreement: L = CE(z) + lambda_t mean|n(g) - t0| + lambda_i mean|n(f) - f0|
  + sum KL(softmax(z0) || softmax(z)) / (B C), z = tau n(f) n(g)^T, z0 = tau f0 t0^T,
  lambda_t = 25, lambda_i = 10.
- Gaussian prompt aggregation (GPA): after epoch e (1-based) the prompts are added with weight
  N(e; mu, sigma^2), normalised over e = 1 .. epochs (mu = 15, sigma = 1); after the last epoch
  the weighted sum replaces the prompts.
- One difference from the official code: there the first vision prompts are appended before the
  image encoder's pre-norm (ln_pre); the adapter inserts prompt tokens after it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from anbench.backbones.adapter import BackboneAdapter
from anbench.method import Method, MethodParams, TaskContext
from anbench.registry import METHODS

from ._common import frozen_images, generator, init_normal_, is_images, scaled_logits
from ._prompts import encode_text_deep, init_context_, teacher_text

# CLIP's ImageNet prompt ensemble as PromptSRC uses it (trainers/imagenet_templates.py).
IMAGENET_TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",]


class PromptSRCParams(MethodParams):
    # Mini-backbone schedule and depths (the mini encoders have 4 vision blocks); the official
    # ViT-B/16 ones (sgd lr 2.5e-3, batch 4, 20 epochs, J = 9) are in bench.yaml.
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 4
    lr: float = 2.5e-3
    n_ctx_text: PositiveInt = 4
    n_ctx_vision: PositiveInt = 4
    ctx_init: str = "a photo of a"  # words the text context starts as ("" for random)
    depth_text: PositiveInt = 3
    depth_vision: PositiveInt = 3
    prompt_init_std: PositiveFloat = 0.02
    text_weight: NonNegativeFloat = 25.0  # lambda_t (L1 to the frozen text features)
    image_weight: NonNegativeFloat = 10.0  # lambda_i (L1 to the frozen image features)
    logit_weight: NonNegativeFloat = 1.0  # the KL term's weight (1 in the official code)
    teacher_templates: Literal["imagenet", "dataset"] = "imagenet"
    gpa: bool = True
    gpa_mean: float = 15.0  # mu, in 1-based epochs
    gpa_std: PositiveFloat = 1.0  # sigma


def gpa_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """Normalised Gaussian weights of epochs 1 .. `epochs` (float64)."""
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    density = torch.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    total = float(density.sum())
    if not total > 0:
        raise ValueError(f"gpa_mean {mean} / gpa_std {std} give zero weight to every epoch "
                         f"1..{epochs}")
    return density / total


def agreement_losses(text: torch.Tensor, teacher_text: torch.Tensor, image: torch.Tensor,
                     teacher_image: torch.Tensor, logits: torch.Tensor,
                     teacher_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """PromptSRC's unweighted mutual-agreement terms (L1 means and the KL of the official
    code: sum p0 (log p0 - log p) / numel)."""
    log_p = F.log_softmax(logits, dim=-1)
    log_p0 = F.log_softmax(teacher_logits, dim=-1)
    return {
        "text": F.l1_loss(text, teacher_text),
        "image": F.l1_loss(image, teacher_image),
        "logits": F.kl_div(log_p, log_p0, reduction="sum", log_target=True) / logits.numel(),
    }


@METHODS.register("promptsrc", description="PromptSRC: deep prompts in both encoders held to "
                                           "the frozen model (L1 + KL), Gaussian prompt "
                                           "aggregation (official formulas)",
                  meta={"order": 10})
class PromptSRC(Method):
    """Independent deep prompts, self-regulating losses, Gaussian prompt aggregation."""

    Params = PromptSRCParams
    params: PromptSRCParams

    def __init__(self, params: PromptSRCParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        if params.depth_text > adapter.text_layers or params.depth_vision > adapter.vision_layers:
            raise ValueError(f"depths {params.depth_text} (text), {params.depth_vision} (vision) "
                             f"exceed the encoders' layers ({adapter.text_layers} text, "
                             f"{adapter.vision_layers} vision)")
        device, text_w = adapter.device, adapter.text_width
        self.ctx = nn.Parameter(torch.empty(params.n_ctx_text, text_w, device=device))
        self.deep_text = nn.ParameterList(
            nn.Parameter(torch.empty(params.n_ctx_text, text_w, device=device))
            for _ in range(params.depth_text - 1))
        self.vision = nn.ParameterList(
            nn.Parameter(torch.empty(params.n_ctx_vision, adapter.vision_width, device=device))
            for _ in range(params.depth_vision))
        # Class-dependent (training label space): non-persistent, never in prompt_state.
        self.register_buffer("teacher", torch.zeros(0, adapter.embed_dim, device=device),
                             persistent=False)
        self._train_tokens: torch.Tensor | None = None
        self._gpa_sum: dict[str, torch.Tensor] = {}
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        p = self.params
        init_context_(self.ctx, self.adapter, p.ctx_init, p.prompt_init_std, seed,
                      "promptsrc.ctx")
        for j, prompt in enumerate(self.deep_text):
            init_normal_(prompt, p.prompt_init_std, generator(seed, "promptsrc.deep_text", j))
        for j, prompt in enumerate(self.vision):
            init_normal_(prompt, p.prompt_init_std, generator(seed, "promptsrc.vision", j))

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        self.reset_parameters(task.seed)
        self._gpa_sum = {}
        self._train_tokens = self._tokens(task.sentences)
        templates = (IMAGENET_TEMPLATES if self.params.teacher_templates == "imagenet"
                     else task.templates)
        self.teacher = teacher_text(self.adapter, task.classnames, list(templates))

    # ------------------------------------------------------------------ encoders
    def _tokens(self, sentences: list[str]) -> torch.Tensor:
        return self.adapter.trim(self.adapter.context_tokens(self.params.n_ctx_text, sentences))

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:
        features = encode_text_deep(self.adapter, tokens, self.ctx, list(self.deep_text))
        return F.normalize(features.float(), dim=-1)

    def _image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.adapter.encode_image(images.to(self.adapter.device),
                                        prompts=list(self.vision), first_layer=0)
        return F.normalize(out.features.float(), dim=-1)

    @torch.no_grad()
    def training_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The images and their frozen features f0 (computed once, not at every step)."""
        return {"images": images, "f0": frozen_images(self.adapter, images).to(images.device)}

    # ------------------------------------------------------------------ contract
    def loss(self, images: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        if self._train_tokens is None:
            raise RuntimeError("PromptSRC.setup() must run before loss()")
        inputs = self.training_inputs(images) if is_images(images) else images
        p, adapter = self.params, self.adapter
        labels = labels.to(adapter.device)
        f0 = inputs["f0"].to(adapter.device).float()
        text = self._text(self._train_tokens)
        image = self._image(inputs["images"])
        tau = adapter.logit_scale
        logits = scaled_logits(image, text, tau)
        terms = {"ce": F.cross_entropy(logits, labels)}
        raw = agreement_losses(text, self.teacher, image, f0, logits,
                               scaled_logits(f0, self.teacher, tau))
        for name, weight in (("text", p.text_weight), ("image", p.image_weight),
                             ("logits", p.logit_weight)):
            if weight:
                terms[f"scl_{name}"] = weight * raw[name]
        return terms

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """GPA: add this epoch's prompts with their Gaussian weight; after the last epoch the
        aggregate becomes the prompts."""
        if not self.params.gpa:
            return
        weight = float(gpa_weights(epochs, self.params.gpa_mean, self.params.gpa_std)[epoch])
        for name, param in self.named_parameters():
            if param.requires_grad:
                value = weight * param.detach().double()
                self._gpa_sum[name] = self._gpa_sum.get(name, 0) + value
        if epoch == epochs - 1:
            for name, param in self.named_parameters():
                if name in self._gpa_sum:
                    param.copy_(self._gpa_sum[name].to(param.dtype))
            self._gpa_sum = {}

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
