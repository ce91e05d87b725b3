"""`mask`: replace each non-protected word with the backbone's mask token with probability p."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from anbench.perturbation import Perturbation, PerturbationParams, TextContext, map_words
from anbench.registry import PERTURBATIONS


class MaskParams(PerturbationParams):
    max_severity = 1.0

    #: probability that each non-protected word is replaced by `ctx.mask_token`
    severity: list[float] = Field(default_factory=lambda: [0.3])
    alpha: float = math.inf


@PERTURBATIONS.register("mask",
                        description="replace each non-protected word with the mask token "
                                    "with probability p")
class Mask(Perturbation):
    """Replace each non-protected word with `ctx.mask_token` with probability p (severity).

    The token is the backbone tokenizer's mask token, else
    `anbench.perturbation.DEFAULT_MASK_TOKEN` ("<mask>"); see `mask_token_for`.
    """

    Params = MaskParams
    level = "word"

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        return map_words(text, ctx, self.params.protect_class_names,
                         lambda w: ctx.mask_token if rng.random() < severity else w)
