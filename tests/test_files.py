"""anbench.files: the one atomic writer (files and folders)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from anbench.files import (
    TEMP_SUFFIX,
    atomic_directory,
    atomic_path,
    atomic_save_npz,
    atomic_save_torch,
    atomic_write_json,
    atomic_write_text,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


def test_writes_replace_whole_files_and_leave_no_temporaries(tmp_path: Path):
    target = tmp_path / "deep" / "er" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    atomic_write_json(tmp_path / "x.json", {"b": 1, "a": [1.5, "s"]})
    assert (tmp_path / "x.json").read_text() == '{\n "a": [\n  1.5,\n  "s"\n ],\n "b": 1\n}\n'
    assert _leftovers(target.parent) == [] and _leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_files_get_the_default_mode_not_mkstemps_private_one(tmp_path: Path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644


def test_torch_and_npz_round_trip(tmp_path: Path):
    obj = {"w": torch.arange(6.0).reshape(2, 3)}
    atomic_save_torch(tmp_path / "p.pt", obj)
    assert torch.equal(torch.load(tmp_path / "p.pt", weights_only=True)["w"], obj["w"])
    atomic_save_npz(tmp_path / "a.npz", {"x": np.arange(4)})
    with np.load(tmp_path / "a.npz") as data:
        assert data["x"].tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "p.pt"]


def test_atomic_directory_replaces_a_folder_or_leaves_it(tmp_path: Path):
    dest = tmp_path / "data" / "corpus"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("1")
    assert [p.name for p in dest.iterdir()] == ["a.txt"]
    with atomic_directory(dest) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in dest.iterdir()] == ["b.txt"]  # the old folder's files are gone
    with pytest.raises(ValueError), atomic_directory(dest) as tmp:
        (tmp / "c.txt").write_text("3")
        raise ValueError
    assert [p.name for p in dest.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["corpus"]
