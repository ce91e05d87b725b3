"""`status` of the open_clip backbones: a pretrained tag counts as present once open_clip's
download of it is in the cache (laid out here as huggingface_hub lays it out), and what to do
otherwise is named exactly. Nothing is downloaded or loaded."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

from anbench.registry import BACKBONES


def _hub_download(cache: Path, repo: str, filename: str) -> Path:
    """A file as `huggingface_hub.hf_hub_download(repo, filename, cache_dir=...)` leaves it."""
    folder = cache / "open_clip" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    path = folder / "snapshots" / "0123abcd" / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    return path


def test_a_downloaded_tag_is_present(tmp_path: Path):
    backbone = BACKBONES.get("vit-b-16")()  # pretrained: openai
    ok, message = backbone.status(tmp_path)
    assert not ok
    assert "anbench backbone build vit-b-16" in message
    assert "backbones.vit-b-16.pretrained" in message
    repo = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].rstrip("/")
    path = _hub_download(tmp_path, repo, "open_clip_model.safetensors")
    ok, message = backbone.status(tmp_path)
    assert ok and str(path) in message


def test_a_tag_downloaded_from_its_url_is_present(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    # tags without a hub entry are fetched from their URL into the cache folder itself
    url = "https://example.org/clip/weights-1234.pt"
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"url": url})
    backbone = BACKBONES.get("vit-b-32")()
    assert not backbone.status(tmp_path)[0]
    (tmp_path / "open_clip").mkdir()
    (tmp_path / "open_clip" / "weights-1234.pt").write_bytes(b"weights")
    assert backbone.status(tmp_path)[0]


def test_unknown_tag_and_missing_file_are_named(tmp_path: Path):
    ok, message = BACKBONES.get("vit-b-16")({"pretrained": "no-such-tag"}).status(tmp_path)
    assert not ok and "no pretrained tag 'no-such-tag'" in message and "openai" in message
    missing = tmp_path / "ViT-B-16.pt"
    ok, message = BACKBONES.get("vit-b-16")({"pretrained": str(missing)}).status(tmp_path)
    assert not ok and str(missing) in message
    missing.write_bytes(b"weights")
    assert BACKBONES.get("vit-b-16")({"pretrained": str(missing)}).status(tmp_path)[0]
    assert BACKBONES.get("open-clip")({"pretrained": None}).status(tmp_path)[0]
