"""Perturbed sentences drawn once for cells evaluated together.

The members of a fused group (`anbench.cell_group`) are evaluated on the same splits with the
same seed, so `anbench.perturbation.apply` would draw the very same noisy sentences for each of
them. Inside `shared_draws()` it remembers what it returned, keyed by everything a draw depends
on (the perturbation's name, version and parameters, the sentences, their contexts and item ids,
seed, severity and draw), so the others read it. Exact: a draw depends only on those arguments.
Perturbations with a semantic filter are not remembered (their filter statistics are per cell).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

_active: DrawMemo | None = None


class DrawMemo:
    """Noisy sentence lists by draw key; contexts and parameters are numbered once per object
    (a split's contexts are one list for all its conditions), not rehashed at every call."""

    def __init__(self) -> None:
        self._draws: dict[tuple[Any, ...], list[str]] = {}
        self._objects: dict[int, tuple[Any, int]] = {}  # id -> (object kept alive, number)
        self._numbers: dict[Any, int] = {}  # content -> number

    def _number(self, obj: Any, content: Any) -> int:
        known = self._objects.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        number = self._numbers.setdefault(content(), len(self._numbers))
        self._objects[id(obj)] = (obj, number)
        return number

    def key(self, perturbation: Any, texts: Sequence[str], contexts: Sequence[Any],
            item_ids: Sequence[str], seed: int, severity: float, draw: int) -> tuple[Any, ...]:
        params = self._number(perturbation, lambda: (
            perturbation.name, str(perturbation.version),
            perturbation.params.model_dump_json()))
        context = self._number(contexts, lambda: tuple(
            (c.class_name, c.class_index, tuple(c.alternatives), c.mask_token,
             tuple(c.class_names)) for c in contexts))
        return (params, context, tuple(texts), tuple(item_ids), int(seed), float(severity),
                int(draw))

    def get(self, key: tuple[Any, ...]) -> list[str] | None:
        found = self._draws.get(key)
        return list(found) if found is not None else None

    def put(self, key: tuple[Any, ...], texts: list[str]) -> None:
        self._draws[key] = list(texts)


def active() -> DrawMemo | None:
    """The memo of the enclosing `shared_draws()` block, or None."""
    return _active


@contextlib.contextmanager
def shared_draws() -> Iterator[DrawMemo]:
    """Within this block `apply` draws each perturbed sentence list once (nested blocks share
    the outer memo)."""
    global _active
    if _active is not None:
        yield _active
        return
    _active = DrawMemo()
    try:
        yield _active
    finally:
        _active = None
