"""The generic trainer: schedule, optimiser, deterministic shuffling, what it optimises."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

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
    assert epoch_lr(p, 1) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert epoch_lr(p, 2) == pytest.approx(0.05)
    assert epoch_lr(MethodParams(epochs=4, lr=0.1, warmup_epochs=0), 0) == pytest.approx(0.1)


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
