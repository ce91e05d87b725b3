"""`drop`: delete each non-protected word with probability p."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from anbench.perturbation import Perturbation, PerturbationParams, TextContext, map_words
from anbench.registry import PERTURBATIONS


class DropParams(PerturbationParams):
    max_severity = 1.0

    #: probability that each non-protected word is deleted
    severity: list[float] = Field(default_factory=lambda: [0.3])
    alpha: float = math.inf


@PERTURBATIONS.register("drop", description="delete each non-protected word with probability p")
class Drop(Perturbation):
    """Delete each non-protected word with probability p (severity); punctuation stays."""

    Params = DropParams
    level = "word"

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        return map_words(text, ctx, self.params.protect_class_names,
                         lambda w: None if rng.random() < severity else w)
