"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anbench import metrics


def test_accuracy_and_lpr_and_as_by_hand():
    labels = np.array([0, 1, 2, 1])
    clean = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 0], [0, 5, 1]], dtype=float)  # 0 1 0 1
    noisy = np.array([[0, 1, 0], [0, 2, 1], [0, 0, 9], [0, 1, 5]], dtype=float)  # 1 1 2 2
    assert metrics.accuracy(clean, labels) == pytest.approx(75.0)  # 3 of 4
    assert metrics.accuracy(noisy, labels) == pytest.approx(50.0)  # 2 of 4
    assert metrics.logit_preservation_rate(clean, noisy) == pytest.approx(25.0)  # only image 1
    assert metrics.accuracy_shift(clean, noisy, labels) == pytest.approx(-25.0)


def test_text_shift_by_hand():
    clean = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    noisy = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # class 0: 1 - cos 45 deg = 1 - 1/sqrt(2); class 1: 1 - (-1) = 2
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert metrics.text_shift(clean, noisy) == pytest.approx(expected)
    assert metrics.text_shift(clean, clean) == pytest.approx(0.0, abs=1e-12)


def test_harmonic_mean():
    assert metrics.harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert metrics.harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(metrics.harmonic_mean(float("nan"), 50.0))


def test_metric_metadata_is_declared_once_for_every_stored_metric():
    assert set(metrics.METRICS) == {"acc", "hm", "ts", "ifs", "lpr", "as"}
    assert all(key == info.key for key, info in metrics.METRICS.items())
    ts, lpr, shift = (metrics.METRICS[k] for k in ("ts", "lpr", "as"))
    # lower text shift is more robust; a preserved prediction and a smaller loss are better
    assert (ts.better, lpr.better, shift.better) == ("lower", "higher", "higher")
    assert ts.header() == "TS ↓" and lpr.header() == "LPR (%) ↑"
    assert shift.header("Mean ") == "Mean AS (pp) ↑" and shift.label == "Accuracy shift (pp)"
    assert (ts.digits, lpr.digits) == (4, 2)
