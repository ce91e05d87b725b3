"""The generic trainer the runner calls for every trained method.

Deterministic from `seed`: the epoch permutations come from a seeded `torch.Generator` (never
the global RNG), methods initialise their prompts from the task seed in `setup`, and the backbone
is frozen in eval mode.

Schedule: Dassl's, per epoch, exactly (dassl/optim/lr_scheduler.py: `ConstantWarmupScheduler` /
`LinearWarmupScheduler` around `CosineAnnealingLR(T_max=max_epoch)`, stepped once at the end of
every epoch by the CoOp / DAPT trainers), which CoOp, DAPT and the ANPrompt authors' code use.
With W = `warmup_epochs` > 0, epoch e (0-based) trains at
    e < W:   `warmup_lr` (constant), or for linear: `warmup_lr` at e = 0, else lr * e / W;
    e >= W:  lr * (1 + cos(pi * (e - W) / epochs)) / 2.
The cosine restarts at the full `lr` at epoch W: when the warm-up ends, Dassl's wrapper hands
over to its successor, which has not been stepped yet (it is still at its epoch 0), and T_max
stays the total `epochs` (Dassl's default WARMUP_RECOUNT=True, which the references keep).
Without warm-up (W <= 0) it is plain cosine from epoch 0.

Only `method.trainable_parameters()` are optimised; each step minimises the sum of the named
terms `method.loss` returns, under `adapter.autocast()`.

Augmentation: `images` may be a bank of pre-drawn views `[N, V, C, H, W]`
(`anbench.view_bank.augmented_views`); epoch `e` then trains on view `e % V`, and each view's
`training_inputs` (frozen prefixes) is computed once, when first needed, and reused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from anbench.method import Method, MethodParams

Progress = Callable[[int, int, dict[str, Any]], None]


def epoch_lr(params: MethodParams, epoch: int) -> float:
    """Learning rate of epoch `epoch` (0-based), as Dassl's warm-up + cosine schedulers give it
    (see the module docstring)."""
    warmup = params.warmup_epochs
    if warmup <= 0:
        return 0.5 * params.lr * (1.0 + math.cos(math.pi * epoch / params.epochs))
    if epoch < warmup:
        if params.warmup_type == "linear" and epoch > 0:
            return params.lr * epoch / warmup
        return params.warmup_lr
    return 0.5 * params.lr * (1.0 + math.cos(math.pi * (epoch - warmup) / params.epochs))


def build_optimizer(parameters: list[torch.nn.Parameter],
                    params: MethodParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=params.lr, momentum=params.momentum,
                               weight_decay=params.weight_decay)
    return torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay)


def _rows(inputs: torch.Tensor | dict[str, torch.Tensor], index: torch.Tensor
          ) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(inputs, dict):
        return {key: value[index.to(value.device)] for key, value in inputs.items()}
    return inputs[index.to(inputs.device)]


def train(method: Method, images: torch.Tensor, labels: torch.Tensor, params: MethodParams,
          seed: int, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Train `method` (already `setup`) on the few-shot set; returns one record per step:
    `{"loss", <each named term>, "epoch", "step", "lr", "seconds"}` (numbers)."""
    if not method.trains:
        return []
    parameters = list(method.trainable_parameters())
    if not parameters:
        raise ValueError(f"{type(method).__name__} has no trainable parameters")
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"train: {len(images)} images and {len(labels)} labels")
    adapter = method.adapter
    optimizer = build_optimizer(parameters, params)
    gen = torch.Generator().manual_seed(int(seed))
    labels = labels.long()
    method.train()
    views = images.shape[1] if images.dim() == 5 else 0  # a bank [N, V, C, H, W]
    per_view: dict[int, torch.Tensor | dict[str, torch.Tensor]] = {}
    if not views:
        with adapter.autocast():
            inputs = method.training_inputs(images)  # frozen prefixes etc., computed once
    n, batch = len(labels), params.batch_size
    steps_per_epoch = math.ceil(n / batch)
    total = params.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(params.epochs):
            lr = epoch_lr(params, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if views:  # deterministic view of this epoch; its frozen inputs computed once
                view = epoch % views
                if view not in per_view:
                    with adapter.autocast():
                        per_view[view] = method.training_inputs(images[:, view])
                inputs = per_view[view]
            order = torch.randperm(n, generator=gen)
            for first in range(0, n, batch):
                index = order[first:first + batch]
                with adapter.autocast():
                    terms = method.loss(_rows(inputs, index), labels[index])
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                # Loss and terms first: progress bars show the leading entries.
                record: dict[str, Any] = {"loss": float(loss.detach())}
                record.update({name: float(value.detach()) for name, value in terms.items()})
                record.update(epoch=epoch, step=step, lr=lr,
                              seconds=round(time.perf_counter() - start, 4))
                history.append(record)
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {record}")
                if progress is not None:
                    progress(step, total, record)
            method.on_epoch_end(epoch, params.epochs)
    finally:
        method.eval()
    return history
