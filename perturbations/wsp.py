"""`wsp`: weak semantic perturbation.

The sentence is replaced by a semantically equivalent alternative of the same class (another
description of the class, else another template filled with its name), and the feature of the
alternative is mixed in weakly (alpha = 0.001) by `anbench.perturbation.mix_features`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from anbench.perturbation import (
    Perturbation,
    PerturbationParams,
    TextContext,
    contains_class_name,
)
from anbench.registry import PERTURBATIONS


class WspParams(PerturbationParams):
    max_severity = 1.0

    #: probability that the sentence is replaced by an alternative
    severity: list[float] = Field(default_factory=lambda: [1.0])
    #: weak mixing, as the authors' code fuses a second description with weight 0.001
    alpha: float = 0.001


@PERTURBATIONS.register("wsp",
                        description="weak semantic perturbation: a same-class equivalent "
                                    "sentence, mixed in with alpha 0.001")
class Wsp(Perturbation):
    """With probability p (severity), replace the sentence by one of `ctx.alternatives`.

    Alternatives are sentences of the same class only (the caller builds them, e.g. with
    `anbench.perturbation.make_context`). With `protect_class_names`, only alternatives that
    contain the class name are drawn. No usable alternative: the sentence is returned unchanged.
    """

    Params = WspParams
    level = "sentence"

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        own = text.strip().lower()
        pool = [a for a in ctx.alternatives if a.strip().lower() != own]
        if self.params.protect_class_names:
            pool = [a for a in pool if contains_class_name(a, ctx.class_name)]
        if not pool or rng.random() >= severity:
            return text
        return pool[int(rng.integers(len(pool)))]
