"""Canonical order of methods, noises and datasets, and one colour per method.

A method's place and colour come from its registration: `METHODS.register(name, meta={"order":
3, "colour": 3})`, where `order` ranks it in tables and legends (the paper's order) and `colour`
indexes seaborn's 10-colour "colorblind" palette. Names without them (unregistered, or plugins
that give none) follow alphabetically and take the remaining colours, so they still sort and
colour stably.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from anbench.registry import METHODS

NOISE_ORDER: tuple[str, ...] = ("clean", "none", "wsp", "drop", "mask", "shuffle", "synonym")
# Paper order (CoOp's 11 datasets, then ImageNet variants); keys are normalised names.
_DATASET_RANK: dict[str, int] = {
    "imagenet": 0, "caltech101": 1, "oxfordpets": 2, "stanfordcars": 3, "flowers102": 4,
    "oxfordflowers": 4, "oxfordflowers102": 4, "food101": 5, "fgvcaircraft": 6, "sun397": 7,
    "dtd": 8, "describabletextures": 8, "eurosat": 9, "ucf101": 10, "imagenetv2": 11,
    "imagenetsketch": 12, "imageneta": 13, "imagenetr": 14,
}
PALETTE_SIZE = 10  # seaborn's "colorblind" palette

Palette = dict[str, str]


def _method_meta(key: str) -> dict[str, int]:
    """Registered method name -> its `key` registration metadata (only methods that give it)."""
    return {e.name: int(e.meta[key]) for e in METHODS.entries() if key in e.meta}


def method_order() -> list[str]:
    """The registered methods that declare an order, in that order."""
    ranks = _method_meta("order")
    return sorted(ranks, key=lambda name: (ranks[name], name))


def method_colours() -> dict[str, int]:
    """Registered method name -> its fixed colour index."""
    return _method_meta("colour")


def _rank_key(name: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(name), "") if name in order else (len(order), name)


def method_sort_key(method: str, order: Sequence[str] | None = None) -> tuple[int, str]:
    return _rank_key(method, method_order() if order is None else order)


def order_methods(names: Iterable[str]) -> list[str]:
    """Methods with a registered order first (in it), then any other names alphabetically."""
    order = method_order()
    return sorted(set(names), key=lambda name: method_sort_key(name, order))


def split_label(label: str) -> tuple[str, str]:
    """'anprompt (drop)' -> ('anprompt', 'drop'); a bare method name has no noise part."""
    method, sep, rest = label.partition(" (")
    return (method, rest.rstrip(")")) if sep else (label, "")


def label_sort_key(label: str, order: Sequence[str] | None = None) -> tuple[Any, ...]:
    method, noise = split_label(label.rstrip("†"))
    return (*method_sort_key(method, order), noise != "", *noise_sort_key(noise))


def order_labels(labels: Iterable[str]) -> list[str]:
    order = method_order()
    return sorted(set(labels), key=lambda label: label_sort_key(label, order))


def noise_sort_key(noise: str) -> tuple[int, str]:
    return _rank_key(noise, NOISE_ORDER)


def order_noises(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=noise_sort_key)


def dataset_sort_key(name: str) -> tuple[int, str]:
    norm = re.sub(r"[^a-z0-9]", "", name.lower())
    return (_DATASET_RANK.get(norm, len(_DATASET_RANK) + 1), name)


def order_datasets(names: Iterable[str]) -> list[str]:
    """Paper order for the known datasets (independent of row order in the file), then A-Z."""
    return sorted(set(names), key=dataset_sort_key)


def natural_key(text: Any) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


def make_palette(labels: Iterable[str]) -> Palette:
    """One colour per method label, stable across figures (registered colours are fixed)."""
    import seaborn as sns

    base = sns.color_palette("colorblind", PALETTE_SIZE).as_hex()
    fixed = {name: i for name, i in method_colours().items() if 0 <= i < PALETTE_SIZE}
    palette: Palette = {}
    extra: list[str] = []
    # methods with a colour always have it, so a figure may use it with or without rows
    for label in order_labels([*labels, *fixed]):
        if label in fixed:
            palette[label] = base[fixed[label]]
        else:
            extra.append(label)
    taken = set(fixed.values())
    spare = [base[i] for i in range(PALETTE_SIZE) if i not in taken]
    if len(extra) > len(spare):
        spare += sns.color_palette("husl", len(extra) - len(spare)).as_hex()
    palette.update(zip(extra, spare, strict=False))
    return palette
