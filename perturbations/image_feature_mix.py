"""`image-feature-mix`: the weak image perturbation, the image-side analogue of `wsp`.

Each image feature f is mixed with the feature of another image of the same set (evaluation:
the evaluated test images; training: the batch), `f~ = n(n(f) + alpha * n(f_other))`, where the
partner is given by a seeded random cyclic permutation (no image is its own partner). With
probability `severity` an image is mixed (1.0: all), else its feature is kept.

Why alpha = 0.001 (as `wsp`): the mix turns a unit feature by an angle of at most about alpha
radians, `1 - cos(f, f~) <= alpha^2 / 2 = 5e-7`, so the image keeps its class while its feature
carries a trace of another image's, the weak, label-preserving noise ANPrompt's weak-noise
design asks for; `alpha: .inf` replaces the feature by the partner's (a label-breaking control).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from anbench.image_perturbation import ImagePerturbation, ImagePerturbationParams
from anbench.registry import IMAGE_PERTURBATIONS

_INF_STRINGS = {"inf", ".inf", "+inf", "+.inf", "infinity", "+infinity"}


class ImageFeatureMixParams(ImagePerturbationParams):
    max_severity = 1.0

    #: probability that an image's feature is mixed
    severity: list[float] = Field(default_factory=lambda: [1.0])
    #: weight of the partner's feature, in (0, inf]
    alpha: float = 0.001

    @field_validator("alpha", mode="before")
    @classmethod
    def _parse_inf(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in _INF_STRINGS:
            return math.inf
        return v

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, v: float) -> float:
        if math.isnan(v) or v <= 0:
            raise ValueError(f"alpha {v} must be in (0, inf]")
        return v


def partners(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random cyclic permutation: `partners[i]` is image i's partner, never i (n >= 2)."""
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


@IMAGE_PERTURBATIONS.register(
    "image-feature-mix",
    description="weak image noise: each image feature mixed with another image's, alpha 0.001")
class ImageFeatureMix(ImagePerturbation):
    """`n(n(f) + alpha n(f_other))` with f_other another image's feature of the same set or batch
    (seeded cyclic permutation), for each image with probability `severity`."""

    Params = ImageFeatureMixParams
    params: ImageFeatureMixParams
    category = "feature"
    can_train = True

    def mix(self, features: Any, rng: np.random.Generator, severity: float) -> Any:
        import torch

        from anbench.perturbation import mix_features

        single = isinstance(features, torch.Tensor)
        table = {"": features} if single else dict(features)
        n = len(next(iter(table.values()))) if table else 0
        # the draws come first and do not depend on n's contents: same rng, same partners
        partner = partners(n, rng) if n >= 2 else np.arange(n)
        chosen = rng.random(n) < severity
        if n < 2 or not chosen.any():
            return features
        out = {}
        for key, f in table.items():
            index = torch.as_tensor(partner, device=f.device)
            keep = torch.as_tensor(~chosen, device=f.device).unsqueeze(-1)
            mixed = mix_features(f, f[index], self.params.alpha).to(f.dtype)
            out[key] = torch.where(keep, f, mixed)
        return out[""] if single else out
