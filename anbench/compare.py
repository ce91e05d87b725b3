"""`anbench compare`: paired bootstrap differences between two methods of one suite.

A and B are compared on every dataset, split and evaluation condition both were evaluated on,
over the seeds both have: the same resampled test images (and classes, for TS) and seeds for both
(`anbench.stats`), so what the two share (images, noise draws, seeds' shots) cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anbench.cell_scores import CLEAN, SplitScores, load_cell_scores, resample_streams, unit_kind
from anbench.registry import AnbenchError
from anbench.stats import (
    DEFAULT_RESAMPLES,
    SIGNIFICANCE,
    Bootstrap,
    harmonic_replicates,
    paired_p_value,
    percentile_interval,
)
from anbench.store import CellKey, SuiteStore

METRICS: tuple[str, ...] = ("acc", "hm", "as", "lpr", "ts")
DEFAULT_TRAIN_NOISE = "wsp"  # what a bare ANPrompt name means, as in the reports
COLUMNS = ["backbone", "shots", "dataset", "split", "condition", "metric", "a", "b", "diff",
           "ci_low", "ci_high", "p", "significant", "units", "unit", "seeds", "draws"]


@dataclass(frozen=True)
class Arm:
    method: str
    train_noise: str

    def __str__(self) -> str:
        return f"{self.method}:{self.train_noise}"


def resolve_arm(text: str, available: set[tuple[str, str]], suite: str) -> Arm:
    """'anprompt:wsp' or 'dapt' -> the (method, training noise) it names in the suite."""
    method, _, noise = text.strip().partition(":")
    noises = sorted(n for m, n in available if m == method)
    known = ", ".join(sorted({m for m, _ in available})) or "nothing"
    if not method or not noises:
        raise AnbenchError(f"method '{method or text}' has no results in suite '{suite}'; it "
                           f"holds: {known}")
    if noise:
        if noise not in noises:
            raise AnbenchError(f"{method} was not trained with noise '{noise}' in suite "
                               f"'{suite}'; its training noises: {', '.join(noises)}")
        return Arm(method, noise)
    if len(noises) == 1:
        return Arm(method, noises[0])
    if DEFAULT_TRAIN_NOISE in noises:
        return Arm(method, DEFAULT_TRAIN_NOISE)
    raise AnbenchError(f"{method} was trained with several noises ({', '.join(noises)}); name "
                       f"one, e.g. {method}:{noises[0]}")


def compare(root: Path | str, a: str, b: str, datasets: Sequence[str] | None = None,
            metrics: Sequence[str] | None = None, resamples: int = DEFAULT_RESAMPLES
            ) -> tuple[pd.DataFrame, Arm, Arm, list[str]]:
    """Rows of paired differences A - B (see COLUMNS), the two arms, and notes."""
    store = SuiteStore(Path(root))
    suite = store.root.name
    if not store.results_path.is_file():
        raise AnbenchError(f"no results at {store.results_path}; run `anbench run` first")
    wanted = list(metrics or METRICS)
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise AnbenchError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    keys = store.result_keys()
    available = {(k.method, k.train_noise) for k in keys}
    arm_a, arm_b = resolve_arm(a, available, suite), resolve_arm(b, available, suite)
    if arm_a == arm_b:
        raise AnbenchError(f"A and B are both {arm_a}: name two different methods")
    present = {k.dataset for k in keys}
    if datasets:
        missing = [d for d in datasets if d not in present]
        if missing:
            raise AnbenchError(f"dataset(s) {', '.join(missing)} not in suite '{suite}'; it "
                               f"holds: {', '.join(sorted(present))}")
    bootstrap = Bootstrap(resamples)
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    settings = sorted({(k.backbone, k.shots, k.dataset) for k in keys
                       if not datasets or k.dataset in datasets})
    for backbone, shots, dataset in settings:
        def seeds_of(arm: Arm, bb: str = backbone, sh: int = shots, ds: str = dataset
                     ) -> set[int]:
            return {k.seed for k in keys if (k.backbone, k.shots, k.dataset, k.method,
                                             k.train_noise) == (bb, sh, ds, arm.method,
                                                                arm.train_noise)}

        seeds_a, seeds_b = seeds_of(arm_a), seeds_of(arm_b)
        shared = tuple(sorted(seeds_a & seeds_b))
        if not seeds_a or not seeds_b:
            continue
        if not shared:
            notes.append(f"{dataset}: no shared seeds ({arm_a}: {_seeds(seeds_a)}; {arm_b}: "
                         f"{_seeds(seeds_b)}); skipped")
            continue
        side_a = _load(store, arm_a, backbone, dataset, shots, shared)
        side_b = _load(store, arm_b, backbone, dataset, shots, shared)
        rows += _compare_dataset(bootstrap, side_a, side_b, (backbone, shots, dataset), shared,
                                 wanted)
    if not rows:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise AnbenchError(f"{arm_a} and {arm_b} share no dataset and seed in suite "
                           f"'{suite}'{detail}")
    return pd.DataFrame.from_records(rows, columns=COLUMNS), arm_a, arm_b, notes


Side = dict[int, dict[str, SplitScores]]  # seed -> split -> scores


def _load(store: SuiteStore, arm: Arm, backbone: str, dataset: str, shots: int,
          seeds: tuple[int, ...]) -> Side:
    side: Side = {}
    for seed in seeds:
        key = CellKey(backbone, dataset, arm.method, arm.train_noise, shots, seed)
        cell = store.inspect(key)
        if cell is None or not cell.intact:
            problem = "it has no COMPLETE marker" if cell is None else cell.problem
            raise AnbenchError(f"cell {key.relpath} cannot be used: {problem}; re-run the suite")
        side[seed] = load_cell_scores(cell.directory / "arrays.npz")
    return side


def _compare_dataset(bootstrap: Bootstrap, side_a: Side, side_b: Side,
                     where: tuple[str, int, str], seeds: tuple[int, ...],
                     metrics: list[str]) -> list[dict[str, object]]:
    backbone, shots, dataset = where
    first = side_a[seeds[0]]
    splits = [s for s in first if all(s in side[seed] for side in (side_a, side_b)
                                      for seed in seeds)]
    for split in splits:
        ref = first[split].labels
        for side in (side_a, side_b):
            for seed in seeds:
                if not np.array_equal(side[seed][split].labels, ref):
                    raise AnbenchError(f"{dataset}/{split}: A and B were not evaluated on the "
                                       "same test images; a paired comparison needs them")
    out: list[dict[str, object]] = []
    clean: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for split in splits:
        conditions = [c for c in first[split].conditions
                      if all(c in side[seed][split].conditions for side in (side_a, side_b)
                             for seed in seeds)]
        for cond in conditions:
            for metric in ("acc", "as", "lpr", "ts"):
                if (cond, metric) not in first[split].scores:
                    continue
                stream, seed_stream = resample_streams(dataset, split, metric)
                reps, points = [], []
                for side in (side_a, side_b):
                    values = {seed: side[seed][split].scores[(cond, metric)] for seed in seeds}
                    reps.append(bootstrap.replicates(values, stream, seed_stream)[:, 0])
                    points.append(float(np.mean([v.mean() for v in values.values()])))
                if cond == CLEAN and metric == "acc":
                    clean[split] = (reps[0], reps[1], points[0], points[1])
                if metric not in metrics:
                    continue
                draws = sorted({side[seed][split].draws(cond) for side in (side_a, side_b)
                                for seed in seeds})
                out.append(_row(where, split, cond, metric, points, reps[0] - reps[1],
                                first[split].units(metric), unit_kind(metric), len(seeds),
                                "/".join(map(str, draws))))
    if "hm" in metrics and "base" in clean and "new" in clean:
        (ba, bb, pba, pbb), (na, nb, pna, pnb) = clean["base"], clean["new"]
        diff = harmonic_replicates(ba, na) - harmonic_replicates(bb, nb)
        points = [_hm(pba, pna), _hm(pbb, pnb)]
        units = f"{first['base'].units('acc')}+{first['new'].units('acc')}"
        out.append(_row(where, "base-new", CLEAN, "hm", points, diff, units, "images",
                        len(seeds), "1"))
    order = {m: i for i, m in enumerate(METRICS)}
    return sorted(out, key=lambda r: (r["split"] == "base-new", splits.index(r["split"])
                                      if r["split"] in splits else 0,
                                      r["condition"] != CLEAN, order[str(r["metric"])]))


def _row(where: tuple[str, int, str], split: str, cond: str, metric: str, points: list[float],
         diff: np.ndarray, units: object, unit: str, seeds: int, draws: str
         ) -> dict[str, object]:
    backbone, shots, dataset = where
    lo, hi = percentile_interval(diff)
    p = paired_p_value(diff)
    return {"backbone": backbone, "shots": shots, "dataset": dataset, "split": split,
            "condition": cond, "metric": metric, "a": points[0], "b": points[1],
            "diff": points[0] - points[1], "ci_low": lo, "ci_high": hi, "p": p,
            "significant": bool(p < SIGNIFICANCE), "units": units, "unit": unit,
            "seeds": seeds, "draws": draws}


def _hm(base: float, new: float) -> float:
    return float(harmonic_replicates(np.array([base]), np.array([new]))[0])


def _seeds(seeds: set[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def format_comparison(frame: pd.DataFrame, arm_a: Arm, arm_b: Arm, resamples: int,
                      notes: Sequence[str] = ()) -> str:
    """A plain-text table of the differences, with a header that says how to read it."""
    digits = {"ts": 4}
    several = frame[["backbone", "shots"]].drop_duplicates().shape[0] > 1
    head = (["backbone", "shots"] if several else []) + [
        "dataset", "split", "condition", "metric", "A", "B", "A-B", "95% CI", "p", "n", "sig"]
    table: list[list[str]] = [head]
    for r in frame.itertuples(index=False):
        d = digits.get(str(r.metric), 2)
        n = (f"{r.units} {'img' if r.unit == 'images' else 'cls'}, {r.seeds} seed"
             f"{'s' if r.seeds != 1 else ''}, {r.draws} draw{'s' if r.draws != '1' else ''}")
        table.append(([str(r.backbone), str(r.shots)] if several else []) + [
            str(r.dataset), str(r.split), str(r.condition), str(r.metric),
            f"{r.a:.{d}f}", f"{r.b:.{d}f}", f"{r.diff:+.{d}f}",
            f"[{r.ci_low:+.{d}f}, {r.ci_high:+.{d}f}]", _p(r.p), n,
            "yes" if r.significant else "n.s."])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    numeric = {"A", "B", "A-B", "p"}
    lines = [f"A = {arm_a}, B = {arm_b}: A - B with 95% paired bootstrap intervals "
             f"({resamples} resamples of test images, TS: classes, and seeds; p two-sided; sig: "
             f"p < {SIGNIFICANCE:g})"]
    for row in table:
        cells = [c.rjust(w) if head[i] in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"
