"""The 11 CoOp-layout datasets, read from tiny folders that the tests write themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anbench.data.base import LoadedDataset
from anbench.data.builtin import coop
from anbench.registry import DATASETS, AnbenchError

SPLIT_DATASETS = {
    # registry name: (folder, image dir, split file, CoOp template)
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   "a photo of a {}."),
    "oxford-pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    "a photo of a {}, a type of pet."),
    "stanford-cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "oxford-flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       "a photo of a {}, a type of flower."),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                "a photo of {}, a type of food."),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               "a photo of a person doing {}."),
}
ALL_ELEVEN = {*SPLIT_DATASETS, "fgvc-aircraft", "imagenet"}


def _png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")


def write_split_dataset(root: Path, name: str, classes: list[str],
                        per_split: dict[str, int] | None = None) -> Path:
    """A CoOp-layout folder with generated PNGs and a split_zhou JSON; returns the folder."""
    folder, image_dir, split_file, _ = SPLIT_DATASETS[name]
    per_split = per_split or {"train": 6, "val": 2, "test": 3}
    base = root / folder
    images = base / image_dir if image_dir else base
    split: dict[str, list] = {}
    seed = 0
    for part, count in per_split.items():
        entries = []
        for label, classname in enumerate(classes):
            for k in range(count):
                rel = f"{classname}/{part}_{k:03d}.png"
                _png(images / rel, seed)
                seed += 1
                entries.append([rel, label, classname])
        split[part] = entries
    (base / split_file).write_text(json.dumps(split))
    return base


def write_fgvc(root: Path, variants: list[str], per_split: int = 4) -> Path:
    base = root / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    seed = 0
    for part in ("train", "val", "test"):
        lines = []
        for variant in variants:
            for _ in range(per_split):
                image_id = f"{1000000 + seed:07d}"
                _png(base / "images" / f"{image_id}.jpg", seed)  # PNG bytes; PIL sniffs
                lines.append(f"{image_id} {variant}")
                seed += 1
        (base / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagenet(root: Path, classes: dict[str, str], train: int = 5, val: int = 2) -> Path:
    base = root / "imagenet"
    seed = 0
    for wnid in classes:
        for part, count in (("train", train), ("val", val)):
            for k in range(count):
                _png(base / "images" / part / wnid / f"{wnid}_{k}.png", seed)
                seed += 1
    (base / "classnames.txt").write_text(
        "".join(f"{wnid} {name}\n" for wnid, name in classes.items()))
    return base


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_all_eleven_registered():
    assert set(DATASETS.names()) >= ALL_ELEVEN


@pytest.mark.parametrize("name", sorted(SPLIT_DATASETS))
def test_split_json_datasets_load(tmp_path, name):
    classes = ["alpha_one", "beta", "gamma"]
    write_split_dataset(tmp_path / "data", name, classes)
    before = _listing(tmp_path / "data")
    source = DATASETS.get(name)({"data_root": str(tmp_path / "data")})
    assert source.status()[0]
    ds = source.load(tmp_path / "cache")
    assert isinstance(ds, LoadedDataset)
    assert ds.name == name
    assert ds.classnames == ["alpha one", "beta", "gamma"]  # CoOp's "_" -> " " cleaning
    assert ds.templates[0] == SPLIT_DATASETS[name][3]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 9)
    item, label = ds.train[0]
    assert Path(item).is_file() and label == 0
    image = ds.load_image(item)
    assert image.mode == "RGB" and image.size == (12, 12)
    assert ds.prompts()[1] == ds.templates[0].format("beta")
    assert _listing(tmp_path / "data") == before  # nothing written into the data folder


def test_caltech_and_eurosat_renames(tmp_path):
    write_split_dataset(tmp_path, "caltech101", ["airplanes", "Faces", "accordion"])
    ds = DATASETS.get("caltech101")({"data_root": str(tmp_path)}).load(tmp_path / "c")
    assert ds.classnames == ["airplane", "face", "accordion"]
    write_split_dataset(tmp_path, "eurosat", ["AnnualCrop", "Sea or Lake"])
    ds = DATASETS.get("eurosat")({"data_root": str(tmp_path)}).load(tmp_path / "c")
    assert ds.classnames == ["Annual Crop Land", "Sea or Lake"]


def test_fgvc_aircraft(tmp_path):
    write_fgvc(tmp_path, ["707-320", "A300B4", "Cessna 172"])
    ds = DATASETS.get("fgvc-aircraft")({"data_root": str(tmp_path)}).load(tmp_path / "c")
    assert ds.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert ds.templates[0] == "a photo of a {}, a type of aircraft."
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 12, 12)
    assert {y for _, y in ds.test} == {0, 1, 2}
    assert ds.load_image(ds.train[0][0]).mode == "RGB"


def test_imagenet_layout_and_index_cache(tmp_path):
    classes = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    data = write_imagenet(tmp_path / "data", classes)
    before = _listing(data)
    cache = tmp_path / "cache"
    ds = DATASETS.get("imagenet")({"data_root": str(tmp_path / "data")}).load(cache)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert (len(ds.train), len(ds.test)) == (15, 6)
    assert ds.val is ds.test  # CoOp: the official val set is the test set
    assert ds.train[0][0].endswith("n01440764/n01440764_0.png")
    assert list((cache / "datasets" / "imagenet").glob("index-*.json"))
    ds2 = DATASETS.get("imagenet")({"data_root": str(tmp_path / "data")}).load(cache)
    assert list(ds2.train) == list(ds.train)
    assert _listing(data) == before


def test_imagenet_missing_classname(tmp_path):
    data = write_imagenet(tmp_path, {"n01440764": "tench"})
    (data / "images" / "train" / "n99999999").mkdir()
    with pytest.raises(AnbenchError, match="n99999999"):
        DATASETS.get("imagenet")({"data_root": str(tmp_path)}).load(tmp_path / "c")


def test_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(AnbenchError, match=str(missing)):
        DATASETS.get("caltech101")({"data_root": str(missing)}).load(tmp_path / "c")


def test_missing_dataset_folder_names_path(tmp_path):
    with pytest.raises(AnbenchError) as err:
        DATASETS.get("oxford-pets")({"data_root": str(tmp_path)}).load(tmp_path / "c")
    assert str(tmp_path / "oxford_pets") in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_split_file_names_path(tmp_path):
    base = write_split_dataset(tmp_path, "dtd", ["banded", "woven"])
    (base / "split_zhou_DescribableTextures.json").unlink()
    source = DATASETS.get("dtd")({"data_root": str(tmp_path)})
    ok, message = source.status()
    assert not ok and "split_zhou_DescribableTextures.json" in message
    with pytest.raises(AnbenchError, match="split_zhou_DescribableTextures.json"):
        source.load(tmp_path / "c")


def test_missing_image_folder_names_path(tmp_path):
    base = write_split_dataset(tmp_path, "food101", ["pizza", "sushi"])
    (base / "images").rename(base / "imgs")
    with pytest.raises(AnbenchError, match=str(base / "images")):
        DATASETS.get("food101")({"data_root": str(tmp_path)}).load(tmp_path / "c")


def test_missing_image_file_names_it(tmp_path):
    base = write_split_dataset(tmp_path, "sun397", ["abbey", "airport"])
    first = json.loads((base / "split_zhou_SUN397.json").read_text())["train"][0][0]
    (base / "SUN397" / first).unlink()
    with pytest.raises(AnbenchError, match=first):
        DATASETS.get("sun397")({"data_root": str(tmp_path)}).load(tmp_path / "c")


def test_no_data_root_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("ANBENCH_DATA", raising=False)
    with pytest.raises(AnbenchError, match="--data-root"):
        DATASETS.get("ucf101")().load(tmp_path)
    ok, message = DATASETS.get("ucf101")().status()
    assert not ok and "--data-root" in message


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_split_dataset(tmp_path, "ucf101", ["Apply_Eye_Makeup", "Archery"])
    monkeypatch.setenv("ANBENCH_DATA", str(tmp_path))
    ds = DATASETS.get("ucf101")().load(tmp_path / "c")
    assert ds.classnames == ["Apply Eye Makeup", "Archery"]
    assert ds.prompts()[0] == "a photo of a person doing Apply Eye Makeup."


def test_bad_split_file_is_reported(tmp_path):
    base = write_split_dataset(tmp_path, "oxford-flowers", ["rose", "daisy"])
    (base / "split_zhou_OxfordFlowers.json").write_text("{not json")
    with pytest.raises(AnbenchError, match="not valid JSON"):
        DATASETS.get("oxford-flowers")({"data_root": str(tmp_path)}).load(tmp_path / "c")
    (base / "split_zhou_OxfordFlowers.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(AnbenchError, match="'test'"):
        DATASETS.get("oxford-flowers")({"data_root": str(tmp_path)}).load(tmp_path / "c")


def test_descriptions_file_cupl_format(tmp_path):
    write_split_dataset(tmp_path / "d", "ucf101", ["Apply_Eye_Makeup", "Archery"])
    desc = tmp_path / "ucf.json"
    desc.write_text(json.dumps({"apply_eye_makeup": ["a person putting on mascara."],
                                "Archery": ["someone shooting arrows with a bow.",
                                            "an archer aiming at a target."]}))
    ds = DATASETS.get("ucf101")({"data_root": str(tmp_path / "d"),
                                 "descriptions_file": str(desc)}).load(tmp_path / "c")
    assert ds.descriptions["Apply Eye Makeup"] == ["a person putting on mascara."]
    assert len(ds.descriptions["Archery"]) == 2
    # without a file the CoOp datasets have no descriptions (wsp falls back to templates)
    plain = DATASETS.get("ucf101")({"data_root": str(tmp_path / "d")}).load(tmp_path / "c")
    assert plain.descriptions == {}
    assert len(plain.templates) > 1


def test_descriptions_file_for_another_dataset_is_an_error(tmp_path):
    write_split_dataset(tmp_path / "d", "dtd", ["banded", "woven"])
    desc = tmp_path / "other.json"
    desc.write_text(json.dumps({"goldfish": ["a small orange fish."]}))
    with pytest.raises(AnbenchError, match="no entry"):
        DATASETS.get("dtd")({"data_root": str(tmp_path / "d"),
                             "descriptions_file": str(desc)}).load(tmp_path / "c")


def test_unknown_param_rejected():
    with pytest.raises(Exception, match="extra"):
        DATASETS.get("dtd")({"dataroot": "/x"})


def test_clean_classname():
    assert coop.clean_classname("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert coop.clean_classname("  a__b ") == "a b"
