"""The 11 datasets of CoOp / CoCoOp / the ANPrompt paper, read from the community's CoOp layout.

Every dataset lives in its own folder under one data root (`data_root`, else `$ANBENCH_DATA`),
exactly as CoOp's DATASETS.md describes (github.com/KaiyangZhou/CoOp):

    $DATA/imagenet/images/{train,val}/<wnid>/*.JPEG  + imagenet/classnames.txt
    $DATA/caltech-101/101_ObjectCategories/          + split_zhou_Caltech101.json
    $DATA/oxford_pets/images/                        + split_zhou_OxfordPets.json
    $DATA/stanford_cars/{cars_train,cars_test}/      + split_zhou_StanfordCars.json
    $DATA/oxford_flowers/jpg/                        + split_zhou_OxfordFlowers.json
    $DATA/food-101/images/                           + split_zhou_Food101.json
    $DATA/fgvc_aircraft/images/ + variants.txt + images_variant_{train,val,test}.txt
    $DATA/sun397/SUN397/                             + split_zhou_SUN397.json
    $DATA/dtd/images/                                + split_zhou_DescribableTextures.json
    $DATA/eurosat/2750/                              + split_zhou_EuroSAT.json
    $DATA/ucf101/UCF-101-midframes/                  + split_zhou_UCF101.json

A `split_zhou_*.json` file is `{"train"|"val"|"test": [[relative image path, label, class name],
...]}`, paths relative to the image folder (StanfordCars: relative to `stanford_cars/`). Class
names get CoOp's prompt-time cleaning (`_` -> space). Nothing is ever written into the data
folders: the ImageNet file index is cached under the anbench cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar

from anbench.data.base import (
    DatasetParams,
    DatasetSource,
    LoadedDataset,
    PathSplit,
    atomic_write_text,
    read_json,
)
from anbench.paths import data_root_default
from anbench.registry import DATASETS, AnbenchError

# CoOp's zero-shot ensemble templates (trainers/imagenet_templates.py, IMAGENET_TEMPLATES_SELECT):
# alternatives after each dataset's own template.
TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

DATA_ROOT_HINT = ("pass --data-root (the folder that holds the CoOp dataset folders) or set "
                  "$ANBENCH_DATA; layout: github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md")


def clean_classname(name: str) -> str:
    """CoOp's prompt-time cleaning of class names: underscores become spaces."""
    return " ".join(name.replace("_", " ").split())


