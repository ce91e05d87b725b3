"""`paraphrase`: the class sentence replaced by an equivalent one, at full strength.

It draws from the same sentence source as `wsp` (another description of the class, else another
template filled with its name) but uses the paraphrase's feature alone (alpha = inf). `wsp`
mixes that feature in with alpha = 0.001, and for unit vectors
`1 - cos(t, n(t + alpha * u)) <= alpha^2 / 2`: as an evaluation row `wsp` measures feature
mixing, not robustness to rewording. `paraphrase` is the rewording test.
"""

from __future__ import annotations

import math

from anbench.perturbations.wsp import Wsp, WspParams
from anbench.registry import PERTURBATIONS


class ParaphraseParams(WspParams):
    #: the paraphrase replaces the clean sentence's feature entirely
    alpha: float = math.inf


@PERTURBATIONS.register("paraphrase",
                        description="the class sentence replaced by a same-class equivalent "
                                    "(wsp's sentences at alpha = inf)")
class Paraphrase(Wsp):
    """With probability p (severity, default 1), replace the sentence by another sentence of
    the same class; see `wsp` for where alternatives come from."""

    Params = ParaphraseParams
