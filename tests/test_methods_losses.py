"""The method loss formulas against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from anbench.methods._common import (
    class_means,
    inter_dispersion,
    intra_dispersion,
    scaled_logits,
    sim_loss,
    wa_loss,
)


def test_intra_dispersion_by_hand():
    # n([3, 4]) = [0.6, 0.8] vs s_0 = [0.5, 0.5]: squared errors 0.01 + 0.09; n([2, 0]) = s_1.
    features = torch.tensor([[3.0, 4.0], [2.0, 0.0]])
    prototypes = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert intra_dispersion(features, prototypes, labels).item() == pytest.approx(0.1 / 4)


def test_inter_dispersion_by_hand():
    # Unit vectors e1, 2*e2 (normalised to e2), -e1: squared distances 2, 4, 2.
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = (2 * math.exp(-2 * 2) + math.exp(-2 * 4)) / 3
    assert inter_dispersion(g).item() == pytest.approx(expected, rel=1e-6)
    assert inter_dispersion(g, t=1.0).item() == pytest.approx(
        (2 * math.exp(-2) + math.exp(-4)) / 3, rel=1e-6)
    assert inter_dispersion(g[:1]).item() == 0.0  # one class: no pairs


def test_wa_loss_by_hand():
    # p^n uniform; rows of z^c are [1, 0] and [0, 1]: each row's KL is log((1+e)/2) - 1/2.
    # std over the four entries (unbiased): mean 1/2, sum of squares 1, / 3 -> 1/sqrt(3).
    z_c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_n = torch.zeros(2, 2)
    kl = 2 * (math.log((1 + math.e) / 2) - 0.5)
    expected = kl / ((1 / math.sqrt(3) + 1e-6) * 2 * 2)
    assert wa_loss(z_c, z_n).item() == pytest.approx(expected, rel=1e-6)
    assert wa_loss(z_c, z_c).item() == pytest.approx(0.0, abs=1e-7)  # same distributions


def test_wa_loss_is_kl_of_noise_from_clean():
    gen = torch.Generator().manual_seed(0)
    z_c, z_n = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    kl = torch.nn.functional.kl_div(z_c.log_softmax(-1), z_n.log_softmax(-1), log_target=True,
                                    reduction="sum")
    assert wa_loss(z_c, z_n).item() == pytest.approx((kl / ((z_c.std() + 1e-6) * 15)).item(),
                                                     rel=1e-5)


def test_sim_loss_by_hand():
    # cos = 1 and 1/sqrt(2) for the images; text identical up to scale (cos 1).
    f_c = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f_0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t_c = torch.tensor([[0.0, 2.0]])
    t_0 = torch.tensor([[0.0, 1.0]])
    expected = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert sim_loss(f_c, f_0, t_c, t_0).item() == pytest.approx(expected, rel=1e-6)
    # and the text half: orthogonal class features add 1
    assert sim_loss(f_0, f_0, t_c, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)


def test_scaled_logits_by_hand():
    f = torch.tensor([[3.0, 4.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    assert torch.allclose(scaled_logits(f, t, 10.0), torch.tensor([[6.0, 8.0]]))


def test_class_means_are_not_renormalised():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    means = class_means(features, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(means, torch.tensor([[0.5, 0.5], [0.6, 0.8]]))
    with pytest.raises(ValueError, match="missing"):
        class_means(features, torch.tensor([0, 0, 0]), 2)
