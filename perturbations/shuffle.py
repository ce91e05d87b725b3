"""`shuffle`: move a fraction of the words to other word positions of the same sentence."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from pydantic import Field

from anbench.perturbation import Perturbation, PerturbationParams, TextContext, split_sentence
from anbench.registry import PERTURBATIONS


class ShuffleParams(PerturbationParams):
    max_severity = 1.0

    #: fraction of the movable words that change position (1.0 = all of them)
    severity: list[float] = Field(default_factory=lambda: [1.0])
    alpha: float = math.inf


def _derangement(rng: np.random.Generator, m: int) -> np.ndarray:
    # Rejection sampling gives a uniform derangement; about e draws on average.
    while True:
        perm = rng.permutation(m)
        if not np.any(perm == np.arange(m)):
            return perm


@PERTURBATIONS.register("shuffle",
                        description="permute the word order; severity = fraction of words moved")
class Shuffle(Perturbation):
    """Move round(severity * n) of the n movable words, each to another word slot.

    Punctuation keeps its place. Protected class-name spans stay whole and in place; with
    `protect_class_names: false` their words move like any other. Moving exactly one word is
    impossible, so a count of one becomes two.
    """

    Params = ShuffleParams
    level = "word"

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        slots = [i for i, u in enumerate(sent.units) if u.is_word and not u.protected]
        n = len(slots)
        m = min(n, int(round(severity * n)))
        if m == 1:
            m = 2 if n >= 2 else 0
        if m < 2:
            return text
        chosen = sorted(rng.choice(slots, size=m, replace=False).tolist())
        perm = _derangement(rng, m)
        units = list(sent.units)
        for dst, src in zip(chosen, perm, strict=True):
            # the slot keeps its own whitespace; the word comes from another slot
            units[dst] = replace(sent.units[chosen[src]], pre=sent.units[dst].pre)
        return sent.render(units)
