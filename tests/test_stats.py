"""The bootstrap (anbench.stats) against cases whose bootstrap distribution is known exactly, and
the per-unit scores of a cell (anbench.cell_scores) against anbench.metrics."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from anbench import metrics
from anbench.cell_scores import load_cell_scores
from anbench.registry import AnbenchError
from anbench.stats import (
    Bootstrap,
    Estimate,
    combine,
    harmonic_replicates,
    paired_p_value,
    percentile_interval,
    point_estimate,
)


def distribution(values: np.ndarray) -> dict[float, float]:
    counts = Counter(np.round(values, 9).tolist())
    return {k: v / len(values) for k, v in counts.items()}


def test_single_seed_bootstrap_matches_the_enumerated_distribution() -> None:
    x = np.array([0.0, 1.0, 5.0])
    # all 27 equally likely index triples: the exact bootstrap distribution of the mean
    exact = Counter(round(float(np.mean(x[list(t)])), 9) for t in itertools.product(range(3),
                                                                                  repeat=3))
    reps = Bootstrap(20000).replicates({1: x}, ("toy", "base", "images"))[:, 0]
    got = distribution(reps)
    assert set(got) <= set(exact)
    for value, count in exact.items():  # 20000 draws: every share within 0.015 (> 5 sigma)
        assert got.get(value, 0.0) == pytest.approx(count / 27, abs=0.015), value
    # percentile interval of the exact distribution: 2.5% and 97.5% quantiles are its atoms
    atoms = sorted(exact)
    cdf = np.cumsum([exact[a] / 27 for a in atoms])
    lo_exact = atoms[int(np.searchsorted(cdf, 0.025))]
    hi_exact = atoms[int(np.searchsorted(cdf, 0.975))]
    lo, hi = percentile_interval(reps)
    assert (lo, hi) == (pytest.approx(lo_exact), pytest.approx(hi_exact))


def test_bootstrap_variance_of_a_mean_is_the_plug_in_variance_over_n() -> None:
    x = np.random.default_rng(0).normal(size=400) * 3.0
    reps = Bootstrap(4000).replicates({1: x}, ("toy", "base", "images"))[:, 0]
    expected = np.var(x) / len(x)  # Var*(mean*) = sigma_hat^2 / n, sigma_hat with ddof=0
    assert reps.var() == pytest.approx(expected, rel=0.1)
    assert reps.mean() == pytest.approx(x.mean(), abs=4 * math.sqrt(expected / 4000) + 1e-12)


def test_several_seeds_are_resampled_then_images_within_each() -> None:
    # constant scores within a seed: only the seed draw matters, so the mean of two drawn
    # seeds is 10 (1/4), 15 (1/2) or 20 (1/4)
    per_seed = {1: np.full(50, 10.0), 2: np.full(50, 20.0)}
    reps = Bootstrap(8000).replicates(per_seed, ("toy", "base", "images"))[:, 0]
    got = distribution(reps)
    assert set(got) == {10.0, 15.0, 20.0}
    assert got[10.0] == pytest.approx(0.25, abs=0.02)
    assert got[15.0] == pytest.approx(0.5, abs=0.02)
    assert point_estimate(per_seed)[0] == pytest.approx(15.0)
    # with image noise on top, the spread is the seed spread plus the image spread
    rng = np.random.default_rng(1)
    noisy = {s: v + rng.normal(size=50) for s, v in per_seed.items()}
    spread = Bootstrap(4000).replicates(noisy, ("toy", "base", "images"))[:, 0].var()
    # a mean of 2 seeds drawn from 2 (plug-in variance 25 for {10, 20}) has variance 25 / 2
    seeds_only = np.var([v.mean() for v in noisy.values()]) / 2
    images = np.mean([np.var(v) / 50 for v in noisy.values()]) / 2
    assert spread == pytest.approx(seeds_only + images, rel=0.1)
    # seeds with equal means: only the images within each drawn seed spread the replicates
    centred = {s: v - v.mean() for s, v in noisy.items()}
    spread = Bootstrap(4000).replicates(centred, ("toy", "base", "images"))[:, 0].var()
    assert spread == pytest.approx(np.mean([np.var(v) / 50 for v in centred.values()]) / 2,
                                   rel=0.1)


def test_base_and_new_share_seed_draws_but_not_images() -> None:
    boot = Bootstrap(2000)
    base = boot.replicates({1: np.full(30, 10.0), 2: np.full(30, 20.0)}, ("toy", "base", "i"),
                           ("toy",))[:, 0]
    new = boot.replicates({1: np.full(40, 30.0), 2: np.full(40, 40.0)}, ("toy", "new", "i"),
                          ("toy",))[:, 0]
    np.testing.assert_allclose(base - 10.0, new - 30.0)  # the same seeds drawn for both
    rng = np.random.default_rng(2)
    b = boot.replicates({1: rng.random(300)}, ("toy", "base", "i"))[:, 0]
    n = boot.replicates({1: rng.random(300)}, ("toy", "new", "i"))[:, 0]
    assert abs(np.corrcoef(b, n)[0, 1]) < 0.1  # images of the two splits drawn independently
    hm = harmonic_replicates(b, n)
    np.testing.assert_allclose(hm, 2 * b * n / (b + n))
    assert harmonic_replicates(np.array([0.0]), np.array([0.0]))[0] == 0.0


def test_paired_test_detects_a_real_difference_and_not_a_null_one() -> None:
    n = 1000
    a = (np.arange(n) < 800).astype(float) * 100  # 80% right
    b = a.copy()
    b[:60] = 0.0  # B loses 60 of A's right images: 74%
    boot = Bootstrap(2000)
    stream = ("toy", "base", "images")
    ra, rb = boot.replicates({1: a}, stream)[:, 0], boot.replicates({1: b}, stream)[:, 0]
    diff = ra - rb
    lo, hi = percentile_interval(diff)
    assert lo > 0 and lo < 6.0 < hi and paired_p_value(diff) < 0.001
    # the same images for both: the paired interval is far narrower than an unpaired one
    unpaired = ra - boot.replicates({1: b}, ("other", "base", "images"))[:, 0]
    u_lo, u_hi = percentile_interval(unpaired)
    assert (hi - lo) < 0.5 * (u_hi - u_lo)
    # identical methods: every replicated difference is 0, p = 1
    same = boot.replicates({1: a.copy()}, stream)[:, 0]
    assert percentile_interval(ra - same) == (0.0, 0.0) and paired_p_value(ra - same) == 1.0
    # equal accuracy, different errors (40 images each way): not significant
    c = a.copy()
    c[:40], c[800:840] = 0.0, 100.0
    rc = boot.replicates({1: c}, stream)[:, 0]
    assert paired_p_value(ra - rc) > 0.3


def test_p_value_by_hand() -> None:
    d = np.array([1.0] * 99 + [-1.0])
    assert paired_p_value(d) == pytest.approx(2 * (1 + 1) / 101)
    assert paired_p_value(-d) == pytest.approx(2 * (1 + 1) / 101)
    assert paired_p_value(np.array([1.0, -1.0])) == 1.0
    assert math.isnan(paired_p_value(np.array([])))


def test_bootstrap_is_deterministic_and_keyed_by_the_test_set() -> None:
    x = np.random.default_rng(3).random((200, 3))
    one = Bootstrap(600).replicates({1: x}, ("toy", "base", "images"))
    two = Bootstrap(600).replicates({1: x}, ("toy", "base", "images"))
    np.testing.assert_array_equal(one, two)
    other = Bootstrap(600).replicates({1: x}, ("toy", "new", "images"))
    assert not np.array_equal(one, other)
    # resamples are drawn in keyed chunks: a longer run extends a shorter one
    longer = Bootstrap(900).replicates({1: x}, ("toy", "base", "images"))
    np.testing.assert_array_equal(longer[:500], one[:500])
    # each column is resampled with the same indices as if it were alone
    alone = Bootstrap(600).replicates({1: x[:, 1]}, ("toy", "base", "images"))[:, 0]
    np.testing.assert_allclose(alone, one[:, 1], rtol=1e-6)


@pytest.mark.parametrize("bad", [1, 0, -5, 10**9, 2.5, "many", True])
def test_bad_resample_counts_are_one_line_errors(bad: object) -> None:
    with pytest.raises(AnbenchError, match="resamples must be a whole number"):
        Bootstrap(bad)  # type: ignore[arg-type]


def test_seeds_on_different_test_sets_are_refused() -> None:
    with pytest.raises(AnbenchError, match="different test sets"):
        Bootstrap(10).replicates({1: np.ones(5), 2: np.ones(6)}, ("toy", "base", "images"))
    with pytest.raises(AnbenchError, match="no test units"):
        Bootstrap(10).replicates({1: np.ones(0)}, ("toy", "base", "images"))


def test_combine_is_the_weighted_mean_of_replicates_and_draws() -> None:
    e1 = Estimate(1.0, np.array([0.0, 2.0]), np.array([1.0, 3.0]))
    e2 = Estimate(3.0, np.array([2.0, 4.0]), np.array([2.0, 4.0]))
    both = combine([e1, e2])
    assert both.point == 2.0
    np.testing.assert_allclose(both.replicates, [1.0, 3.0])
    assert both.draw_std == pytest.approx(np.std([1.5, 3.5], ddof=1))
    weighted = combine([e1, e2], [0.75, 0.25])
    assert weighted.point == pytest.approx(1.5)
    assert math.isnan(combine([e1, Estimate(0.0, np.zeros(2), np.ones(3))]).draw_std)


# ----------------------------------------------------------------------------------------------
# per-unit scores of a cell

def write_arrays(path: Path, draws: int | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    n, c, d = 30, 3, 5
    labels = rng.integers(0, c, size=n)
    clean = rng.normal(size=(n, c)).astype(np.float32)
    text = rng.normal(size=(c, d)).astype(np.float32)
    shape = (draws,) if draws else ()
    noisy = (clean + rng.normal(scale=0.8, size=(*shape, n, c))).astype(np.float32)
    noisy_text = (text + rng.normal(scale=0.5, size=(*shape, c, d))).astype(np.float32)
    arrays = {"base/labels": labels, "base/logits/clean": clean, "base/text/clean": text,
              "base/logits/mask@0.5": noisy, "base/text/mask@0.5": noisy_text}
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("draws", [None, 4])
def test_cell_scores_reproduce_the_metrics(tmp_path: Path, draws: int | None) -> None:
    arrays = write_arrays(tmp_path / "arrays.npz", draws)
    scores = load_cell_scores(tmp_path / "arrays.npz")["base"]
    labels, clean = arrays["base/labels"], arrays["base/logits/clean"]
    noisy = arrays["base/logits/mask@0.5"]
    noisy_text = arrays["base/text/mask@0.5"]
    if draws is None:  # the older [N, C] shape is one draw
        noisy, noisy_text = noisy[None], noisy_text[None]
    per = {
        "acc": [metrics.accuracy(lg, labels) for lg in noisy],
        "lpr": [metrics.logit_preservation_rate(clean, lg) for lg in noisy],
        "as": [metrics.accuracy_shift(clean, lg, labels) for lg in noisy],
        "ts": [metrics.text_shift(arrays["base/text/clean"], t) for t in noisy_text],
    }
    assert scores.scores[("clean", "acc")].mean() == pytest.approx(
        metrics.accuracy(clean, labels))
    for metric, values in per.items():
        assert scores.scores[("mask@0.5", metric)].mean() == pytest.approx(np.mean(values),
                                                                            abs=1e-6)
        np.testing.assert_allclose(scores.per_draw[("mask@0.5", metric)], values, atol=1e-6)
    assert scores.units("acc") == 30 and scores.units("ts") == 3
    assert scores.draws("mask@0.5") == (draws or 1)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_damaged_arrays_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "arrays.npz"
    path.write_bytes(content)
    with pytest.raises(AnbenchError, match="cannot read"):
        load_cell_scores(path)


def test_arrays_of_another_shape_are_one_line_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", **{"base/labels": np.zeros(3, dtype=int),
                                    "base/logits/clean": np.zeros((4, 2))})
    with pytest.raises(AnbenchError, match="does not hold the arrays of an evaluated cell"):
        load_cell_scores(tmp_path / "a.npz")
