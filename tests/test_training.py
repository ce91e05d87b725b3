"""The generic trainer: schedule, optimiser, deterministic shuffling, what it optimises."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from anbench.method import Method, MethodParams
from anbench.training import build_optimizer, epoch_lr, train


class _StubAdapter:
    def autocast(self):
        return contextlib.nullcontext()


class _Toy(Method):
    """Fits w to the batch mean; records every batch's labels; has a frozen module too."""

    def __init__(self, params: MethodParams):
        super().__init__(params, _StubAdapter())
        self.w = nn.Parameter(torch.zeros(2))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.batches: list[list[int]] = []

    def loss(self, images, labels):
        self.batches.append(labels.tolist())
        target = images.float().mean(dim=(0, 2, 3))[:2]
        return {"fit": ((self.w - target) ** 2).sum(), "reg": 0.01 * self.w.pow(2).sum()}


def _data(n: int = 10):
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2) + 1.0
    return images, torch.arange(n)


def test_schedule_warmup_then_cosine():
    p = MethodParams(epochs=4, lr=0.1, warmup_epochs=1, warmup_lr=1e-5)
    assert epoch_lr(p, 0) == 1e-5
    # the cosine starts over at the full lr when the warm-up ends, and T_max is all 4 epochs
    assert epoch_lr(p, 1) == pytest.approx(0.1)
    assert epoch_lr(p, 2) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert epoch_lr(p, 3) == pytest.approx(0.05)
    assert epoch_lr(MethodParams(epochs=4, lr=0.1, warmup_epochs=0), 0) == pytest.approx(0.1)
    assert epoch_lr(MethodParams(epochs=4, lr=0.1, warmup_epochs=0), 2) == pytest.approx(0.05)
    linear = MethodParams(epochs=6, lr=0.1, warmup_epochs=3, warmup_lr=1e-4,
                          warmup_type="linear")
    assert [epoch_lr(linear, e) for e in range(4)] == pytest.approx([1e-4, 0.1 / 3, 0.2 / 3, 0.1])


# --- Dassl's schedulers, rebuilt from dassl/optim/lr_scheduler.py (KaiyangZhou/Dassl.pytorch):
# the same classes minus the deprecated `verbose` argument, which current torch no longer takes.

