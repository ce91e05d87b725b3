"""On the mini backbone, every trained method beats zero-shot base accuracy on both embedded
datasets (the check behind the mini defaults; bench/methods_mini.py prints the full table)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "methods_mini.py"


@pytest.mark.slow
def test_trained_methods_beat_zeroshot_on_mini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from anbench.backbones.loading import backbone_source, config_cache_dir
    from anbench.config import load_config

    monkeypatch.delenv("ANBENCH_CACHE")  # use the real cache: the mini weights live there
    config = load_config()
    ok, detail = backbone_source(config, "mini").status(config_cache_dir(config))
    if not ok:
        pytest.skip(f"mini backbone not built: {detail}")
    spec = importlib.util.spec_from_file_location("methods_mini", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    code = module.main(["--threads", "1", "--test-limit", "1000", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {r["method"] for r in rows} >= {"zeroshot", "dapt", "anprompt"}
    assert code == 0, [r for r in rows if r["beats_zeroshot"] is False]
