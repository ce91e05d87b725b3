"""Dataset contracts: what a dataset plugin declares (`DatasetSource`) and returns
(`LoadedDataset`).

A split is a sequence of `(item, label)` pairs. An item is whatever `LoadedDataset.load_image`
turns into an RGB `PIL.Image`: a file path (the CoOp datasets), a PIL image, or a `uint8` numpy
array (the embedded datasets keep their images in memory as an `ArraySplit`). Labels are ints in
`0 .. len(classnames) - 1`.

A plugin registers a `DatasetSource` subclass under a kebab-case name:

    from anbench.data.base import DatasetParams, DatasetSource, LoadedDataset
    from anbench.registry import DATASETS

    @DATASETS.register("my-set", description="my images")
    class MySet(DatasetSource):
        class Params(DatasetParams):
            data_root: str | None = None

        def load(self, cache_dir): ...
        def status(self): ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from anbench.files import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from anbench.registry import AnbenchError

Item = Any  # str | Path | PIL.Image.Image | np.ndarray
Split = Sequence[tuple[Item, int]]


class DatasetParams(BaseModel):
    """Parameters every dataset accepts (validated from YAML / CLI; unknown keys are errors).

    `data_root`: the folder that holds the dataset's own folder (CoOp layout: `$DATA`), or, for
    the embedded datasets, a folder to look in first. `descriptions_file`: a JSON file
    `{class name: [sentence, ...]}` (the CuPL / CaFo format) that replaces the shipped or empty
    descriptions.
    """

    model_config = ConfigDict(extra="forbid")

    data_root: str | None = None
    descriptions_file: str | None = None


# ----------------------------------------------------------------------------------------------
# images


def load_image(item: Item) -> Image.Image:
    """Turn a split item into an RGB PIL image (paths are opened, arrays converted)."""
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        array = item
        if array.dtype != np.uint8:
            raise TypeError(f"in-memory images must be uint8 arrays, got {array.dtype}")
        return Image.fromarray(array).convert("RGB")
    if isinstance(item, str | os.PathLike):
        try:
            with Image.open(item) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise AnbenchError(f"image file not found: {item}") from None
    raise TypeError(f"cannot load an image from {type(item).__name__}")


class ArraySplit(Sequence):
    """An in-memory split: `uint8` images `[N, H, W]` (grey) or `[N, H, W, 3]` and int labels.

    Indexing gives `(image_array, label)`; `.images` and `.labels` give the whole arrays, so
    protocols and the mini backbone's trainer never have to iterate item by item.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ArraySplit(self.images[index], self.labels[index])
        return self.images[index], int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self.images[i], int(self.labels[i])


class PathSplit(Sequence):
    """A split of image files: parallel lists of paths and labels; indexing gives (path, label)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PathSplit(self.paths[index], self.labels[index])
        return self.paths[index], int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for path, label in zip(self.paths, self.labels, strict=True):
            yield path, int(label)


class Subset(Sequence):
    """A view of some items of a parent split, optionally relabelled.

    `indices` point into the parent split (they are the items' stable ids within the dataset);
    `label_map` maps a parent label to the new one (base-to-new relabelling).
    """

    def __init__(self, parent: Split, indices: Sequence[int],
                 label_map: dict[int, int] | None = None):
        self.parent = parent
        self.indices = [int(i) for i in indices]
        self.label_map = dict(label_map) if label_map is not None else None
        parent_labels = split_labels(parent)
        labels = parent_labels[self.indices] if self.indices else np.zeros(0, dtype=np.int64)
        if self.label_map is not None:
            labels = np.array([self.label_map[int(y)] for y in labels], dtype=np.int64)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item, _ = self.parent[self.indices[index]]
        return item, int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[Item, int]]:
        for i in range(len(self)):
            yield self[i]


def split_labels(split: Split) -> np.ndarray:
    """All labels of a split as an int64 array (fast for `ArraySplit` / `Subset`)."""
    labels = getattr(split, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.array([int(label) for _, label in split], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# loaded dataset


@dataclass
class LoadedDataset:
    """A dataset ready for the protocols: class names, prompt templates, descriptions, splits.

    `templates[0]` is the dataset's own prompt template (CoOp's per-dataset template), e.g.
    `"a photo of a {}, a type of pet."`; the rest are alternatives (used by `wsp` as
    semantically equivalent sentences). `descriptions` maps a class name to hand-written or
    generated sentences about it (may be empty for a class). `info` carries provenance
    (where the files were read from). `pretrain`, where a dataset has one, holds images reserved
    for building a backbone (the embedded `mini`): disjoint from train, val and test, never
    seen by the protocols, so few-shot training images are new to a backbone built on it.
    """

    name: str
    classnames: list[str]
    templates: list[str]
    descriptions: dict[str, list[str]]
    train: Split
    val: Split
    test: Split
    info: dict[str, Any] = field(default_factory=dict)
    pretrain: Split | None = None
    image_loader: Callable[[Item], Image.Image] = load_image

    def __post_init__(self) -> None:
        if not self.templates or "{}" not in self.templates[0]:
            raise ValueError(f"dataset {self.name}: templates[0] must contain '{{}}'")
        if len(set(self.classnames)) != len(self.classnames):
            raise ValueError(f"dataset {self.name}: class names are not unique")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def template(self) -> str:
        return self.templates[0]

    def load_image(self, item: Item) -> Image.Image:
        return self.image_loader(item)

    def prompts(self, template: str | None = None) -> list[str]:
        """The class prompts with `template` (default: the dataset's own)."""
        template = template or self.templates[0]
        return [template.format(name) for name in self.classnames]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": self.num_classes,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "template": self.templates[0],
            "classes_with_descriptions": sum(1 for c in self.classnames
                                             if self.descriptions.get(c)),
        }


