"""Train the `mini` vision tower LiT-style against the locked MiniLM text tower.

The captions of every class are embedded once by the frozen text tower; the image tower learns
to match them with a multi-positive InfoNCE loss averaged over an image's positives (its class's
captions, weighted; `caption_loss`). Optional +-`shift_px` pixel random shifts, off by default:
they slowed learning on fashion-mnist.

Training is budgeted in steps (not wall-clock), seeded (`torch.manual_seed`, deterministic torch
algorithms, a fixed numpy data order), on the CPU with `threads` threads, so a configuration
gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anbench.backbones.base import freeze
from anbench.backbones.mini_data import (
    TrainingData,
    batches,
    normalise_grey,
    random_shift,
    training_data,
)
from anbench.backbones.mini_model import build_model, build_tokenizer, encode_texts
from anbench.backbones.mini_params import MiniParams


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, caption_class: torch.Tensor,
                 caption_weight: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE of images `[B]` against all captions `[B, n_captions]` logits.

    Averaged over an image's positives (its class's captions) with the caption weights
    (SupCon's "out" form): it pulls an image towards the weighted centre of its class's captions,
    where a log-sum over the positives would let it settle on one wording and ignore the rest.
    """
    target = caption_weight.unsqueeze(0) * (caption_class.unsqueeze(0) == labels.unsqueeze(1))
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def lr_at(step: int, params: MiniParams) -> float:
    """Linear warm-up, then cosine decay to 0 at `steps`."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return params.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(params: MiniParams, cache_dir: Path, progress: bool = True,
          data: TrainingData | None = None,
          on_step: Callable[[int, float], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the vision tower LiT-style. Returns the model (CPU, eval mode) and a log dict."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    data = data or training_data(params, cache_dir)
    with deterministic(params.seed, params.threads):
        model = build_model(params)  # vision weights drawn right after the seed
        tokenizer = build_tokenizer(params)
        freeze(model.text)
        targets = encode_texts(model, tokenizer, data.captions)  # [n_captions, 384], fixed
        caption_class = torch.from_numpy(data.caption_class)
        caption_weight = torch.from_numpy(data.caption_weight).float()
        visual = model.visual
        visual.train()
        decay = [p for n, p in visual.named_parameters() if p.ndim >= 2
                 and "positional_embedding" not in n and "class_embedding" not in n]
        no_decay = [p for n, p in visual.named_parameters() if not any(p is q for q in decay)]
        with torch.no_grad():
            model.logit_scale.fill_(math.log(params.logit_scale_init))
        model.logit_scale.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": params.weight_decay},
             {"params": no_decay + [model.logit_scale], "weight_decay": 0.0}],
            lr=params.lr, betas=(0.9, 0.98), eps=1e-6)
        generator = torch.Generator().manual_seed(params.seed)
        images = torch.from_numpy(np.array(data.images))
        labels = torch.from_numpy(data.labels)
        losses: list[float] = []
        bar = tqdm(total=params.steps, desc="building mini backbone", unit="step",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        train_started = time.perf_counter()
        batch_iter = batches(data, params.batch_size, params.seed)
        for step in range(params.steps):
            index = torch.from_numpy(next(batch_iter))
            x = normalise_grey(random_shift(images[index], params.shift_px, generator))
            y = labels[index]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, params)
            features = F.normalize(visual(x), dim=-1)
            logits = model.logit_scale.exp() * features @ targets.T
            loss = caption_loss(logits, y, caption_class, caption_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            bar.update(1)
            if step % 10 == 0 or step == params.steps - 1:
                rate = (step + 1) * params.batch_size / (time.perf_counter() - train_started)
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", img_s=f"{rate:.0f}")
        bar.close()
        train_seconds = time.perf_counter() - train_started
        threads_used = torch.get_num_threads()
    freeze(model)
    log = {
        "steps": params.steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "images_per_second": round(params.steps * params.batch_size / max(train_seconds, 1e-9),
                                   1),
        "first_loss": round(float(np.mean(losses[:10])), 4) if losses else None,
        "final_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "loss_every_25": [round(float(np.mean(losses[i:i + 25])), 4)
                          for i in range(0, len(losses), 25)],
        "logit_scale": round(float(model.logit_scale.exp()), 3),
        "captions": len(data.captions),
        "datasets": data.datasets,
        "threads": threads_used,
    }
    return model, log