class CoopDataset(DatasetSource):
    """Common reader for a CoOp-layout dataset with a `split_zhou_*.json` file."""

    folder: ClassVar[str] = ""          # folder under the data root
    image_dir: ClassVar[str] = ""       # image folder under `folder` ("" = `folder` itself)
    split_file: ClassVar[str] = ""      # split file under `folder`
    template: ClassVar[str] = "a photo of a {}."  # CoOp's CUSTOM_TEMPLATES entry
    coop_name: ClassVar[str] = ""       # CoOp's dataset class name
    rename: ClassVar[dict[str, str]] = {}  # raw class name -> prompt class name

    class Params(DatasetParams):
        pass

    # paths ------------------------------------------------------------------------------------
    def data_root(self) -> Path:
        if self.params.data_root:
            return Path(self.params.data_root).expanduser()
        default = data_root_default()
        if default is None:
            raise AnbenchError(f"dataset '{self.name}' needs a data root: {DATA_ROOT_HINT}")
        return default

    @property
    def dataset_dir(self) -> Path:
        return self.data_root() / self.folder

    def required_paths(self) -> list[Path]:
        """The files and folders that must exist (checked in this order)."""
        base = self.dataset_dir
        return [base, base / self.image_dir if self.image_dir else base, base / self.split_file]

    def status(self) -> tuple[bool, str]:
        try:
            paths = self.required_paths()
        except AnbenchError as exc:
            return False, str(exc)
        for path in paths:
            if not path.exists():
                return False, f"missing {path} ({self._fix()})"
        return True, str(self.dataset_dir)

    def _fix(self) -> str:
        return (f"put {self.coop_name} in the CoOp layout under {self.data_root()}: see "
                "github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md")

    def _check(self) -> None:
        root = self.data_root()
        if not root.is_dir():
            raise AnbenchError(f"data root not found: expected folder {root} ({DATA_ROOT_HINT})")
        for path in self.required_paths():
            if not path.exists():
                kind = "folder" if path.suffix == "" else "file"
                raise AnbenchError(f"{self.coop_name}: expected {kind} {path} not found "
                                   f"({self._fix()})")

    # reading ----------------------------------------------------------------------------------
    def read_splits(self) -> tuple[list[str], dict[str, PathSplit]]:
        """Class names and the train / val / test splits (reads the split JSON)."""
        path = self.dataset_dir / self.split_file
        try:
            raw = read_json(path)
        except json.JSONDecodeError as exc:
            raise AnbenchError(f"split file {path} is not valid JSON: {exc}") from None
        prefix = self.dataset_dir / self.image_dir if self.image_dir else self.dataset_dir
        names: dict[int, str] = {}
        splits: dict[str, PathSplit] = {}
        for part in ("train", "val", "test"):
            if part not in raw:
                raise AnbenchError(f"split file {path} has no '{part}' list")
            paths, labels = [], []
            for entry in raw[part]:
                try:
                    relpath, label, classname = entry[0], int(entry[1]), str(entry[2])
                except (TypeError, ValueError, IndexError):
                    raise AnbenchError(f"split file {path}: bad entry {entry!r} in '{part}' "
                                       "(expected [path, label, class name])") from None
                previous = names.setdefault(label, classname)
                if previous != classname:
                    raise AnbenchError(f"split file {path}: label {label} is both '{previous}' "
                                       f"and '{classname}'")
                paths.append(str(prefix / relpath))
                labels.append(label)
            splits[part] = PathSplit(paths, labels)
        if sorted(names) != list(range(len(names))):
            raise AnbenchError(f"split file {path}: labels are not 0..{len(names) - 1}")
        classnames = [clean_classname(self.rename.get(names[i], names[i]))
                      for i in range(len(names))]
        return classnames, splits

    def load(self, cache_dir: Path) -> LoadedDataset:
        self._check()
        classnames, splits = self.read_splits()
        for part, split in splits.items():  # a wrong image folder fails here, not mid-run
            if len(split) and not Path(split.paths[0]).is_file():
                raise AnbenchError(f"{self.coop_name}: image {split.paths[0]} listed in the "
                                   f"{part} split not found ({self._fix()})")
        return LoadedDataset(
            name=self.name,
            classnames=classnames,
            templates=[self.template, *[t for t in TEMPLATES_SELECT if t != self.template]],
            descriptions=self._descriptions(classnames),
            train=splits["train"],
            val=splits["val"],
            test=splits["test"],
            info={"source": str(self.dataset_dir), "layout": "CoOp", "coop_name": self.coop_name},
        )


@DATASETS.register("caltech101", description="Caltech101 (CoOp layout, data root needed)")
class Caltech101(CoopDataset):
    folder, image_dir, split_file = "caltech-101", "101_ObjectCategories", \
        "split_zhou_Caltech101.json"
    template, coop_name = "a photo of a {}.", "Caltech101"
    rename = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
              "Motorbikes": "motorbike"}


@DATASETS.register("oxford-pets", description="OxfordPets (CoOp layout, data root needed)")
class OxfordPets(CoopDataset):
    folder, image_dir, split_file = "oxford_pets", "images", "split_zhou_OxfordPets.json"
    template, coop_name = "a photo of a {}, a type of pet.", "OxfordPets"


