"""The README's example plugin (examples/plugins/typo_noise.py) loads and works."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anbench.perturbation import (  # noqa: E402
    apply,
    build_perturbation,
    contains_class_name,
    make_context,
)
from anbench.registry import PERTURBATIONS, load_plugin  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "typo_noise.py"


def test_example_plugin_registers_and_runs():
    load_plugin(str(EXAMPLE))
    assert "typo" in PERTURBATIONS.names()
    entry = next(e for e in PERTURBATIONS.entries() if e.name == "typo")
    assert entry.origin == "plugin" and entry.description

    p = build_perturbation("typo", {"severity": [1.0], "min_length": 4})
    text = "a photo of a tabby cat with dark stripes."
    ctx = make_context(text, "tabby cat")
    out = apply(p, [text], [ctx], ["x"], 1, 1.0)[0]
    assert out != text and contains_class_name(out, "tabby cat")
    for before, after in zip(text.split(), out.split(), strict=True):
        if len(before) < 4:  # min_length: short words are left alone
            assert before == after
    assert sorted(out) == sorted(text)  # letters only swapped
    assert apply(p, [text], [ctx], ["x"], 1, 0.0) == [text]
    assert apply(p, [text], [ctx], ["x"], 1, 1.0)[0] == out  # deterministic
    desc = p.describe(seed=1)
    assert desc["name"] == "typo" and desc["params"]["min_length"] == 4
