"""anbench: robustness benchmarking and ablation toolkit for prompt tuning of CLIP-like models."""

from anbench.registry import (
    BACKBONES,
    DATASETS,
    METHODS,
    PERTURBATIONS,
    REPORTS,
    AnbenchError,
    UnknownNameError,
    load_plugin,
)

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "PERTURBATIONS",
    "REPORTS",
    "AnbenchError",
    "UnknownNameError",
    "load_plugin",
    "__version__",
]
