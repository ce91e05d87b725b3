"""Device resolution: `auto` picks CUDA when present; asking for CUDA without it is an error."""

from __future__ import annotations

import torch

from anbench.registry import AnbenchError


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise AnbenchError("device 'cuda' requested but torch sees no CUDA device; "
                           "use --device cpu or auto")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise AnbenchError(f"unknown device '{requested}'; use auto, cpu or cuda")
    return torch.device(requested)
