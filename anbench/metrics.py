"""Robustness metrics, computed from stored logits and text (or image) features.

All take plain tensors so they can be recomputed from a cell's stored arrays without a model.
Accuracies and LPR are percentages; AS is in percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


def _t(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def accuracy(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    logits, labels = _t(logits), _t(labels)
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(dim=-1) == labels).double().mean() * 100.0)


def text_shift(clean: torch.Tensor | np.ndarray, perturbed: torch.Tensor | np.ndarray) -> float:
    """TS = mean over classes of 1 - cos(t_c, t~_c)."""
    clean, perturbed = _t(clean).double(), _t(perturbed).double()
    return float((1.0 - F.cosine_similarity(clean, perturbed, dim=-1)).mean())


def image_feature_shift_per_image(clean: torch.Tensor | np.ndarray,
                                  perturbed: torch.Tensor | np.ndarray) -> np.ndarray:
    """1 - cos(f_i, f~_i) of each image i (rows of `[N, d]` features)."""
    clean, perturbed = _t(clean).double(), _t(perturbed).double()
    return (1.0 - F.cosine_similarity(clean, perturbed, dim=-1)).cpu().numpy()


def image_feature_shift(clean: torch.Tensor | np.ndarray,
                        perturbed: torch.Tensor | np.ndarray) -> float:
    """IFS = mean over images of 1 - cos(f, f~) (clean and perturbed image features)."""
    per_image = image_feature_shift_per_image(clean, perturbed)
    return float(per_image.mean()) if len(per_image) else float("nan")


def logit_preservation_rate(clean_logits: torch.Tensor | np.ndarray,
                            perturbed_logits: torch.Tensor | np.ndarray) -> float:
    """LPR = share (in %) of test images whose predicted class is unchanged."""
    clean, perturbed = _t(clean_logits), _t(perturbed_logits)
    if len(clean) == 0:
        return float("nan")
    return float((clean.argmax(dim=-1) == perturbed.argmax(dim=-1)).double().mean() * 100.0)


def accuracy_shift(clean_logits: torch.Tensor | np.ndarray,
                   perturbed_logits: torch.Tensor | np.ndarray,
                   labels: torch.Tensor | np.ndarray) -> float:
    """AS = Acc(perturbed) - Acc(clean), percentage points (negative = loss)."""
    return accuracy(perturbed_logits, labels) - accuracy(clean_logits, labels)


def harmonic_mean(base: float, new: float) -> float:
    if not np.isfinite(base) or not np.isfinite(new):
        return float("nan")
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)


@dataclass(frozen=True)
class MetricInfo:
    """How a metric reads: the one declaration every table, figure and note uses."""

    key: str  # the `metric` value in results.csv
    symbol: str  # short name in table headers
    label: str  # axis label, with its unit
    unit: str  # "%", "pp" (percentage points) or "" (a ratio)
    better: Literal["higher", "lower"]  # which direction is more accurate / more robust
    digits: int  # decimals shown in tables

    @property
    def arrow(self) -> str:
        return "↑" if self.better == "higher" else "↓"

    def header(self, prefix: str = "") -> str:
        """Table header: 'LPR (%) ↑'; with prefix 'Mean ': 'Mean LPR (%) ↑'."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{prefix}{self.symbol}{unit} {self.arrow}"


METRICS: dict[str, MetricInfo] = {m.key: m for m in (
    MetricInfo("acc", "Acc", "Accuracy (%)", "%", "higher", 2),
    MetricInfo("hm", "HM", "HM of base/new accuracy (%)", "%", "higher", 2),
    MetricInfo("ts", "TS", "Text shift (1 − cos)", "", "lower", 4),
    MetricInfo("ifs", "IFS", "Image feature shift (1 − cos)", "", "lower", 4),
    MetricInfo("lpr", "LPR", "LPR (%)", "%", "higher", 2),
    # AS = Acc(perturbed) - Acc(clean): closer to zero from below is more robust
    MetricInfo("as", "AS", "Accuracy shift (pp)", "pp", "higher", 2),
)}
