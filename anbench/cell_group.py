"""Fused cell groups: cells that share images, seed and a fusable method train and evaluate in
one pass over the frozen backbone, and are still stored one folder per cell.

A study trains the same method many times on the same images (ANPrompt once per training noise,
its ablations beside it). Cells whose method declares `fusable` and whose `fusion_key`, dataset,
shots, seed, protocol and augmentation agree form a group:

- setup: each member is built and `setup` exactly as alone (`anbench.cell.setup_method`);
- training: `anbench.training.train_group`: one shuffled order, one `fused_loss` pass per step
  for all members (prompts stacked along the batch over the shared frozen inputs), each
  member's own optimiser, schedule, rng streams, loss terms and history;
- evaluation: the test images are decoded once and their frozen prefix computed once per batch
  for all members (`shared_image_features`); the perturbed sentences are drawn once
  (`anbench.draw_memo`), tokenised once and their class text features computed for all members
  in one pass (`SharedClassText`); each member then runs the evaluation of
  `anbench.cell.run_cell` with those features.

Every member's numbers are those of the cell run alone (tests/test_fusion.py checks prompts and
rows). A member that fails (its setup, a non-finite loss, its evaluation) fails alone; when the
shared pass itself fails, the members are run one by one instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from anbench import interrupts
from anbench.cell import CellEnvironment, CellResult, CellSpec, FittedMethod, run_cell, setup_method
from anbench.data.loader import DEFAULT_BATCH
from anbench.draw_memo import shared_draws

#: Memory for the members' test-image features held at once (members beyond it are evaluated
#: in further passes) and for the shared text prefixes of perturbed sentences.
SHARED_MEMORY_BYTES = 2 << 30

GroupProgress = Callable[[int, int, dict[int, dict[str, Any]]], None]


def fusion_on(config: Any, device: Any) -> bool:
    """Whether `run.fuse_cells` fuses on `device`. `auto` (the default) fuses where a fused
    cell's numbers are those of the cell alone, which tests/test_fusion.py and bench/fusion.py
    check: float32 on a CPU, where stacking members along the batch changes no row's
    arithmetic. On CUDA the bf16 kernels are chosen by shape, so the stacked batch rounds
    differently, and AdamW's normalised steps carry such differences into the prompts (measured
    on ViT-B-16: prompts apart by up to lr x steps); `auto` leaves fusion off there and `true`
    turns it on anyway (faster; each cell is then an equally valid run, not the same numbers)."""
    setting = config.run.fuse_cells
    if setting == "auto":
        return getattr(device, "type", str(device)) == "cpu"
    return bool(setting)


def is_fusable(method_cls: Any) -> bool:
    """Whether a method's own class declares `fusable` (never inherited)."""
    return bool(vars(method_cls).get("fusable", False))


def group_key(spec: CellSpec) -> tuple[Any, ...] | None:
    """Cells with equal keys may train as one group; None: the cell runs alone."""
    cls = spec.method_cls
    if not spec.trains or not is_fusable(cls):
        return None
    key = spec.key
    return (key.backbone, key.dataset, key.shots, key.seed, spec.protocol, spec.eval_datasets,
            spec.augment_views, spec.weights_hash, cls.fusion_key(spec.method_params))


def plan_groups(specs: Sequence[CellSpec]) -> list[list[CellSpec]]:
    """The cells in groups, in the order of each group's first cell; cells that cannot fuse
    (or have no partner) are groups of one."""
    groups: dict[Any, list[CellSpec]] = {}
    for index, spec in enumerate(specs):
        key = group_key(spec)
        groups.setdefault(key if key is not None else ("alone", index), []).append(spec)
    return list(groups.values())


class _SharedPerMember:
    """Values the members of a group ask for one after another (in evaluation order), each
    computed once for every member still to be evaluated: the first request computes all the
    pending members' copies in one pass and keeps the others' until they ask. Past the byte
    budget a member computes its own alone (same values)."""

    def __init__(self, methods: Sequence[Any], max_bytes: int = SHARED_MEMORY_BYTES):
        self.pending = list(methods)  # members not yet evaluated, in evaluation order
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.passes = self.reads = 0
        self._kept: dict[Any, dict[int, Any]] = {}

    def _get(self, method: Any, key: Any, guess_bytes: int,
             compute: Callable[[list[Any]], list[Any]]) -> Any:
        """`compute(members)` gives each member's value, `guess_bytes` one member's size."""
        kept = self._kept.get(key)
        if kept is not None and id(method) in kept:
            found = kept.pop(id(method))
            self.nbytes -= _nbytes(found)
            if not kept:
                del self._kept[key]
            self.reads += 1
            return found
        others = [m for m in self.pending if m is not method]
        if self.nbytes + len(others) * guess_bytes > self.max_bytes:
            others = []
        computed = compute([method, *others])
        self.passes += 1
        for other, value in zip(others, computed[1:], strict=True):
            self._kept.setdefault(key, {})[id(other)] = value
            self.nbytes += _nbytes(value)
        return computed[0]

    def finished(self, method: Any) -> None:
        """`method` is evaluated: it asks for nothing more (its unread copies are dropped)."""
        self.pending = [m for m in self.pending if m is not method]
        for key in list(self._kept):
            found = self._kept[key].pop(id(method), None)
            if found is not None:
                self.nbytes -= _nbytes(found)
            if not self._kept[key]:
                del self._kept[key]


