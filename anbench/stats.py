"""Bootstrap confidence intervals and paired tests for metrics that are means over test units.

Accuracy, LPR and AS are means over test images of a per-image score (correct, prediction kept,
their difference; each already a mean over noise draws), TS a mean over classes of a per-class
shift; the metric of several seeds is the mean of the per-seed metrics. So one resample is:

- draw S seeds with replacement from the S seeds evaluated (skipped when S = 1), then
- for each drawn seed, draw N units with replacement (independently per drawn seed: the
  hierarchical bootstrap of Davison & Hinkley, *Bootstrap Methods and their Application*, 1997,
  section 3.8), and average.

A stream of resamples is keyed (`anbench.seeds.numpy_rng`) by what defines the test set, never
by the method: two methods evaluated on the same dataset, split and seeds get the same resampled
indices, which makes their difference a paired comparison (shared images and noise draws cancel
out). HM is the harmonic mean of the base and new replicates, whose images are drawn
independently (different streams). Intervals are percentile intervals; a two-sided p-value is
twice the smaller tail of the replicated difference around zero (with the +1 correction of Davison
& Hinkley, eq. 4.11), so p < 0.05 exactly when 0 lies outside the 95% interval, up to that
correction.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from anbench.registry import AnbenchError
from anbench.seeds import Part, numpy_rng

DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 100_000  # beyond this the percentile interval gains nothing but run time
LEVEL = 0.95  # the interval's coverage
SIGNIFICANCE = 0.05  # a difference with p below this is significant
_CHUNK = 250  # resamples drawn per stream chunk: bounds memory to _CHUNK x N counts
_CACHE_BYTES = 256 * 2**20  # resample counts kept for reuse (every method reuses them)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap replicates (same stream order as any paired one)."""

    point: float
    replicates: np.ndarray = field(repr=False, compare=False)
    draws: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def interval(self) -> tuple[float, float]:
        return percentile_interval(self.replicates)

    @property
    def draw_std(self) -> float:
        """Std (ddof=1) over noise draws of the per-draw values; NaN for fewer than 2 draws."""
        return float(np.std(self.draws, ddof=1)) if len(self.draws) > 1 else math.nan


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (lower, upper) percentile interval of `replicates` (NaN when there are none)."""
    reps = np.asarray(replicates, dtype=float)
    if reps.size == 0 or np.isnan(reps).any():
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(reps, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_p_value(difference: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0 'no difference' from replicates of a difference."""
    d = np.asarray(difference, dtype=float)
    if d.size == 0 or np.isnan(d).any():
        return math.nan
    below = (1 + int(np.count_nonzero(d <= 0))) / (d.size + 1)
    above = (1 + int(np.count_nonzero(d >= 0))) / (d.size + 1)
    return min(1.0, 2.0 * min(below, above))


