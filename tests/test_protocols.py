"""Few-shot sampling, base-to-new, all-classes and cross-dataset protocols."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anbench.data import protocols
from anbench.data.base import ArraySplit, LoadedDataset, PathSplit
from anbench.registry import DATASETS
from anbench.seeds import derive_seed


def write_caltech(root: Path, classes: list[str], per_class: dict[str, int]) -> None:
    """A tiny CoOp-layout Caltech101 (generated PNGs + split_zhou_Caltech101.json)."""
    base = root / "caltech-101"
    images = base / "101_ObjectCategories"
    split: dict[str, list] = {}
    seed = 0
    for part, count in per_class.items():
        split[part] = []
        for label, name in enumerate(classes):
            for k in range(count):
                rel = f"{name}/{part}_{k:03d}.png"
                (images / name).mkdir(parents=True, exist_ok=True)
                value = np.full((6, 6, 3), seed % 256, dtype=np.uint8)
                Image.fromarray(value).save(images / rel)
                seed += 1
                split[part].append([rel, label, name])
    (base / "split_zhou_Caltech101.json").write_text(json.dumps(split))


CLASSES = ["ant", "bee", "cat", "dog", "eel"]  # 5 classes: base = 3, new = 2


@pytest.fixture()
def caltech(tmp_path):
    write_caltech(tmp_path / "data", CLASSES, {"train": 12, "val": 6, "test": 4})
    return DATASETS.get("caltech101")({"data_root": str(tmp_path / "data")}).load(
        tmp_path / "cache")


def _files(subset) -> list[str]:
    return [Path(item).name if isinstance(item, str) else item for item, _ in subset]


def test_few_shot_seed_is_fixed():
    # sha256-based: the same in every process, on every machine, in every Python version
    assert derive_seed("a", 1, sep="\x1f", bits=64) == 13722700206037900931
    assert derive_seed("a", 1, sep="\x1f", bits=64) != derive_seed("a", 2, sep="\x1f", bits=64)


def test_few_shot_draw_is_the_historic_one():
    """The draw is keyed exactly as before seeds had one home: SHA-256 of the parts' str()
    joined by U+001F, the first 8 bytes little-endian (all 64 bits) seeding default_rng."""
    labels = np.repeat(np.arange(4), [9, 3, 12, 7])
    for seed in (1, 2, 17):
        text = "\x1f".join(str(p) for p in ("few-shot", "ds/train", 4, seed))
        old_seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng(old_seed)
        expected = []
        for label in range(4):
            idx = np.flatnonzero(labels == label)
            if len(idx) > 4:
                idx = np.sort(rng.choice(idx, size=4, replace=False))
            expected.extend(int(i) for i in idx)
        assert protocols.sample_few_shot_indices(labels, 4, seed, "ds/train") == expected


def test_few_shot_counts_and_cache(caltech, tmp_path):
    cache = tmp_path / "cache"
    shots = protocols.few_shot(caltech, 4, seed=1, cache_dir=cache)
    assert len(shots) == 20
    assert np.bincount(shots.labels).tolist() == [4] * 5
    files = list((cache / "fewshot" / "caltech101").glob("train-shots4-seed1-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["indices"] == shots.indices and record["seed"] == 1
    assert all(item.endswith(".png") for item in record["items"])
    assert not [p for p in files[0].parent.iterdir() if p.name.endswith(".tmp")]
    # the cached draw is what a second call returns, even if the file were the only source
    record["indices"] = shots.indices[::-1]
    files[0].write_text(json.dumps(record))
    assert protocols.few_shot(caltech, 4, 1, cache).indices == shots.indices[::-1]
    # a damaged cache file is redrawn, identically
    files[0].write_text("{")
    assert protocols.few_shot(caltech, 4, 1, cache).indices == shots.indices


def test_same_seed_same_files_different_seed_different_files(caltech, tmp_path):
    a = protocols.few_shot(caltech, 3, seed=1, cache_dir=tmp_path / "c1")
    b = protocols.few_shot(caltech, 3, seed=1, cache_dir=tmp_path / "c2")  # fresh cache
    c = protocols.few_shot(caltech, 3, seed=2, cache_dir=tmp_path / "c1")
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)


def test_same_files_in_another_process(caltech, tmp_path):
    here = _files(protocols.few_shot(caltech, 2, seed=3, cache_dir=tmp_path / "here"))
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from anbench.registry import DATASETS\n"
        "from anbench.data import protocols\n"
        f"ds = DATASETS.get('caltech101')({{'data_root': {str(tmp_path / 'data')!r}}})"
        f".load(Path({str(tmp_path / 'there')!r}))\n"
        f"s = protocols.few_shot(ds, 2, seed=3, cache_dir=Path({str(tmp_path / 'there')!r}))\n"
        "print(json.dumps([Path(i).name for i, _ in s]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == here


def test_fewer_items_than_shots_takes_all(tmp_path):
    labels = [0] * 5 + [1] * 2
    ds = LoadedDataset("tiny", ["a", "b"], ["{}"], {}, PathSplit([f"f{i}" for i in
                                                                  range(7)], labels),
                       PathSplit([], []), PathSplit([], []))
    shots = protocols.few_shot(ds, 3, seed=1, cache_dir=tmp_path)
    assert np.bincount(shots.labels).tolist() == [3, 2]
    assert len(protocols.few_shot(ds, None, 1, tmp_path)) == 7  # all
    assert len(protocols.few_shot(ds, 0, 1, tmp_path)) == 7


def test_changed_split_is_not_served_stale_indices(tmp_path):
    def make(n):
        return LoadedDataset("same-name", ["a", "b"], ["{}"], {},
                             PathSplit([f"f{i}" for i in range(n)], [i % 2 for i in range(n)]),
                             PathSplit([], []), PathSplit([], []))

    small = protocols.few_shot(make(6), 2, 1, tmp_path)
    large = protocols.few_shot(make(40), 2, 1, tmp_path)
    assert max(small.indices) < 6
    assert len(list((tmp_path / "fewshot" / "same-name").iterdir())) == 2
    assert len(large) == 4


def test_base_new_class_ids():
    assert protocols.base_new_class_ids(5) == ([0, 1, 2], [3, 4])
    assert protocols.base_new_class_ids(4) == ([0, 1], [2, 3])
    assert protocols.base_new_class_ids(1) == ([0], [])


def test_base_to_new(caltech, tmp_path):
    cache = tmp_path / "cache"
    base, new = protocols.base_to_new(caltech, 4, seed=1, cache_dir=cache)
    assert (base.split, new.split) == ("base", "new")
    assert base.classnames == ["ant", "bee", "cat"] and new.classnames == ["dog", "eel"]
    assert base.class_ids == [0, 1, 2] and new.class_ids == [3, 4]
    assert sorted(set(base.train.labels.tolist())) == [0, 1, 2]
    assert len(base.train) == 12 and len(new.train) == 0  # train on base only
    assert len(base.test) == 12 and len(new.test) == 8
    assert sorted(set(new.test.labels.tolist())) == [0, 1]  # relabelled from 3, 4
    for item, label in new.test:
        assert Path(item).parent.name == new.classnames[label]
    for item, label in base.train:
        assert Path(item).parent.name == base.classnames[label]
    # shots are drawn on all classes first, then split
    everything = protocols.few_shot(caltech, 4, seed=1, cache_dir=cache)
    assert base.train.indices == [i for i, y in zip(everything.indices, everything.labels,
                                                    strict=True) if y < 3]
    assert np.bincount(base.val.labels).tolist() == [4, 4, 4]  # min(shots, 4) val shots
    assert base.prompts() == ["a photo of a ant.", "a photo of a bee.", "a photo of a cat."]
    image = base.load_image(base.test[0][0])
    assert image.mode == "RGB"


def test_base_to_new_val_shots_capped(caltech, tmp_path):
    base, _ = protocols.base_to_new(caltech, 2, seed=1, cache_dir=tmp_path)
    assert np.bincount(base.val.labels).tolist() == [2, 2, 2]
    base, _ = protocols.base_to_new(caltech, 16, seed=1, cache_dir=tmp_path)
    assert np.bincount(base.val.labels).tolist() == [4, 4, 4]
    assert np.bincount(base.train.labels).tolist() == [12, 12, 12]  # only 12 per class exist


def test_all_classes_and_cross_dataset(caltech, tmp_path):
    space = protocols.all_classes(caltech, 2, seed=1, cache_dir=tmp_path)
    assert space.split == "all" and space.classnames == CLASSES
    assert len(space.train) == 10 and len(space.test) == 20
    other = LoadedDataset(
        "grey", ["x", "y", "z"], ["a {}."], {"x": ["an x."]},
        ArraySplit(np.zeros((3, 4, 4), np.uint8), np.array([0, 1, 2])),
        ArraySplit(np.zeros((0, 4, 4), np.uint8), np.zeros(0)),
        ArraySplit(np.zeros((6, 4, 4), np.uint8), np.array([0, 1, 2, 2, 1, 0])))
    train, evals = protocols.cross_dataset(caltech, [caltech, other], 2, 1, tmp_path)
    assert train.dataset == "caltech101" and len(train.train) == 10
    assert list(evals) == ["grey"]
    assert len(evals["grey"].test) == 6 and len(evals["grey"].train) == 0
    assert evals["grey"].descriptions == {"x": ["an x."], "y": [], "z": []}
    assert evals["grey"].load_image(evals["grey"].test[0][0]).size == (4, 4)


@pytest.mark.parametrize("name", ["digits"])
def test_embedded_base_to_new(name, tmp_path):
    ds = DATASETS.get(name)().load(tmp_path)
    base, new = protocols.base_to_new(ds, 16, seed=1, cache_dir=tmp_path)
    assert base.classnames == ds.classnames[:5] and new.classnames == ds.classnames[5:]
    assert len(base.train) == 80
    assert len(base.test) + len(new.test) == len(ds.test)
    again, _ = protocols.base_to_new(ds, 16, seed=1, cache_dir=tmp_path / "other")
    assert again.train.indices == base.train.indices