class _BaseWarmupScheduler(LRScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        raise NotImplementedError

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


class _ConstantWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class _LinearWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def _dassl_scheduler(optimizer, p: MethodParams):
    """As dassl's build_lr_scheduler builds it for LR_SCHEDULER "cosine" (WARMUP_RECOUNT True)."""
    scheduler = CosineAnnealingLR(optimizer, float(p.epochs))
    if p.warmup_epochs > 0:
        warmup = (_ConstantWarmupScheduler if p.warmup_type == "constant"
                  else _LinearWarmupScheduler)
        scheduler = warmup(optimizer, scheduler, p.warmup_epochs, p.warmup_lr)
    return scheduler


def _dassl_epoch_lrs(p: MethodParams) -> list[float]:
    """The lr each epoch trains at when the scheduler is stepped once at the end of every epoch
    (CoOp's / DAPT's forward_backward: `if (self.batch_idx + 1) == self.num_batches:
    self.update_lr()`)."""
    w = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=p.lr, momentum=p.momentum)
    scheduler = _dassl_scheduler(optimizer, p)
    lrs = []
    for _ in range(p.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no grad: a no-op that keeps torch's call-order check quiet
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("epochs", "warmup", "kind", "lr", "warmup_lr"), [
    (10, 1, "constant", 2e-3, 1e-5),   # CoOp / DAPT configs: WARMUP_EPOCH 1, constant 1e-5
    (200, 1, "constant", 2e-3, 1e-5),  # their 16-shot ViT-B/16 schedule
    (50, 1, "constant", 20.0, 1e-5),   # a DAPT per-dataset lr
    (10, 1, "constant", 1e-3, 1e-5),   # the ANPrompt authors' 10 epochs
    (10, 3, "constant", 2e-3, 1e-5),
    (10, 1, "linear", 2e-3, 1e-5),
    (200, 4, "linear", 2e-3, 1e-6),
    (10, 0, "constant", 2e-3, 1e-5),   # no warm-up: plain cosine
    (3, 5, "constant", 2e-3, 1e-5),    # warm-up longer than training
])
def test_epoch_lr_matches_dassl(epochs, warmup, kind, lr, warmup_lr):
    p = MethodParams(epochs=epochs, lr=lr, warmup_epochs=warmup, warmup_lr=warmup_lr,
                     warmup_type=kind)
    expected = _dassl_epoch_lrs(p)
    ours = [epoch_lr(p, e) for e in range(epochs)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_training_follows_dassl_lr_every_step():
    """The trainer's SGD steps equal a reference loop driven by Dassl's scheduler: the lr is
    constant within an epoch and changes only at epoch boundaries."""

    class Pull(_Toy):  # a loss that does not depend on the batch: any shuffling gives the same
        def loss(self, images, labels):
            return {"fit": ((self.w - torch.tensor([3.0, -1.0])) ** 2).sum()}

    p = MethodParams(epochs=6, batch_size=4, lr=0.05, warmup_epochs=1, warmup_lr=1e-3,
                     optimizer="sgd", momentum=0.9, weight_decay=5e-4)
    images, labels = _data(10)  # 3 steps per epoch
    toy = Pull(p)
    history = train(toy, images, labels, p, seed=1)

    w = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([w], lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = _dassl_scheduler(optimizer, p)
    lrs = []
    for _ in range(p.epochs):
        for _ in range(3):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            ((w - torch.tensor([3.0, -1.0])) ** 2).sum().backward()
            optimizer.step()
        scheduler.step()
    assert [r["lr"] for r in history] == pytest.approx(lrs, rel=1e-9)
    assert torch.allclose(toy.w.detach(), w.detach(), rtol=1e-5, atol=1e-6)


def test_optimizer_from_params():
    w = [nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(w, MethodParams(optimizer="sgd", lr=0.2, momentum=0.9,
                                          weight_decay=5e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adamw = build_optimizer(w, MethodParams(optimizer="adamw", lr=1e-3, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 1e-3


def test_history_shuffling_and_frozen_parts():
    params = MethodParams(epochs=3, batch_size=4, lr=0.1, warmup_epochs=1, optimizer="sgd")
    images, labels = _data()
    calls = []
    toy = _Toy(params)
    frozen_before = toy.frozen.weight.clone()
    history = train(toy, images, labels, params, seed=7,
                    progress=lambda step, total, rec: calls.append((step, total)))
    assert len(history) == 3 * 3  # ceil(10 / 4) steps per epoch, the last batch kept
    assert calls[-1] == (9, 9)
    first = history[0]
    assert {"epoch", "step", "lr", "loss", "fit", "reg", "seconds"} <= set(first)
    assert first["loss"] == pytest.approx(first["fit"] + first["reg"])
    assert [r["lr"] for r in history[:3]] == [1e-5] * 3
    assert torch.equal(toy.frozen.weight, frozen_before)
    assert toy.w.abs().sum() > 0 and not toy.training
    # every epoch is a permutation; the same seed gives the same order, another seed another
    for epoch in range(3):
        assert sorted(sum(toy.batches[3 * epoch:3 * epoch + 3], [])) == list(range(10))
    again = _Toy(params)
    train(again, images, labels, params, seed=7)
    assert again.batches == toy.batches and torch.equal(again.w, toy.w)
    other = _Toy(params)
    train(other, images, labels, params, seed=8)
    assert other.batches != toy.batches


def test_loss_decreases_and_rejects_bad_input():
    params = MethodParams(epochs=20, batch_size=10, lr=0.2, warmup_epochs=0, optimizer="sgd",
                          momentum=0.0, weight_decay=0.0)
    images, labels = _data()
    history = train(_Toy(params), images, labels, params, seed=1)
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    with pytest.raises(ValueError):
        train(_Toy(params), images, labels[:3], params, seed=1)


def test_dict_training_inputs_are_sliced_per_batch():
    class Cached(_Toy):
        def training_inputs(self, images):
            return {"x": images, "ids": torch.arange(len(images))}

        def loss(self, inputs, labels):
            assert torch.equal(inputs["ids"], labels)  # rows stay aligned with labels
            return super().loss(inputs["x"], labels)

    params = MethodParams(epochs=2, batch_size=3, lr=0.1, warmup_epochs=0)
    images, labels = _data()
    assert len(train(Cached(params), images, labels, params, seed=3)) == 8