@DATASETS.register("stanford-cars", description="StanfordCars (CoOp layout, data root needed)")
class StanfordCars(CoopDataset):
    folder, image_dir, split_file = "stanford_cars", "", "split_zhou_StanfordCars.json"
    template, coop_name = "a photo of a {}.", "StanfordCars"


@DATASETS.register("oxford-flowers", description="Flowers102 (CoOp layout, data root needed)")
class OxfordFlowers(CoopDataset):
    folder, image_dir, split_file = "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"
    template, coop_name = "a photo of a {}, a type of flower.", "OxfordFlowers"


@DATASETS.register("food101", description="Food101 (CoOp layout, data root needed)")
class Food101(CoopDataset):
    folder, image_dir, split_file = "food-101", "images", "split_zhou_Food101.json"
    template, coop_name = "a photo of {}, a type of food.", "Food101"


@DATASETS.register("sun397", description="SUN397 (CoOp layout, data root needed)")
class SUN397(CoopDataset):
    folder, image_dir, split_file = "sun397", "SUN397", "split_zhou_SUN397.json"
    template, coop_name = "a photo of a {}.", "SUN397"


@DATASETS.register("dtd", description="Describable Textures (CoOp layout, data root needed)")
class DTD(CoopDataset):
    folder, image_dir, split_file = "dtd", "images", "split_zhou_DescribableTextures.json"
    template, coop_name = "{} texture.", "DescribableTextures"


@DATASETS.register("eurosat", description="EuroSAT (CoOp layout, data root needed)")
class EuroSAT(CoopDataset):
    folder, image_dir, split_file = "eurosat", "2750", "split_zhou_EuroSAT.json"
    template, coop_name = "a centered satellite photo of {}.", "EuroSAT"
    # CoOp's NEW_CNAMES; its released split file already uses the new names.
    rename = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest",
              "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
              "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
              "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
              "River": "River", "SeaLake": "Sea or Lake"}


@DATASETS.register("ucf101", description="UCF101 mid-frames (CoOp layout, data root needed)")
class UCF101(CoopDataset):
    folder, image_dir, split_file = "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"
    template, coop_name = "a photo of a person doing {}.", "UCF101"


