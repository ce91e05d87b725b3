"""Images of one split, decoded on demand through a `torch.utils.data.DataLoader`.

A test set is never held decoded: `ImageSet.batches` streams preprocessed batches (worker
processes decode and transform, pinned memory on CUDA), and evaluation keeps only their features.
The few-shot training set is small and decoded whole (`ImageSet.decode`, filled batch by batch
into one preallocated tensor, so decoding never holds two copies).

Batches are collated with `torch.stack` in item order, so a streamed batch is bit-identical to
the same slice of the old all-in-memory tensor.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from anbench.data.base import ArraySplit, PathSplit, Subset, split_labels
from anbench.registry import AnbenchError

DEFAULT_BATCH = 256
# Below this many images decoding runs in the calling process: starting workers costs more.
SMALL_SET = 128
MAX_AUTO_WORKERS = 8


def default_workers() -> int:
    """Decoding workers when `run.workers` is unset: one per core, at most 8."""
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def resolve_workers(workers: int | None, num_images: int) -> int:
    """Worker processes for `num_images` images (0: decode in this process). Unset: one per
    core, none for small sets; a number given is used as is."""
    if multiprocessing.current_process().daemon:  # e.g. a Pool worker may not fork children
        return 0
    if workers is not None:
        return max(0, int(workers))
    return 0 if num_images < SMALL_SET else default_workers()


class _Decode(torch.utils.data.Dataset):
    """Item `i` of a subset, loaded and transformed (runs in a worker process)."""

    def __init__(self, source: Any, subset: Subset, transform: Any):
        self.source, self.subset, self.transform = source, subset, transform

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, index: int) -> torch.Tensor:
        item, _ = self.subset[index]
        try:
            return self.transform(self.source.load_image(item))
        except AnbenchError:
            raise
        except (OSError, ValueError, TypeError) as exc:  # damaged or foreign image data
            raise AnbenchError(f"cannot decode image {_describe(item)}: "
                               f"{type(exc).__name__}: {exc}") from None


def _describe(item: Any) -> str:
    return str(item) if isinstance(item, str | os.PathLike) else f"({type(item).__name__})"


def _one_line(exc: AnbenchError) -> AnbenchError:
    """A worker's error comes back wrapped in its traceback: keep its last line's message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return exc
    return AnbenchError(lines[-1].split(": ", 1)[-1])


def _stack(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(batch)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Per-image transforms are small tensor ops: on a busy machine torch's thread pool makes
    them ~10x slower than one thread (measured), as in DataLoader workers. Same values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ImageSet:
    """The images of `subset` (items of a dataset split) under `transform`, decoded on demand.

    `source` is anything with `load_image(item)`: a `LabelSpace` or a `LoadedDataset`.
    """

    source: Any
    subset: Subset
    transform: Any

    def __len__(self) -> int:
        return len(self.subset)

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(split_labels(self.subset), dtype=torch.long)

    def batches(self, batch_size: int = DEFAULT_BATCH, workers: int | None = None,
                pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """Preprocessed image batches `[B, C, H, W]` in item order."""
        if len(self) == 0:
            return
        num_workers = resolve_workers(workers, len(self))
        dataset = _Decode(self.source, self.subset, self.transform)
        if num_workers == 0:
            for start in range(0, len(self), batch_size):
                with _one_thread():
                    batch = _stack([dataset[i] for i in
                                    range(start, min(len(self), start + batch_size))])
                yield batch.pin_memory() if pin_memory else batch
            return
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size,
            shuffle=False, num_workers=num_workers, collate_fn=_stack, pin_memory=pin_memory,
            prefetch_factor=2 if num_workers else None)
        try:
            yield from loader
        except AnbenchError as exc:
            raise _one_line(exc) from None

    def decode(self, workers: int | None = None) -> torch.Tensor:
        """Every image as one tensor `[N, C, H, W]` (`torch.zeros(0)` for an empty set)."""
        out: torch.Tensor | None = None
        start = 0
        for batch in self.batches(workers=workers):
            if out is None:
                out = torch.empty((len(self), *batch.shape[1:]), dtype=batch.dtype)
            out[start:start + len(batch)] = batch
            start += len(batch)
        return out if out is not None else torch.zeros(0)

    def digest(self) -> str:
        """A content key of the image list (not the labels): equal digests, equal images."""
        return subset_digest(self.subset)


def subset_digest(subset: Subset) -> str:
    """SHA-256 (32 hex) of the items `subset` selects. In-memory images hash by their pixels;
    files by path, size and modification time (a replaced file gets a new key)."""
    sha = hashlib.sha256()
    parent, indices = subset.parent, subset.indices
    sha.update(f"n={len(indices)};".encode())
    if isinstance(parent, ArraySplit):
        images = parent.images[indices] if indices else parent.images[:0]
        sha.update(f"array{images.shape}".encode())
        sha.update(np.ascontiguousarray(images).tobytes())
    elif isinstance(parent, PathSplit):
        for index in indices:
            sha.update(_path_stamp(parent.paths[index]))
    else:
        for index in indices:
            sha.update(_item_stamp(parent[index][0]))
    return sha.hexdigest()[:32]


def _path_stamp(path: str | os.PathLike) -> bytes:
    try:
        stat = os.stat(path)
        return f"{os.fspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
    except OSError:
        return f"{os.fspath(path)}|missing\n".encode()


def _item_stamp(item: Any) -> bytes:
    if isinstance(item, np.ndarray):
        return f"array{item.shape}{item.dtype}".encode() + np.ascontiguousarray(item).tobytes()
    if isinstance(item, Image.Image):
        return f"pil{item.mode}{item.size}".encode() + item.tobytes()
    if isinstance(item, str | os.PathLike):
        return _path_stamp(item)
    return repr(item).encode()