def harmonic_replicates(base: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Elementwise harmonic mean of base and new replicates (0 where both are 0)."""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    total = base + new
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total == 0, 0.0, 2.0 * base * new / np.where(total == 0, 1.0, total))


def combine(estimates: Sequence[Estimate], weights: Sequence[float] | None = None) -> Estimate:
    """The weighted mean of estimates (e.g. over datasets); replicates and draws alike.

    Draws combine only when every estimate has the same number (draw k of each is averaged)."""
    if not estimates:
        raise ValueError("nothing to combine")
    w = np.full(len(estimates), 1.0 / len(estimates)) if weights is None else np.asarray(
        weights, dtype=float)
    point = float(sum(wi * e.point for wi, e in zip(w, estimates, strict=True)))
    reps = np.sum([wi * e.replicates for wi, e in zip(w, estimates, strict=True)], axis=0)
    sizes = {len(e.draws) for e in estimates}
    draws = (np.sum([wi * e.draws for wi, e in zip(w, estimates, strict=True)], axis=0)
             if len(sizes) == 1 else np.empty(0))
    return Estimate(point, reps, draws)


class Bootstrap:
    """Replicates of seed-averaged unit means, with resample streams shared across callers.

    `stream` names the test set (e.g. ('fashion-mnist', 'base', 'images')); the resampled
    indices depend on it, on the number of units and on the seeds, never on the values, so
    every method on that test set gets the same ones (paired).
    """

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, salt: Part = "anbench-bootstrap"):
        if (not isinstance(resamples, int) or isinstance(resamples, bool)
                or not 2 <= resamples <= MAX_RESAMPLES):
            raise AnbenchError(f"bootstrap resamples must be a whole number from 2 to "
                               f"{MAX_RESAMPLES}, got {resamples!r}")
        self.resamples = resamples
        self.salt = salt
        self._cache: OrderedDict[tuple[Part, ...], list[np.ndarray]] = OrderedDict()
        self._cached_bytes = 0

    # -------------------------------------------------------------- resample streams
    def unit_counts(self, stream: Sequence[Part], n: int, slot: int = 0) -> list[np.ndarray]:
        """How often each of `n` units is drawn in each resample: chunks of [b, n] counts."""
        key = (*stream, "units", n, slot)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        chunks = []
        for start in range(0, self.resamples, _CHUNK):
            b = min(_CHUNK, self.resamples - start)
            rng = numpy_rng(self.salt, *key, start)  # keyed per chunk: any chunk size agrees
            idx = rng.integers(0, n, size=(b, n))
            flat = (idx + n * np.arange(b)[:, None]).ravel()
            # float32: counts are small integers (exact), and it halves the memory traffic
            chunks.append(np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float32))
        size = sum(c.nbytes for c in chunks)
        if size <= _CACHE_BYTES:
            self._cache[key] = chunks
            self._cached_bytes += size
            while self._cached_bytes > _CACHE_BYTES:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(c.nbytes for c in old)
        return chunks

    def seed_picks(self, stream: Sequence[Part], seeds: Sequence[Part]) -> np.ndarray:
        """[B, S] indices into `seeds`: the seeds drawn (with replacement) per resample."""
        s = len(seeds)
        if s == 1:
            return np.zeros((self.resamples, 1), dtype=np.int64)
        rng = numpy_rng(self.salt, *stream, "seeds", *seeds)
        return rng.integers(0, s, size=(self.resamples, s))

    # -------------------------------------------------------------- replicates
    def replicates(self, per_seed: Mapping[Part, np.ndarray], stream: Sequence[Part],
                   seed_stream: Sequence[Part] | None = None) -> np.ndarray:
        """[B, M] replicates of the seed-mean of the column means of `per_seed[s]` ([N, M]).

        `seed_stream` keys the seed draws (default `stream`): give base and new the same one so
        a resampled seed is one trained model on both splits.
        """
        seeds = sorted(per_seed, key=lambda s: (str(type(s)), s))
        mats = [np.asarray(per_seed[s], dtype=np.float64) for s in seeds]
        if not mats:
            raise ValueError("no seeds")
        mats = [m[:, None] if m.ndim == 1 else m for m in mats]
        n, m_cols = mats[0].shape
        if n == 0:
            raise AnbenchError(f"no test units to resample in {'/'.join(map(str, stream))}")
        if any(m.shape != (n, m_cols) for m in mats):
            raise AnbenchError(f"seeds of {'/'.join(map(str, stream))} were evaluated on "
                               "different test sets")
        picks = self.seed_picks(seed_stream or stream, seeds)
        # [N, S*M]: one product per slot. Scores are 0/100 per image (or means over a few
        # draws of them), so float32 sums of them are exact or within 1e-7 relative.
        stacked = np.concatenate(mats, axis=1).astype(np.float32)
        out = np.zeros((self.resamples, m_cols))
        rows = np.arange(self.resamples)
        for slot in range(len(seeds)):
            chunks = self.unit_counts((*stream, *seeds), n, slot)
            means = np.concatenate([c @ stacked for c in chunks]).astype(np.float64) / n
            out += means.reshape(self.resamples, len(seeds), m_cols)[rows, picks[:, slot]]
        return out / len(seeds)


def point_estimate(per_seed: Mapping[Part, np.ndarray]) -> np.ndarray:
    """[M]: the seed-mean of the column means (what the replicates scatter around)."""
    mats = [np.asarray(v, dtype=np.float64) for v in per_seed.values()]
    mats = [m[:, None] if m.ndim == 1 else m for m in mats]
    return np.mean([m.mean(axis=0) for m in mats], axis=0)
