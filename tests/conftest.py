"""Shared fixtures: tiny real open_clip models (random weights) for fast, offline tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_models import tiny_clip, tiny_hf_clip  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # Nothing a test writes may land in the user's cache; NLTK data is shared across tests.
    cache = tmp_path_factory.getbasetemp() / "anbench-cache"
    monkeypatch.setenv("ANBENCH_CACHE", str(cache))


@pytest.fixture(scope="session")
def clip_backbone():
    return tiny_clip()


@pytest.fixture(scope="session")
def hf_backbone(tmp_path_factory: pytest.TempPathFactory):
    return tiny_hf_clip(Path(tmp_path_factory.mktemp("tiny-bert")))