def _nbytes(value: torch.Tensor | dict[str, torch.Tensor]) -> int:
    tensors = value.values() if isinstance(value, dict) else [value]
    return sum(t.numel() * t.element_size() for t in tensors)


class SharedClassText(_SharedPerMember):
    """Class text features of the sentence lists a group's members are evaluated on (clean,
    then every perturbation's draws), computed for all pending members in one pass
    (`fused_class_features`: tokenised once, frozen prefix once, prompted blocks batched over
    the members)."""

    def features(self, method: Any, sentences: list[str]) -> torch.Tensor:
        width = int(getattr(method.adapter, "embed_dim", 512))
        return self._get(method, tuple(sentences), len(sentences) * width * 4,
                         lambda members: type(method).fused_class_features(members, sentences))


class SharedImageConditions(_SharedPerMember):
    """Image features of the corrupted test images of each image condition
    (`anbench.image_eval`), computed for all pending members in one pass
    (`shared_image_features`: each corrupted image decoded once, its frozen prefix once)."""

    def __init__(self, methods: Sequence[Any], workers: int | None = None,
                 max_bytes: int = SHARED_MEMORY_BYTES):
        super().__init__(methods, max_bytes)
        self.workers = workers

    def features(self, method: Any, key: Any, images: Callable[[], Any], count: int
                 ) -> dict[str, torch.Tensor]:
        """`key` names the condition (images, perturbation, severity, seed, draw);
        `images()` builds its corrupted ImageSet of `count` images when no member has asked
        for it yet."""
        def compute(members: list[Any]) -> list[dict[str, torch.Tensor]]:
            return shared_image_features(members, images(), self.workers)

        width = int(getattr(method.adapter, "embed_dim", 512))
        return self._get(method, key, 2 * int(count) * width * 4, compute)


def _batches(images: Any, batch_size: int, workers: int | None, pin: bool
             ) -> Iterable[torch.Tensor]:
    """The batches `anbench.feature_cache.image_features` streams (so features match)."""
    if isinstance(images, torch.Tensor):
        return (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return images.batches(batch_size, workers, pin)


@torch.no_grad()
def shared_image_features(methods: Sequence[Any], images: Any, workers: int | None = None,
                          batch_size: int = DEFAULT_BATCH) -> list[dict[str, torch.Tensor]]:
    """Each method's `encode_images` features of `images` from one pass: every batch decoded
    once and its frozen inputs computed once (`frozen_image_inputs` of the first method, the
    same for all members), then each member's prompted blocks (`encode_from_frozen`). Same
    batches and operations as `anbench.evaluation.encode_images`, so the same values."""
    lead = methods[0]
    adapter = lead.adapter
    for method in methods:
        method.eval()
    parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in methods]
    with adapter.autocast():
        for batch in _batches(images, batch_size, workers, adapter.device.type == "cuda"):
            batch = batch.to(adapter.device, non_blocking=True)
            frozen = lead.frozen_image_inputs(batch)
            for method, out in zip(methods, parts, strict=True):
                out.append({k: v.float() for k, v in method.encode_from_frozen(frozen).items()})
    return [{key: torch.cat([part[key] for part in out]) for key in out[0]} if out else {}
            for out in parts]


def _shares_test_images(method_cls: Any) -> bool:
    return callable(getattr(method_cls, "frozen_image_inputs", None)) and callable(
        getattr(method_cls, "encode_from_frozen", None))


def _shares_class_text(method_cls: Any) -> bool:
    return callable(getattr(method_cls, "fused_class_features", None))


def _feature_bytes(method: Any, images: dict[str, Any]) -> int:
    """A generous guess of one member's test-image features: two [N, d] float32 tensors."""
    width = int(getattr(method.adapter, "embed_dim", 512))
    return sum(2 * len(split) * width * 4 for split in images.values())


