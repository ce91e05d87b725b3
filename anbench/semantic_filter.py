"""An optional semantic filter for any text perturbation.

A noisy sentence is kept only if its sentence embedding stays within a cosine threshold of the
clean sentence's; otherwise the perturbation is drawn again from the same per-item rng, at most
`retries` more times. This is the filter of Qiu et al., "Benchmarking robustness of multimodal
image-text models under distribution shift" (their text perturbation scripts keep a perturbed
caption when its sentence-transformer cosine to the clean one is at least 0.9), with the
sentence encoder anbench already ships: all-MiniLM-L6-v2 (mean pooling, L2-normalised, as the
sentence-transformers model card specifies), read offline from the same folder as the `mini`
backbone's text tower.

Each sentence is embedded on its own (no padding, no batch), so whether a candidate passes does
not depend on which other sentences are perturbed with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import ConfigDict, Field


class SemanticFilterParams(pydantic.BaseModel):
    """`semantic_filter:` of a perturbation (e.g. `{min_cos: 0.9, retries: 10}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: keep a noisy sentence only if cos(embedding(noisy), embedding(clean)) >= min_cos
    min_cos: float = Field(0.9, ge=-1.0, le=1.0)
    #: further draws after a rejected one (0: a single draw)
    retries: int = Field(10, ge=0, le=100)
    #: when every draw is rejected: keep the clean sentence, or the closest draw
    on_reject: Literal["clean", "best"] = "clean"


@dataclass
class FilterStats:
    """What the filter did for one severity: sentences seen, extra draws, sentences rejected."""

    sentences: int = 0
    retries: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sentences": self.sentences, "retries": self.retries, "rejected": self.rejected}


@lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    """(tokenizer, model) of all-MiniLM-L6-v2 from its local folder, loaded once, offline."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from anbench.backbones.mini_model import minilm_dir, offline_quiet, weights_file

    folder = minilm_dir()
    weights_file(folder)  # a one-line AnbenchError when the package is missing
    with offline_quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder)).eval()
    model.to(torch.float32)
    return tokenizer, model


@lru_cache(maxsize=8192)
def embed(text: str) -> np.ndarray:
    """The unit-norm MiniLM sentence embedding of `text` (float64, cached by text)."""
    import torch

    tokenizer, model = _encoder()
    batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=256)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]  # [tokens, 384]
    mask = batch["attention_mask"][0].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(0) / mask.sum().clamp(min=1e-9)
    vec = pooled.double().numpy()
    vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    vec.setflags(write=False)  # shared through the cache
    return vec


def cosine(a: str, b: str) -> float:
    return 1.0 if a == b else float(embed(a) @ embed(b))


def filtered(draw: Callable[[], str], clean: str, params: SemanticFilterParams,
             stats: FilterStats) -> str:
    """Draw noisy versions of `clean` until one is within `params.min_cos` of it.

    `draw` is the perturbation bound to one item's rng, so every retry continues that item's
    own stream and the result is the same in any order, batch or process.
    """
    stats.sentences += 1
    best, best_cos = clean, -np.inf
    for attempt in range(params.retries + 1):
        noisy = draw()
        cos = cosine(clean, noisy)
        if cos >= params.min_cos:
            stats.retries += attempt
            return noisy
        if cos > best_cos:
            best, best_cos = noisy, cos
    stats.retries += params.retries
    stats.rejected += 1
    return clean if params.on_reject == "clean" else best
