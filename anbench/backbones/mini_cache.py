"""Build the `mini` backbone once into the cache, and load it from there.

The result lives under `<cache>/backbones/mini-<config hash>/` (`visual.safetensors` +
`config.json`), written into a temporary folder that is renamed into place; a file lock
serialises concurrent builds. The key covers every parameter that changes the weights
(`MiniParams.key_fields`), the MiniLM weights' content hash and the alias files' content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anbench.backbones import mini_train
from anbench.backbones.base import LoadedBackbone, freeze, hash_file, hash_state_dict
from anbench.backbones.mini_data import aliases_file
from anbench.backbones.mini_model import (
    LABEL,
    TEXT_WIDTH,
    build_model,
    build_tokenizer,
    minilm_dir,
    model_config,
    text_weights_hash,
    trainable_state,
)
from anbench.backbones.mini_params import MiniParams
from anbench.backbones.mini_zeroshot import fast_zeroshot
from anbench.registry import AnbenchError

FORMAT_VERSION = 4  # 4: pretrain splits, caption aliases, weighted multi-positive loss
_RECORD_KEYS = ("config_hash", "params", "visual_file_sha256", "weights_hash")


def config_hash(params: MiniParams) -> str:
    payload = {"format": FORMAT_VERSION, "params": params.key_fields(),
               "text_weights": text_weights_hash(minilm_dir(params))}
    if params.alias_share > 0:  # the captions' words are part of what the tower learns
        payload["aliases"] = {name: hash_file(p) for name in params.datasets
                              if (p := aliases_file(name)).is_file()}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(params: MiniParams, cache_dir: Path) -> Path:
    return Path(cache_dir) / "backbones" / f"mini-{config_hash(params)}"


def _cache_dir(cache_dir: Path | None) -> Path:
    from anbench.paths import cache_dir as default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def is_built(params: MiniParams, cache_dir: Path) -> bool:
    folder = cache_path(params, cache_dir)
    return (folder / "config.json").is_file() and (folder / "visual.safetensors").is_file()


def build(params: MiniParams | None = None, cache_dir: Path | None = None,
          progress: bool = True, force: bool = False) -> Path:
    """Build the mini backbone into the cache unless it is there; return its folder.

    A second call returns at once (nothing is loaded). `force` rebuilds.
    """
    from filelock import FileLock
    from safetensors.torch import save_file

    from anbench.data.base import atomic_write_text
    from anbench.registry import DATASETS

    params = params or MiniParams()
    cache_dir = _cache_dir(cache_dir)
    folder = cache_path(params, cache_dir)
    if not force and is_built(params, cache_dir):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not force and is_built(params, cache_dir):  # another process built it meanwhile
            return folder
        if progress:
            print(f"building the mini backbone ({params.steps} steps, batch "
                  f"{params.batch_size}) into {folder}", file=sys.stderr)
        model, log = mini_train.train(params, cache_dir, progress=progress)
        zeroshot = {}
        for name in params.datasets:
            dataset = DATASETS.get(name)().load(cache_dir)
            zeroshot[name] = round(fast_zeroshot(model, build_tokenizer(params), dataset,
                                                 params.image_size), 4)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(model), str(tmp / "visual.safetensors"))
        text_cfg = model_config(params)["text_cfg"]
        record = {
            "name": "mini",
            "label": LABEL,
            "format": FORMAT_VERSION,
            "config_hash": folder.name.removeprefix("mini-"),
            "params": params.model_dump(exclude={"text_model_dir"}),  # as configured
            "model_config": {**model_config(params),  # without this machine's paths
                             "text_cfg": {**text_cfg, "hf_model_name": "all-MiniLM-L6-v2",
                                          "hf_tokenizer_name": "all-MiniLM-L6-v2"}},
            "text_weights_sha256": text_weights_hash(minilm_dir(params)),
            "visual_file_sha256": hash_file(tmp / "visual.safetensors"),
            "weights_hash": hash_state_dict(model),
            "zeroshot_test_accuracy": zeroshot,
            "train": log,
            "versions": _versions(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(tmp / "config.json", json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        if progress:
            accs = ", ".join(f"{k} {v:.1%}" for k, v in zeroshot.items())
            print(f"mini backbone built in {log['total_seconds']:.0f} s "
                  f"({log['images_per_second']:.0f} img/s); zero-shot test accuracy: {accs}",
                  file=sys.stderr)
    return folder


def read_record(folder: Path) -> dict[str, Any]:
    """The build's `config.json`; a damaged one is a one-line error saying what to delete."""
    path = folder / "config.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or any(key not in record for key in _RECORD_KEYS):
        raise AnbenchError(f"mini backbone cache {path} is damaged: delete {folder} and run "
                           "`anbench backbone build mini` again")
    return record


def load(params: MiniParams | None = None, cache_dir: Path | None = None,
         progress: bool = True, device: str = "cpu") -> LoadedBackbone:
    """Load the mini backbone, building it first if the cache lacks it."""
    from safetensors.torch import load_file

    from anbench.data.images import transforms_for

    params = params or MiniParams()
    cache_dir = _cache_dir(cache_dir)
    folder = build(params, cache_dir, progress=progress)
    record = read_record(folder)
    weights = folder / "visual.safetensors"
    if hash_file(weights) != record.get("visual_file_sha256"):
        raise AnbenchError(f"mini backbone cache {weights} is damaged (hash mismatch): delete "
                           f"{folder} and run `anbench backbone build mini` again")
    model = build_model(params)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith("visual.") or k == "logit_scale" for k in missing):
        raise AnbenchError(f"mini backbone cache {weights} does not match the model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete {folder}")
    freeze(model)
    model.to(device)
    preprocess_train, preprocess_eval = transforms_for(model, augment=True)
    return LoadedBackbone(
        name="mini",
        model=model,
        tokenizer=build_tokenizer(params),
        preprocess_train=preprocess_train,
        preprocess_eval=preprocess_eval,
        weights_hash=record["weights_hash"],
        label=LABEL,
        info={"cache": str(folder), "config_hash": record["config_hash"],
              "params": record["params"], "zeroshot_test_accuracy":
                  record.get("zeroshot_test_accuracy", {}),
              "text_tower": "hf-bert-mean", "embed_dim": TEXT_WIDTH,
              "context_length": params.context_length,
              "text_model_dir": str(minilm_dir(params)), "train": record.get("train", {})},
    )


def status(params: MiniParams | None = None, cache_dir: Path | None = None) -> tuple[bool, str]:
    """(built?, where it is or what to do) for `anbench doctor` and `anbench run`'s checks.

    Raises `AnbenchError` when it cannot be built here (no MiniLM weights) or the cached build
    is damaged: not built yet is fine, it builds on first use; those are not.
    """
    params = params or MiniParams()
    cache_dir = _cache_dir(cache_dir)
    folder = cache_path(params, cache_dir)
    if is_built(params, cache_dir):
        accs = read_record(folder).get("zeroshot_test_accuracy")
        detail = ", ".join(f"{k} {v:.1%}" for k, v in (accs or {}).items()
                           if isinstance(v, float))
        return True, f"built: {folder}" + (f" (zero-shot {detail})" if detail else "")
    return False, (f"not built yet (built automatically on first use, a few minutes on 2 CPU "
                   f"cores): anbench backbone build mini -> {folder}")


def _versions() -> dict[str, str]:
    import open_clip
    import transformers

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}