def run_group(specs: Sequence[CellSpec], env: CellEnvironment,
              progress: GroupProgress | None = None,
              log: Callable[[str], None] | None = None
              ) -> Iterator[tuple[int, CellResult | Exception]]:
    """Run a group (`plan_groups`); yields `(member index, result or error)` as each member
    finishes, so the caller can store it at once. Errors of one member are yielded as its
    result; KeyboardInterrupt and interrupts propagate."""
    from anbench.training import train_group

    if len(specs) == 1:
        yield 0, _run_alone(specs[0], env, None)
        return
    started = time.time()
    lead = specs[0].key
    data = env.data(lead.dataset, lead.seed, lead.shots, specs[0].eval_datasets)
    load_share = (time.time() - started) / len(specs)
    methods: dict[int, Any] = {}
    setup_s: dict[int, float] = {}
    for index, spec in enumerate(specs):
        interrupts.check()
        began = time.time()
        try:
            methods[index] = setup_method(spec, env, data)
        except Exception as exc:
            yield index, exc
        setup_s[index] = time.time() - began
    members = sorted(methods)
    if not members:
        return
    train_images, train_labels = data.tensors["train"]
    fit_images = data.tensors.get("train_views", train_images)

    def step(done: int, total: int, records: dict[int, dict[str, Any]]) -> None:
        interrupts.check()
        if progress is not None:
            progress(done, total, {members[i]: record for i, record in records.items()})

    began = time.time()
    try:
        outcomes = train_group([methods[i] for i in members], fit_images, train_labels,
                               [specs[i].method_params for i in members], lead.seed,
                               progress=step)
    except Exception as exc:  # the shared pass itself: run the members one by one
        if log is not None:
            log(f"fused training of {len(members)} cells failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); running them one "
                "by one")
        for index in members:
            yield index, _run_alone(specs[index], env, None)
        return
    train_share = (time.time() - began) / len(members)
    histories: dict[int, list[dict[str, Any]]] = {}
    for index, outcome in zip(members, outcomes, strict=True):
        if isinstance(outcome, Exception):
            yield index, outcome
        else:
            histories[index] = outcome
    trained = sorted(histories)
    if not trained:
        return
    labels = [specs[i].key.label() for i in range(len(specs))]
    share_images = _shares_test_images(type(methods[trained[0]]))
    per_member = _feature_bytes(methods[trained[0]], data.images)
    chunk = max(1, SHARED_MEMORY_BYTES // max(per_member, 1)) if share_images else len(trained)
    try:
        with shared_draws():
            for first in range(0, len(trained), chunk):
                batch = trained[first:first + chunk]
                features: dict[int, dict[str, dict[str, torch.Tensor]]] = {i: {} for i in batch}
                began = time.time()
                try:
                    for split, images in (data.images.items() if share_images else ()):
                        interrupts.check()
                        computed = shared_image_features([methods[i] for i in batch], images,
                                                         env.config.run.workers)
                        for i, split_features in zip(batch, computed, strict=True):
                            features[i][split] = split_features
                except Exception as exc:  # each member then encodes its own (its error, if any)
                    features = {i: {} for i in batch}
                    if log is not None:
                        log(f"shared test-image pass of {len(batch)} cells failed "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); each "
                            "cell encodes its own")
                feature_share = (time.time() - began) / len(batch)
                shared_text = (SharedClassText([methods[i] for i in batch])
                               if _shares_class_text(type(methods[batch[0]])) else None)
                env.shared_conditions = (SharedImageConditions([methods[i] for i in batch],
                                                               env.config.run.workers)
                                         if share_images else None)
                for index in batch:
                    methods[index].shared_text = shared_text
                    fitted = FittedMethod(
                        methods[index], histories[index],
                        timing={"load": load_share, "train": setup_s[index] + train_share,
                                "evaluate": feature_share},
                        image_features=features.pop(index),
                        meta={"fused": {"cells": len(specs), "trained_together": len(members),
                                        "group": labels}})
                    try:
                        result: CellResult | Exception = run_cell(specs[index], env, fitted=fitted)
                    except Exception as exc:
                        result = exc
                    finally:
                        methods[index].shared_text = None
                        for shared in (shared_text, env.shared_conditions):
                            if shared is not None:
                                shared.finished(methods[index])
                        del methods[index]  # evaluated: free what it holds before the next
                    yield index, result
    finally:
        env.shared_conditions = None


def _run_alone(spec: CellSpec, env: CellEnvironment, progress: Any) -> CellResult | Exception:
    try:
        return run_cell(spec, env, progress=progress)
    except Exception as exc:
        return exc


def group_label(specs: Sequence[CellSpec]) -> str:
    """One line naming a group: its shared key and its members' method [noise]."""
    key = specs[0].key
    members = ", ".join(f"{s.key.method}[{s.key.train_noise}]" for s in specs)
    return f"{key.dataset} seed {key.seed} shots {key.shots}: {members}"


def groups_summary(groups: Sequence[Sequence[CellSpec]]) -> str:
    fused = [g for g in groups if len(g) > 1]
    cells = sum(len(g) for g in fused)
    return (f"{len(fused)} fused groups ({cells} cells), "
            f"{sum(len(g) for g in groups) - cells} cells alone")
