"""`zeroshot`: the frozen backbone with the dataset's hand-written template."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from anbench.method import Method, MethodParams, TaskContext
from anbench.registry import METHODS

from ._common import scaled_logits


class ZeroShotParams(MethodParams):
    pass


@METHODS.register("zeroshot", description="frozen backbone with the dataset's template "
                                          "(reference row, no training)",
                  meta={"order": 0, "colour": 7})
class ZeroShot(Method):
    """Frozen backbone, one clean sentence per class; nothing trains."""

    Params = ZeroShotParams
    trains = False
    frozen_image_features = True  # shares cached test-set features

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        pass  # nothing depends on the training data

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("zeroshot does not train")

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.adapter.autocast():
            features = self.adapter.encode_image(images.to(self.adapter.device)).features
        return {"clean": F.normalize(features.float(), dim=-1)}

    @torch.no_grad()
    def class_features(self, sentences: list[str]) -> torch.Tensor:
        adapter = self.adapter
        with adapter.autocast():
            tokens = adapter.trim(adapter.tokenize(sentences))
            return adapter.encode_text(tokens, normalize=True).float()

    def logits(self, image_features: dict[str, torch.Tensor], text_features: torch.Tensor,
               split: Literal["base", "new", "all"]) -> torch.Tensor:
        return scaled_logits(image_features["clean"], text_features, self.adapter.logit_scale)
