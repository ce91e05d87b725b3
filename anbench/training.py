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
from collections.abc import Callable, Sequence
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


GroupProgress = Callable[[int, int, dict[int, dict[str, Any]]], None]


def train_group(methods: Sequence[Method], images: torch.Tensor, labels: torch.Tensor,
                params: Sequence[MethodParams], seed: int,
                progress: GroupProgress | None = None) -> list[list[dict[str, Any]] | Exception]:
    """Train several methods of one fusable family (`Method.fusable`, already `setup`) on the
    same few-shot set together: one shuffled order (the shared `seed`), one
    `fused_loss` pass per step for all members, then each member's own optimiser step at its
    own learning rate. Member m's history and parameters are those `train(methods[m], ...)`
    gives: its loss terms come from the same rows, its gradients from its own terms (the
    members' parameters are disjoint) and its optimiser and schedule are its own.

    Returns one entry per member: its history, or the error that stopped it (a non-finite
    loss, as `train` raises); the others go on. `progress(step, total, records)` gets the
    records of the members still training, by index. Errors of the shared pass propagate."""
    if not methods or len(methods) != len(params):
        raise ValueError(f"train_group: {len(methods)} methods and {len(params)} parameter sets")
    steps = {(p.epochs, p.batch_size) for p in params}
    if len(steps) != 1:
        raise ValueError(f"train_group: members differ in (epochs, batch size): {sorted(steps)}")
    family = type(methods[0]).fused_loss
    optimizers = []
    for method, method_params in zip(methods, params, strict=True):
        parameters = list(method.trainable_parameters())
        if not parameters:
            raise ValueError(f"{type(method).__name__} has no trainable parameters")
        optimizers.append(build_optimizer(parameters, method_params))
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"train: {len(images)} images and {len(labels)} labels")
    lead = methods[0]
    adapter = lead.adapter
    gen = torch.Generator().manual_seed(int(seed))
    labels = labels.long()
    for method in methods:
        method.train()
    views = images.shape[1] if images.dim() == 5 else 0
    per_view: dict[int, torch.Tensor | dict[str, torch.Tensor]] = {}
    if not views:
        with adapter.autocast():
            inputs = lead.training_inputs(images)  # the members' frozen inputs are the same
    epochs, batch = params[0].epochs, params[0].batch_size
    n = len(labels)
    total = epochs * math.ceil(n / batch)
    histories: list[list[dict[str, Any]]] = [[] for _ in methods]
    failures: dict[int, Exception] = {}
    active = list(range(len(methods)))
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(epochs):
            lrs = {i: epoch_lr(params[i], epoch) for i in active}
            for i in active:
                for group in optimizers[i].param_groups:
                    group["lr"] = lrs[i]
            if views:
                view = epoch % views
                if view not in per_view:
                    with adapter.autocast():
                        per_view[view] = lead.training_inputs(images[:, view])
                inputs = per_view[view]
            order = torch.randperm(n, generator=gen)
            for first in range(0, n, batch):
                index = order[first:first + batch]
                with adapter.autocast():
                    terms = family([methods[i] for i in active], _rows(inputs, index),
                                   labels[index])
                losses = [sum(member.values()) for member in terms]
                for i in active:
                    optimizers[i].zero_grad(set_to_none=True)
                # d(sum)/d(loss_m) = 1: each member gets exactly its own loss's gradients.
                sum(losses).backward()
                for i in active:
                    optimizers[i].step()
                step += 1
                seconds = round(time.perf_counter() - start, 4)
                records: dict[int, dict[str, Any]] = {}
                for i, member, loss in zip(active, terms, losses, strict=True):
                    record: dict[str, Any] = {"loss": float(loss.detach())}
                    record.update({name: float(v.detach()) for name, v in member.items()})
                    record.update(epoch=epoch, step=step, lr=lrs[i], seconds=seconds)
                    histories[i].append(record)
                    if not math.isfinite(record["loss"]):
                        failures[i] = FloatingPointError(
                            f"non-finite loss at step {step}: {record}")
                    else:
                        records[i] = record
                active = [i for i in active if i not in failures]
                if progress is not None and records:
                    progress(step, total, records)
                if not active:
                    break
            for i in active:
                methods[i].on_epoch_end(epoch, epochs)
            if not active:
                break
    finally:
        for method in methods:
            method.eval()
    return [failures.get(i, histories[i]) for i in range(len(methods))]
