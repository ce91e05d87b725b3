"""anbench: robustness benchmarking and ablation toolkit for prompt tuning of CLIP-like models.

Python API (see the README): `anbench.run(...)` trains and evaluates a suite and returns its
handle, `anbench.load(path)` opens a stored suite (`.results`, `.cell(...)`, `.report(...)`),
`anbench.perturb(text, noise)` shows what perturbations make of a sentence,
`anbench.perturb_image(out, ...)` draws an image under every image corruption.
"""

from typing import Any

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

# Loaded on first use, so `import anbench` (and the CLI's start) stays light.
_API = ("run", "load", "perturb", "perturb_image", "Suite", "Cell")


def __getattr__(name: str) -> Any:
    if name in _API:
        from anbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'anbench' has no attribute {name!r}")


__all__ = [
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "PERTURBATIONS",
    "REPORTS",
    "AnbenchError",
    "Cell",
    "Suite",
    "UnknownNameError",
    "__version__",
    "load",
    "load_plugin",
    "perturb",
    "perturb_image",
    "run",
]
