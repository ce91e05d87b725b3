"""`dapt`: Distribution-Aware Prompt Tuning (Cho et al., ICCV 2023), as its official code.

- Text: CoOp context (16 vectors, N(0, 0.02^2)) in front of the class sentence.
- Vision: 16 shallow prompt tokens inserted after [CLS] at the input of the first block (after the
  positional embedding and the pre-norm), init uniform(-v, v), v = sqrt(6 / (3 p^2 + width)).
- Prototypes s_c: mean over class c's training images of n(E_I(x)) from the frozen, un-prompted
  image encoder (not re-normalised), over the training label space only; cached with provenance
  under `task.extra["cache_dir"]` when the runner gives one. The official code computes them
  through the training transform: when the run augments, the runner hands the pre-drawn views
  `[N, V, C, H, W]` as `task.extra["train_views"]` and s_c is the mean over all N * V views of
  class c (`prototype_source: eval` keeps the un-augmented images).
- Loss: CE + beta_v * mse(n(f_i), s_{y_i}) + beta_t * mean_{i<j} exp(-t ||n(g_i) - n(g_j)||^2).

Official per-dataset (lr, beta_v, beta_t) and schedules belong in bench.yaml, not here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from anbench.backbones.adapter import BackboneAdapter
from anbench.files import atomic_save_torch
from anbench.method import TaskContext
from anbench.registry import METHODS

from ._common import (
    class_means,
    frozen_images,
    generator,
    init_uniform_,
    inter_dispersion,
    intra_dispersion,
    is_images,
    scaled_logits,
    strings_hash,
    tensor_hash,
)
from .coop import CoOp, CoOpParams

PROTOTYPE_VERSION = "1"  # bump if the prototype computation changes (invalidates the cache)


class DAPTParams(CoOpParams):
    # Mini-backbone defaults (bench.yaml holds the paper's per-dataset values).
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    lr: float = 0.02
    n_visual: PositiveInt = 16
    beta_v: NonNegativeFloat = 0.1
    beta_t: NonNegativeFloat = 0.1
    inter_t: PositiveFloat = 2.0  # the temperature t of the inter-dispersion loss
    # "train": prototypes from the images training sees (the augmented views when the run
    # augments, else the eval-transform images); "eval": always the eval-transform images.
    prototype_source: Literal["train", "eval"] = "train"


@METHODS.register("dapt", description="DAPT: CoOp text context + shallow visual prompts with "
                                      "intra/inter-dispersion losses (official formulas)",
                  meta={"order": 2, "colour": 0})
class DAPT(CoOp):
    """CoOp text context, shallow visual prompts, prototype and dispersion losses."""

    Params = DAPTParams
    params: DAPTParams

    def __init__(self, params: DAPTParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        self.visual_prompts = nn.Parameter(torch.empty(params.n_visual, adapter.vision_width,
                                                       device=adapter.device))
        # Class-dependent: never part of prompt_state (non-persistent, not trainable).
        self.register_buffer("prototypes", torch.zeros(0, adapter.embed_dim,
                                                       device=adapter.device), persistent=False)
        self.prototype_info: dict[str, Any] = {}
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        super().reset_parameters(seed)
        if getattr(self, "visual_prompts", None) is None:  # CoOp.__init__ calls this first
            return
        patch, width = self.adapter.patch_size, self.adapter.vision_width
        bound = math.sqrt(6.0 / float(3 * patch * patch + width))
        init_uniform_(self.visual_prompts, bound, generator(seed, "dapt.visual_prompts"))

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        super().setup(task, train_images, train_labels)
        views = task.extra.get("train_views")
        if self.params.prototype_source == "train" and views is not None:
            train_images = views  # [N, V, C, H, W]: the training transform's views
        prototypes, info = self._prototypes(task, train_images, train_labels)
        self.prototypes = prototypes.to(self.adapter.device)
        self.prototype_info = info

    # ------------------------------------------------------------------ prototypes
    def _prototypes(self, task: TaskContext, images: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """s_c from the frozen encoder over the training images (training label space only);
        `images` [N, C, H, W], or a bank of views [N, V, C, H, W] (every view counts)."""
        if images.dim() == 5 and images.shape[0] != len(labels):
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        views = int(images.shape[1]) if images.dim() == 5 else 0
        provenance = {
            "kind": "dapt-prototypes",
            "version": PROTOTYPE_VERSION,
            "dataset": task.dataset,
            "classnames_hash": strings_hash(task.classnames),
            "num_classes": len(task.classnames),
            "seed": int(task.seed),
            "shots": int(len(labels)),
            "views": views,  # 0: one un-augmented image per shot
            "images_hash": tensor_hash(images, labels),
            "backbone": self.adapter.backbone.name,
            "weights_hash": self.adapter.backbone.weights_hash,
        }
        key = strings_hash([json.dumps(provenance, sort_keys=True)])
        cache_dir = task.extra.get("cache_dir")
        path = Path(cache_dir) / "dapt-prototypes" / f"{key}.pt" if cache_dir else None
        if path is not None and path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.get("provenance") == provenance:
                    return cached["prototypes"], {**provenance, "cache": "hit", "path": str(path)}
            except (OSError, RuntimeError, KeyError, AttributeError):
                pass  # a damaged cache entry is recomputed (the computation is deterministic)
        if views:  # every view of image i is an example of class labels[i]
            images, labels = images.flatten(0, 1), labels.repeat_interleave(views)
        features = frozen_images(self.adapter, images)
        prototypes = class_means(features, labels, len(task.classnames)).cpu()
        info = {**provenance, "cache": "off"}
        if path is not None:
            atomic_save_torch(path, {"provenance": provenance, "prototypes": prototypes})
            info.update(cache="miss", path=str(path))
        return prototypes, info

    # ------------------------------------------------------------------ encoders
    def _image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.adapter.encode_image(images.to(self.adapter.device),
                                        prompts=[self.visual_prompts], first_layer=0)
        return F.normalize(out.features.float(), dim=-1)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not is_images(images):
            raise TypeError("loss() expects an image batch [B, 3, H, W]")
        if self.prototypes.shape[0] == 0:
            raise RuntimeError("DAPT.setup() must run before loss()")
        labels = labels.to(self.adapter.device)
        text = self._text(self._require_setup())
        image = self._image(images)
        logits = scaled_logits(image, text, self.adapter.logit_scale)
        terms = {"ce": F.cross_entropy(logits, labels)}
        # Zero weights drop the term, so its cost and its log entry disappear together.
        if self.params.beta_v:
            terms["intra"] = self.params.beta_v * intra_dispersion(image, self.prototypes, labels)
        if self.params.beta_t:
            terms["inter"] = self.params.beta_t * inter_dispersion(text, self.params.inter_t)
        return terms