class DatasetSource:
    """Base class of dataset plugins. Subclasses set `Params` and implement `load` / `status`."""

    Params: ClassVar[type[DatasetParams]] = DatasetParams
    registry_name: ClassVar[str] = ""

    def __init__(self, params: DatasetParams | dict[str, Any] | None = None):
        if params is None:
            params = self.Params()
        elif isinstance(params, dict):
            params = self.Params(**params)
        elif not isinstance(params, self.Params):
            params = self.Params(**params.model_dump())
        self.params = params

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", "") or type(self).__name__.lower()

    def load(self, cache_dir: Path) -> LoadedDataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def status(self) -> tuple[bool, str]:  # pragma: no cover - abstract
        """(present?, where it was found or the exact command / path that fixes it)."""
        raise NotImplementedError

    # helpers for subclasses
    def _descriptions(self, classnames: list[str],
                      default: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        if self.params.descriptions_file:
            return read_descriptions(Path(self.params.descriptions_file), classnames)
        return dict(default or {})


# ----------------------------------------------------------------------------------------------
# descriptions


def normalize_classname(name: str) -> str:
    """Key used to match class names across files: lower case, `_` as space, single spaces."""
    return " ".join(name.replace("_", " ").lower().split())


def read_descriptions(path: Path, classnames: list[str]) -> dict[str, list[str]]:
    """Read a `{class name: [sentences]}` JSON (CuPL / CaFo format) for these class names.

    Keys are matched after `normalize_classname`, so `"Apply_Eye_Makeup"` matches
    `"apply eye makeup"`. Classes the file lacks get an empty list; a file that matches none of
    the classes is an error (it is almost certainly for another dataset).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AnbenchError(f"descriptions file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AnbenchError(f"descriptions file {path} is not UTF-8 text (binary file?)") from None
    except OSError as exc:
        raise AnbenchError(f"cannot read descriptions file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise AnbenchError(f"descriptions file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise AnbenchError(f"descriptions file {path} must map class names to lists of sentences")
    by_key: dict[str, list[str]] = {}
    for key, value in raw.items():
        sentences = [value] if isinstance(value, str) else value
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise AnbenchError(f"descriptions file {path}: '{key}' must map to a list of strings")
        by_key.setdefault(normalize_classname(key), []).extend(s.strip() for s in sentences
                                                               if s.strip())
    out = {name: list(by_key.get(normalize_classname(name), [])) for name in classnames}
    if classnames and not any(out.values()):
        raise AnbenchError(f"descriptions file {path} has no entry for any of the "
                           f"{len(classnames)} classes (e.g. '{classnames[0]}')")
    return out


def load_packaged_descriptions(name: str, classnames: list[str]) -> dict[str, list[str]]:
    """The descriptions shipped in `anbench/resources/descriptions/<name>.json`."""
    path = Path(__file__).resolve().parent.parent / "resources" / "descriptions" / f"{name}.json"
    return read_descriptions(path, classnames)


# ----------------------------------------------------------------------------------------------
# files


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def require_file(path: Path, what: str, fix: str) -> Path:
    """Return `path` if it is a file, else raise a one-line error naming it and the fix."""
    if not Path(path).is_file():
        raise AnbenchError(f"{what} not found: expected {path} ({fix})")
    return Path(path)


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not Path(path).is_dir():
        raise AnbenchError(f"{what} not found: expected folder {path} ({fix})")
    return Path(path)
