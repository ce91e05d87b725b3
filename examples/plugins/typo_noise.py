"""A user perturbation: swap two neighbouring letters inside words (keyboard-typo noise).

Use it without installing anything:
    anbench list perturbations --plugin examples/plugins/typo_noise.py
    anbench perturb "a photo of a tabby cat." --noise typo --plugin examples/plugins/typo_noise.py
or name the module in bench.yaml (`plugins: [my_pkg.typo_noise]`), or expose it as an entry point
in the `anbench.perturbations` group of your package.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from anbench.perturbation import Perturbation, PerturbationParams, TextContext, map_words
from anbench.registry import PERTURBATIONS


class TypoParams(PerturbationParams):
    severity: list[float] = Field(default_factory=lambda: [0.2])  # per-word typo probability
    alpha: float = math.inf  # strong noise: the noisy sentence replaces the clean one
    min_length: int = 3  # shorter words are left alone


@PERTURBATIONS.register("typo", description="swap two neighbouring letters in words (prob. p)")
class Typo(Perturbation):
    """Swap two neighbouring letters in each non-protected word with probability p."""

    Params = TypoParams

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        def typo(word: str) -> str:
            # draw for every word, so one word's length does not shift the others' draws
            hit, where = rng.random() < severity, rng.random()
            if not hit or len(word) < self.params.min_length:
                return word
            i = int(where * (len(word) - 1))
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]

        # map_words skips punctuation and protected class-name words (protect_class_names)
        return map_words(text, ctx, self.params.protect_class_names, typo)
