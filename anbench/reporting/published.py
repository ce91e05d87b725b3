"""Published base-to-new numbers of the CoOp family (ViT-B/16, OpenAI weights), from each method's
own README (`anbench/resources/published/vit-b-16-base-to-new.json` names the source of each
row), so reports can show them beside measured ones."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

PUBLISHED_BACKBONES = frozenset({"vit-b-16"})  # the backbones the published numbers are for


@lru_cache(maxsize=1)
def published_base_to_new() -> dict[str, Any]:
    """{"setting": str, "sources": {name: url}, "rows": {method: {"base", "new", "hm",
    "source"}}}."""
    path = resources.files("anbench") / "resources" / "published" / "vit-b-16-base-to-new.json"
    return json.loads(path.read_text(encoding="utf-8"))
