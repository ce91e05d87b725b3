"""Embedded datasets (fashion-mnist, digits), shipped descriptions and the dataset contracts."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from anbench.data import base
from anbench.data.base import ArraySplit, LoadedDataset, PathSplit, Subset
from anbench.data.builtin import digits, fashion_mnist
from anbench.registry import DATASETS, AnbenchError

HAVE_DEBIAN_FMNIST = fashion_mnist._find_in(fashion_mnist.DEBIAN_DIR) is not None


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_tiny_fmnist(folder: Path, per_class: int = 1010, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte",
              rng.integers(0, 256, (len(labels), 28, 28)).astype(np.uint8), gz)
    write_idx(folder / "train-labels-idx1-ubyte", labels, gz)
    write_idx(folder / "t10k-images-idx3-ubyte",
              rng.integers(0, 256, (20, 28, 28)).astype(np.uint8), gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.repeat(np.arange(10), 2).astype(np.uint8),
              gz)


def test_registered():
    assert {"fashion-mnist", "digits"} <= set(DATASETS.names())


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_root(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    write_tiny_fmnist(tmp_path / "fm", gz=gz)
    source = DATASETS.get("fashion-mnist")({"data_root": str(tmp_path / "fm"),
                                            "download": False})
    assert source.status(tmp_path / "cache")[0]
    ds = source.load(tmp_path / "cache")
    assert ds.classnames[0] == "t-shirt" and ds.num_classes == 10
    assert ds.templates[0] == "a photo of a {}."
    # 1,010 per class: 500 to val, then the rest is halved (the pool takes at most half)
    assert (len(ds.train), len(ds.val), len(ds.test), len(ds.pretrain)) == (2550, 5000, 20, 2550)
    assert np.bincount(base.split_labels(ds.val)).tolist() == [500] * 10
    image = ds.load_image(ds.train[0][0])
    assert image.mode == "RGB" and image.size == (28, 28)
    again = source.load(tmp_path / "cache")
    assert np.array_equal(ds.val.images, again.val.images)  # the val split is fixed


def test_fashion_mnist_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    source = DATASETS.get("fashion-mnist")({"download": False})
    ok, message = source.status(tmp_path / "cache")
    assert not ok and "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(AnbenchError) as err:
        source.load(tmp_path / "cache")
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert str(tmp_path / "no-debian") in str(err.value)


def test_fashion_mnist_truncated_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    write_tiny_fmnist(tmp_path, per_class=2, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(AnbenchError, match="truncated"):
        DATASETS.get("fashion-mnist")({"data_root": str(tmp_path),
                                       "download": False}).load(tmp_path / "c")


@pytest.mark.skipif(not HAVE_DEBIAN_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_debian(tmp_path):
    ds = DATASETS.get("fashion-mnist")({"download": False}).load(tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test), len(ds.pretrain)) == (10000, 5000, 10000,
                                                                           45000)
    assert ds.train.images.shape[1:] == (28, 28)
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    assert np.bincount(ds.train.labels).tolist() == [1000] * 10



def test_fashion_mnist_splits_are_disjoint():
    # val, the few-shot pool and the backbone's pretrain split partition the official training
    # images, so the mini backbone never sees a few-shot image
    labels = np.repeat(np.arange(10), 6000)
    masks = fashion_mnist.split_masks(labels)
    assert (masks["val"].astype(int) + masks["train"] + masks["pretrain"] == 1).all()
    assert np.bincount(labels[masks["val"]]).tolist() == [500] * 10
    assert np.bincount(labels[masks["train"]]).tolist() == [1000] * 10
    again = fashion_mnist.split_masks(labels)
    assert all(np.array_equal(masks[k], again[k]) for k in masks)


def test_digits_split_is_stratified_and_fixed(tmp_path):
    ds = DATASETS.get("digits")().load(tmp_path)
    again = DATASETS.get("digits")().load(tmp_path)
    assert len(ds.train) + len(ds.val) + len(ds.test) + len(ds.pretrain) == 1797
    # the four parts partition the 1,797 images: the pretrain split shares none with the others
    parts = digits.stratified_split(load_digits().target)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1797))
    assert np.array_equal(ds.test.images, again.test.images)
    for split, fraction in ((ds.test, 0.3), (ds.val, 0.1), (ds.train, 0.25), (ds.pretrain, 0.35)):
        counts = np.bincount(split.labels, minlength=10)
        assert all(abs(c - fraction * 180) <= 2 for c in counts)
    assert ds.train.images.dtype == np.uint8 and ds.train.images.max() == 255
    assert ds.templates[0] == "a photo of the digit {}."
    image = ds.load_image(ds.test[0][0])
    assert image.mode == "RGB" and image.size == (8, 8)
    assert ds.prompts()[3] == "a photo of the digit three."


@pytest.mark.parametrize("name", ["fashion-mnist", "digits"])
def test_shipped_descriptions(name):
    classnames = {"fashion-mnist": fashion_mnist.CLASSNAMES, "digits": digits.CLASSNAMES}[name]
    descriptions = base.load_packaged_descriptions(name, classnames)
    assert set(descriptions) == set(classnames)
    for classname, sentences in descriptions.items():
        assert len(sentences) >= 5, classname
        assert len(set(sentences)) == len(sentences)
        assert all(s.endswith(".") and len(s.split()) >= 3 for s in sentences)


def test_descriptions_file_replaces_shipped(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"Zero": ["nothing at all."], "one": "a single stroke."}))
    ds = DATASETS.get("digits")({"descriptions_file": str(path)}).load(tmp_path)
    assert ds.descriptions["zero"] == ["nothing at all."]
    assert ds.descriptions["one"] == ["a single stroke."]
    assert ds.descriptions["two"] == []


def test_read_descriptions_errors(tmp_path):
    with pytest.raises(AnbenchError, match="not found"):
        base.read_descriptions(tmp_path / "none.json", ["a"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": [1, 2]}))
    with pytest.raises(AnbenchError, match="list of strings"):
        base.read_descriptions(bad, ["a"])
    bad.write_text("[1]")
    with pytest.raises(AnbenchError, match="must map"):
        base.read_descriptions(bad, ["a"])


def test_load_image_kinds(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert base.load_image(grey).mode == "RGB"
    assert base.load_image(Image.new("L", (4, 4))).mode == "RGB"
    path = tmp_path / "x.png"
    Image.new("RGBA", (5, 5)).save(path)
    assert base.load_image(str(path)).mode == "RGB"
    assert base.load_image(path).size == (5, 5)
    with pytest.raises(AnbenchError, match="not found"):
        base.load_image(str(tmp_path / "missing.png"))
    with pytest.raises(TypeError):
        base.load_image(grey.astype(np.float32))


def test_splits_and_subsets():
    split = ArraySplit(np.zeros((6, 2, 2), np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    assert len(split[1:3]) == 2 and split[4][1] == 1
    sub = Subset(split, [1, 2, 4], label_map={1: 0, 2: 1})
    assert sub.labels.tolist() == [0, 1, 0] and [y for _, y in sub] == [0, 1, 0]
    paths = PathSplit(["a", "b"], [1, 0])
    assert list(paths) == [("a", 1), ("b", 0)] and base.split_labels(paths).tolist() == [1, 0]
    assert base.split_labels([("x", 3), ("y", 4)]).tolist() == [3, 4]


def test_loaded_dataset_validates():
    empty = ArraySplit(np.zeros((0, 2, 2), np.uint8), np.zeros(0))
    with pytest.raises(ValueError, match="templates"):
        LoadedDataset("x", ["a"], ["no placeholder"], {}, empty, empty, empty)
    with pytest.raises(ValueError, match="unique"):
        LoadedDataset("x", ["a", "a"], ["{}"], {}, empty, empty, empty)


def test_atomic_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "f.json"
    base.atomic_write_text(target, "1")
    base.atomic_write_text(target, "2")
    assert target.read_text() == "2"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_cache_dir_env(monkeypatch, tmp_path):
    from anbench import paths

    monkeypatch.setenv("ANBENCH_CACHE", str(tmp_path))
    assert paths.cache_dir() == tmp_path
    monkeypatch.delenv("ANBENCH_CACHE")
    assert paths.cache_dir() == Path.home() / ".cache" / "anbench"
