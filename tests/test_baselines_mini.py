"""On the mini backbone, each CoOp-family baseline beats zero-shot base accuracy on both embedded
datasets in 3 of 3 seeds (bench/methods_mini.py prints the full table)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "methods_mini.py"
BASELINES = ["cocoop", "kgcoop", "maple", "promptsrc"]


@pytest.mark.slow
def test_baselines_beat_zeroshot_on_mini_in_every_seed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
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
    code = module.main(["--threads", "1", "--test-limit", "1000", "--seeds", "1,2,3",
                        "--methods", ",".join(["zeroshot", *BASELINES]), "--json", str(out)])
    rows = json.loads(out.read_text())
    trained = [r for r in rows if r["method"] in BASELINES]
    assert len(trained) == len(BASELINES) * 2 * 3  # methods x datasets x seeds
    assert code == 0, [r for r in trained if r["beats_zeroshot"] is False]
