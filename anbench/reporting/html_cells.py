"""What the HTML report shows of one cell: parameters, training curves, per-class accuracy and
the clean and noisy class sentences. Plain data for the template; nothing here writes HTML."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from anbench.api import Cell
from anbench.metrics import harmonic_mean
from anbench.reporting.html_format import num_cell
from anbench.store import MARKER
from anbench.tensorboard_log import NOT_TERMS

CURVE_WIDTH, CURVE_HEIGHT, CURVE_PAD = 320, 110, 6
MAX_CURVE_POINTS = 400  # enough for a smooth line; keeps a page of many cells small


@dataclass
class Curve:
    """One training curve drawn as an inline SVG polyline."""

    tag: str
    points: str  # "x,y x,y ..." in SVG coordinates
    first: float
    last: float
    low: float
    high: float
    steps: int
    width: int = CURVE_WIDTH
    height: int = CURVE_HEIGHT


@dataclass
class CellPage:
    anchor: str
    title: str
    key: dict[str, Any]
    facts: list[tuple[str, str]]
    params: list[tuple[str, str]]
    curves: list[Curve]
    accuracy: dict[str, dict[str, Any]]  # split -> {"columns", "rows"}
    sentences: dict[str, dict[str, Any]]  # split -> {"columns", "rows", "draws"}
    summary: dict[str, float] = field(default_factory=dict)  # clean acc per split, hm


def cell_anchor(cell: Cell) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9_-]+", "-", cell.key.relpath).strip("-")


def curve(tag: str, steps: list[float], values: list[float]) -> Curve | None:
    pairs = [(s, v) for s, v in zip(steps, values, strict=True)
             if isinstance(v, int | float) and math.isfinite(v)]
    if not pairs:
        return None
    stride = max(1, math.ceil(len(pairs) / MAX_CURVE_POINTS))
    shown = pairs[::stride] + ([pairs[-1]] if (len(pairs) - 1) % stride else [])
    xs, ys = [p[0] for p in shown], [p[1] for p in shown]
    x0, x1 = min(xs), max(xs)
    low, high = min(ys), max(ys)
    if high - low <= 1e-9 * max(1.0, abs(high)):  # float noise on a flat curve: draw it flat
        low = high
    span_x, span_y = (x1 - x0) or 1.0, (high - low) or 1.0
    inner_w, inner_h = CURVE_WIDTH - 2 * CURVE_PAD, CURVE_HEIGHT - 2 * CURVE_PAD
    points = " ".join(
        f"{CURVE_PAD + inner_w * (x - x0) / span_x:.1f},"
        f"{CURVE_PAD + inner_h * (1 - (y - low) / span_y if high > low else 0.5):.1f}"
        for x, y in zip(xs, ys, strict=True))
    return Curve(tag, points, pairs[0][1], pairs[-1][1], low, high, len(pairs))


def training_curves(history: pd.DataFrame) -> list[Curve]:
    """loss, every loss term and lr against the optimiser step."""
    if history.empty:
        return []
    steps = (history["step"] if "step" in history.columns
             else pd.Series(range(1, len(history) + 1))).astype(float).tolist()
    tags = ["loss"] + [c for c in history.columns if c not in NOT_TERMS] + ["lr"]
    curves = []
    for tag in tags:
        if tag in history.columns:
            values = pd.to_numeric(history[tag], errors="coerce").tolist()
            made = curve(tag, steps, values)
            if made is not None:
                curves.append(made)
    return curves


def _param_text(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _accuracy(cell: Cell, split: str) -> dict[str, Any]:
    frame = cell.per_class_accuracy(split)
    conditions = list(dict.fromkeys(frame["condition"]))
    rows = []
    for index, cname in enumerate(cell.classes(split)):
        mine = frame[frame["class_index"] == index].set_index("condition")
        images = int(mine["images"].iloc[0]) if not mine.empty else 0
        rows.append([{"text": cname}, num_cell(images, 0)]
                    + [num_cell(mine.loc[c, "accuracy"] if c in mine.index else math.nan, 1)
                       for c in conditions])
    return {"columns": ["class", "images", *conditions], "rows": rows}


def _sentences(cell: Cell, split: str) -> dict[str, Any]:
    frame = cell.sentences(split)
    if frame.empty:
        return {"columns": [], "rows": [], "draws": 0}
    conditions = list(dict.fromkeys(frame["condition"]))
    first = frame[frame["draw"] == 0]
    table = {(r.condition, r.class_index): r.sentence for r in first.itertuples()}
    rows = [[{"text": cname}] + [{"text": table.get((c, index), "")} for c in conditions]
            for index, cname in enumerate(cell.classes(split))]
    return {"columns": ["class", *conditions], "rows": rows,
            "draws": int(frame["draw"].max()) + 1}


def cell_page(cell: Cell) -> CellPage:
    key = vars(cell.key)
    meta = cell.meta
    facts = [("folder", cell.key.relpath), ("training noise", cell.key.train_noise),
             ("seconds", _param_text(meta.get("seconds", ""))),
             ("training steps", str(len(meta.get("history") or []))),
             ("noise draws", _param_text(meta.get("noise_draws", 1)))]
    try:
        marker = json.loads((cell.directory / MARKER).read_text(encoding="utf-8"))
        facts += [("fingerprint", str(marker.get("fingerprint"))),
                  ("weights hash", str(marker.get("weights_hash")))]
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    params = [(k, _param_text(v)) for k, v in sorted(cell.params.items())]
    if meta.get("train_noise"):
        params.append(("train noise", _param_text(meta["train_noise"])))
    evals = [e for e in meta.get("eval_noise") or [] if isinstance(e, dict)]
    if evals:
        params.append(("evaluation", ", ".join(
            f"{e.get('name')}@{e.get('severity')}" for e in evals)))
    accuracy = {split: _accuracy(cell, split) for split in cell.splits}
    sentences = {split: _sentences(cell, split) for split in cell.splits}
    summary = {}
    labels_of = cell.arrays
    for split in cell.splits:
        logits = labels_of.get(f"{split}/logits/clean")
        labels = labels_of.get(f"{split}/labels")
        if logits is not None and labels is not None and len(labels):
            summary[split] = 100.0 * float((logits.argmax(1) == labels).mean())
    if "base" in summary and "new" in summary:
        summary["hm"] = harmonic_mean(summary["base"], summary["new"])
    return CellPage(cell_anchor(cell), cell.key.label(), key, facts, params,
                    training_curves(cell.history), accuracy, sentences, summary)