@DATASETS.register("fgvc-aircraft", description="FGVCAircraft (CoOp layout, data root needed)")
class FGVCAircraft(CoopDataset):
    """FGVC-Aircraft: the dataset's own `images_variant_*.txt` lists (CoOp uses no split JSON)."""

    folder, image_dir, split_file = "fgvc_aircraft", "images", ""
    template, coop_name = "a photo of a {}, a type of aircraft.", "FGVCAircraft"
    LISTS: ClassVar[dict[str, str]] = {"train": "images_variant_train.txt",
                                       "val": "images_variant_val.txt",
                                       "test": "images_variant_test.txt"}

    def required_paths(self) -> list[Path]:
        base = self.dataset_dir
        return [base, base / self.image_dir, base / "variants.txt",
                *[base / name for name in self.LISTS.values()]]

    def read_splits(self) -> tuple[list[str], dict[str, PathSplit]]:
        base = self.dataset_dir
        raw_names = [line.strip() for line in
                     (base / "variants.txt").read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        label_of = {name: i for i, name in enumerate(raw_names)}
        splits: dict[str, PathSplit] = {}
        for part, list_name in self.LISTS.items():
            paths, labels = [], []
            for line in (base / list_name).read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                image_id, _, variant = line.strip().partition(" ")
                if variant not in label_of:
                    raise AnbenchError(f"{base / list_name}: variant '{variant}' is not in "
                                       f"{base / 'variants.txt'}")
                paths.append(str(base / self.image_dir / f"{image_id}.jpg"))
                labels.append(label_of[variant])
            splits[part] = PathSplit(paths, labels)
        return [clean_classname(n) for n in raw_names], splits


@DATASETS.register("imagenet", description="ImageNet-1k (CoOp layout: images/{train,val} + "
                   "classnames.txt, data root needed)")
class ImageNet(CoopDataset):
    """ImageNet-1k from `imagenet/images/{train,val}/<wnid>/` and CoOp's `classnames.txt`.

    As in CoOp, the official validation set is the test set (and the val split). Labels follow
    the sorted wnid folders. The file index is cached under `<cache>/datasets/imagenet/`.
    """

    folder, image_dir, split_file = "imagenet", "images", ""
    template, coop_name = "a photo of a {}.", "ImageNet"
    EXTENSIONS: ClassVar[tuple[str, ...]] = (".jpeg", ".jpg", ".png")

    def required_paths(self) -> list[Path]:
        base = self.dataset_dir
        return [base, base / "classnames.txt", base / "images" / "train", base / "images" / "val"]

    def read_classnames(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in (self.dataset_dir / "classnames.txt").read_text(encoding="utf-8").splitlines():
            parts = line.strip().split(" ")
            if parts and parts[0]:
                out[parts[0]] = " ".join(parts[1:])
        return out

    def _scan(self, split_dir: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
        paths: list[str] = []
        labels: list[int] = []
        for label, wnid in enumerate(wnids):
            folder = split_dir / wnid
            if not folder.is_dir():
                raise AnbenchError(f"ImageNet: expected folder {folder} not found ({self._fix()})")
            names = sorted(e.name for e in os.scandir(folder)
                           if not e.name.startswith(".")
                           and e.name.lower().endswith(self.EXTENSIONS))
            paths.extend(f"{wnid}/{n}" for n in names)
            labels.extend([label] * len(names))
        return paths, labels

    def read_splits(self, cache_dir: Path | None = None) -> tuple[list[str], dict[str, PathSplit]]:
        names = self.read_classnames()
        image_root = self.dataset_dir / "images"
        wnids = sorted(e.name for e in os.scandir(image_root / "train") if e.is_dir())
        missing = [w for w in wnids if w not in names]
        if missing:
            raise AnbenchError(f"ImageNet: {self.dataset_dir / 'classnames.txt'} has no name for "
                               f"folder {missing[0]}")
        stamp = {str(p): p.stat().st_mtime_ns for p in
                 (self.dataset_dir / "classnames.txt", image_root / "train", image_root / "val")}
        index_path = None
        if cache_dir is not None:
            key = hashlib.sha256(str(self.dataset_dir.resolve()).encode()).hexdigest()[:16]
            index_path = Path(cache_dir) / "datasets" / "imagenet" / f"index-{key}.json"
        index = None
        if index_path is not None and index_path.is_file():
            cached = read_json(index_path)
            if cached.get("stamp") == stamp and cached.get("wnids") == wnids:
                index = cached
        if index is None:
            index = {"stamp": stamp, "wnids": wnids}
            for part, sub in (("train", "train"), ("test", "val")):
                paths, labels = self._scan(image_root / sub, wnids)
                index[part] = {"paths": paths, "labels": labels}
            if index_path is not None:
                atomic_write_text(index_path, json.dumps(index))
        splits = {}
        for part, sub in (("train", "train"), ("test", "val")):
            splits[part] = PathSplit([str(image_root / sub / p) for p in index[part]["paths"]],
                                     index[part]["labels"])
        splits["val"] = splits["test"]
        return [clean_classname(names[w]) for w in wnids], splits

    def load(self, cache_dir: Path) -> LoadedDataset:
        self._check()
        classnames, splits = self.read_splits(cache_dir)
        return LoadedDataset(
            name=self.name,
            classnames=classnames,
            templates=[self.template, *[t for t in TEMPLATES_SELECT if t != self.template]],
            descriptions=self._descriptions(classnames),
            train=splits["train"],
            val=splits["val"],
            test=splits["test"],
            info={"source": str(self.dataset_dir), "layout": "CoOp", "coop_name": self.coop_name},
        )
