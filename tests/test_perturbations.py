"""The perturbation contract and the five built-ins."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from anbench.perturbation import (  # noqa: E402
    DEFAULT_MASK_TOKEN,
    GENERIC_TEMPLATES,
    TextContext,
    apply,
    backbone_mask_token,
    build_perturbation,
    contains_class_name,
    derive_rng,
    guess_class_name,
    make_context,
    mask_token_for,
    mix_features,
    preview,
    tokenize,
)
from anbench.registry import PERTURBATIONS, AnbenchError, UnknownNameError  # noqa: E402

BUILTINS = ["drop", "mask", "shuffle", "synonym", "wsp"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a sketch of the {}.", "art of a {}."]
CLASSES = {
    "tabby cat": ["a tabby cat with dark stripes on its fur.", "a tabby cat sleeping on a sofa."],
    "golden retriever": ["a golden retriever, a friendly dog with long golden fur."],
    "sports car": [],
}
SENTENCES = [
    ("a photo of a tabby cat with dark stripes.", "tabby cat"),
    ("A small tabby cat sits on the old wooden chair, looking at the bright window.", "tabby cat"),
    ("a golden retriever running across the green park.", "golden retriever"),
    ("the red sports car parked near a quiet street.", "sports car"),
    ("a photo of a sports car.", "sports car"),
]


def contexts_for(items: list[tuple[str, str]], mask_token: str | None = None) -> list[TextContext]:
    names = list(CLASSES)
    return [make_context(text, cname, names.index(cname), CLASSES[cname], TEMPLATES, mask_token)
            for text, cname in items]


def words(text: str) -> list[str]:
    return [t for t, _, _ in tokenize(text) if t[0].isalnum()]


def test_builtins_registered_with_descriptions():
    names = PERTURBATIONS.names()
    for name in BUILTINS:
        assert name in names
    for entry in PERTURBATIONS.entries():
        if entry.name in BUILTINS:
            assert entry.description and entry.origin == "builtin"


def test_defaults_match_method():
    inf = math.inf
    expected = {"drop": ([0.3], inf), "mask": ([0.3], inf), "shuffle": ([1.0], inf),
                "synonym": ([0.3], inf), "wsp": ([1.0], 0.001)}
    for name, (severity, alpha) in expected.items():
        p = build_perturbation(name)
        assert p.params.severity == severity and p.alpha == alpha
        assert p.params.protect_class_names is True


def test_derive_rng_stable_and_distinct():
    a = derive_rng(1, "drop", 0.3, "pets/3/0").random(4)
    assert np.array_equal(a, derive_rng(1, "drop", 0.1 + 0.2, "pets/3/0").random(4))
    for other in [(2, "drop", 0.3, "pets/3/0"), (1, "mask", 0.3, "pets/3/0"),
                  (1, "drop", 0.5, "pets/3/0"), (1, "drop", 0.3, "pets/3/1")]:
        assert not np.array_equal(a, derive_rng(*other).random(4))
    assert np.array_equal(derive_rng(1, "shuffle", 1, "x").random(2),
                          derive_rng(1, "shuffle", 1.0, "x").random(2))


@pytest.mark.parametrize("name", BUILTINS)
def test_order_and_batch_independence(name):
    p = build_perturbation(name)
    ctxs = contexts_for(SENTENCES)
    texts = [t for t, _ in SENTENCES]
    ids = [f"item{i}" for i in range(len(texts))]
    severity = p.severities[0]
    full = apply(p, texts, ctxs, ids, seed=7, severity=severity)
    rev = apply(p, texts[::-1], ctxs[::-1], ids[::-1], seed=7, severity=severity)[::-1]
    single = [apply(p, [t], [c], [i], seed=7, severity=severity)[0]
              for t, c, i in zip(texts, ctxs, ids, strict=True)]
    assert full == rev == single
    assert full == apply(build_perturbation(name), texts, ctxs, ids, 7, severity)
    other_seed = [apply(p, texts, ctxs, ids, seed=s, severity=severity) for s in range(8, 14)]
    assert any(o != full for o in other_seed)  # the seed matters


@pytest.mark.parametrize("name", BUILTINS)
def test_severity_zero_is_identity(name):
    p = build_perturbation(name)
    for (text, _), ctx in zip(SENTENCES, contexts_for(SENTENCES), strict=True):
        for seed in range(5):
            assert p.perturb(text, derive_rng(seed, name, 0.0, "x"), 0.0, ctx) == text
        assert apply(p, [text], [ctx], ["x"], 3, 0.0) == [text]


@pytest.mark.parametrize("name", BUILTINS)
def test_class_names_survive(name):
    p = build_perturbation(name)
    ctxs = contexts_for(SENTENCES)
    for severity in [0.3, 0.7, 1.0]:
        for seed in range(12):
            out = apply(p, [t for t, _ in SENTENCES], ctxs,
                        [f"s{i}" for i in range(len(SENTENCES))], seed, severity)
            for o, (_, cname) in zip(out, SENTENCES, strict=True):
                assert contains_class_name(o, cname), (name, severity, seed, o)


def test_protection_can_be_switched_off():
    text, cname = SENTENCES[0]
    ctx = contexts_for([SENTENCES[0]])[0]
    drop = build_perturbation("drop", {"protect_class_names": False})
    assert apply(drop, [text], [ctx], ["x"], 1, 1.0) == ["."]
    mask = build_perturbation("mask", {"protect_class_names": False})
    assert not contains_class_name(apply(mask, [text], [ctx], ["x"], 1, 1.0)[0], cname)


def test_drop_and_mask_behaviour():
    text = "a photo of a tabby cat, with dark stripes."
    ctx = make_context(text, "tabby cat")
    assert apply(build_perturbation("drop"), [text], [ctx], ["x"], 1, 1.0) == ["tabby cat,."]
    masked = apply(build_perturbation("mask"), [text], [ctx], ["x"], 1, 1.0)[0]
    m = DEFAULT_MASK_TOKEN
    assert masked == f"{m} {m} {m} {m} tabby cat, {m} {m} {m}."
    # about p of the words go at p = 0.3
    drop = build_perturbation("drop")
    long = " ".join(f"w{i}" for i in range(2000))
    kept = len(apply(drop, [long], [make_context(long, "zzz")], ["x"], 1, 0.3)[0].split())
    assert abs(kept / 2000 - 0.7) < 0.05


def test_mask_uses_context_mask_token():
    text, cname = SENTENCES[1]
    for token in ["<unk>", "[MASK]", "<mask>"]:
        ctx = make_context(text, cname, mask_token=token)
        out = apply(build_perturbation("mask"), [text], [ctx], ["x"], 1, 1.0)[0]
        assert cname in out
        ws = out.replace(cname, "").replace(",", " ").replace(".", " ").split()
        assert len(ws) == len(words(text)) - 2 and set(ws) == {token}, out
    assert make_context(text, cname).mask_token == DEFAULT_MASK_TOKEN == "<mask>"


def _bert_tokenizer(directory):
    """open_clip's wrapper around a real Hugging Face WordPiece tokenizer (as mini's MiniLM)."""
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertTokenizer

    from tests.tiny_models import WORDS

    directory.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    return HFTokenizer(str(directory), context_length=20)


def test_mask_token_is_the_runs(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    from anbench.backbones.adapter import BackboneAdapter
    from tests.tiny_models import tiny_clip

    assert mask_token_for(_bert_tokenizer(tmp_path / "bert")) == "[MASK]"
    assert mask_token_for(SimpleTokenizer(context_length=20)) == "<mask>"  # CLIP's BPE: none
    assert mask_token_for(object()) == DEFAULT_MASK_TOKEN
    clip = tiny_clip()  # the adapter (what a run masks with) agrees
    assert BackboneAdapter(clip).mask_token == mask_token_for(clip.tokenizer)


def test_preview_masks_with_the_backbones_token(tmp_path):
    bert = _bert_tokenizer(tmp_path / "bert")

    class WithTokenizer:
        def tokenizer(self):
            return bert

    class BrokenTokenizer:
        def tokenizer(self):
            raise OSError("tokenizer files missing")

    assert backbone_mask_token(WithTokenizer()) == "[MASK]"
    assert backbone_mask_token(BrokenTokenizer()) == DEFAULT_MASK_TOKEN
    assert backbone_mask_token(object()) == DEFAULT_MASK_TOKEN
    text = "a photo of a tabby cat with dark stripes."
    rows = preview(text, ["mask"], seed=1, mask_token=backbone_mask_token(WithTokenizer()))
    assert all("[MASK]" in out for _, _, out in rows)
    assert "<mask>" in preview(text, ["mask"], seed=1)[0][2]


def test_builtin_backbones_give_their_runs_mask_token_without_weights():
    from anbench.registry import BACKBONES

    # mini's MiniLM WordPiece has [MASK]; CLIP's BPE has no mask token (the run's fallback)
    assert backbone_mask_token(BACKBONES.get("mini")()) == "[MASK]"
    assert backbone_mask_token(BACKBONES.get("vit-b-16")()) == "<mask>"


def test_shuffle_permutes_words():
    text = "one two three four five six seven eight nine ten tabby cat."
    ctx = make_context(text, "tabby cat")
    p = build_perturbation("shuffle")
    for seed in range(10):
        out = apply(p, [text], [ctx], ["x"], seed, 1.0)[0]
        assert sorted(words(out)) == sorted(words(text)) and out.endswith("tabby cat.")
        moved = [a != b for a, b in zip(words(out)[:10], words(text)[:10], strict=True)]
        assert all(moved)  # severity 1: every movable word changes place
        half = apply(p, [text], [ctx], ["x"], seed, 0.5)[0]
        assert sum(a != b for a, b in zip(words(half), words(text), strict=True)) == 5


def test_wsp_never_crosses_classes():
    items = [(desc, c) for c, descs in CLASSES.items() for desc in descs]
    items += [(t.format(c), c) for c in CLASSES for t in TEMPLATES[:1]]
    ctxs = contexts_for(items)
    own = {c: set(CLASSES[c]) | {t.format(c) for t in TEMPLATES} for c in CLASSES}
    p = build_perturbation("wsp")
    seen = set()
    for seed in range(40):
        outs = apply(p, [t for t, _ in items], ctxs, [str(i) for i in range(len(items))],
                     seed, 1.0)
        for out, (text, cname) in zip(outs, items, strict=True):
            assert out in own[cname] and out != text  # replaced at severity 1, same class only
            seen.add(out)
    assert len(seen) > len(CLASSES) * 2  # it does draw among several alternatives
    # no alternative: identity
    lonely = TextContext("zebra", 0, [])
    assert apply(p, ["a zebra."], [lonely], ["x"], 1, 1.0) == ["a zebra."]
    # alternatives that lose the class name are not drawn while class names are protected
    ctx = TextContext("zebra", 0, ["an animal with stripes."])
    assert apply(p, ["a zebra."], [ctx], ["x"], 1, 1.0) == ["a zebra."]
    loose = build_perturbation("wsp", {"protect_class_names": False})
    assert apply(loose, ["a zebra."], [ctx], ["x"], 1, 1.0) == ["an animal with stripes."]


def test_wsp_severity_is_replacement_probability():
    text, cname = SENTENCES[0]
    ctx = contexts_for([SENTENCES[0]])[0]
    p = build_perturbation("wsp")
    outs = apply(p, [text] * 1000, [ctx] * 1000, [str(i) for i in range(1000)], 1, 0.25)
    assert abs(sum(o != text for o in outs) / 1000 - 0.25) < 0.05


def test_make_context_alternatives():
    ctx = make_context("a photo of a cat.", "cat", 4, ["a cat on a mat.", "a photo of a cat."],
                       ["a photo of a {}.", "a drawing of a {}."], "<unk>")
    assert ctx.alternatives == ["a cat on a mat.", "a drawing of a cat."]
    assert (ctx.class_name, ctx.class_index, ctx.mask_token) == ("cat", 4, "<unk>")


def test_mix_features_matches_hand_computation():
    clean = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    noisy = torch.tensor([[0.0, 2.0], [0.0, -5.0]])
    alpha = 0.5
    # row 0: n(clean) = (0.6, 0.8), n(noisy) = (0, 1) -> (0.6, 1.3) / sqrt(2.05)
    # row 1: (1, 0) + 0.5 * (0, -1) = (1, -0.5) -> / sqrt(1.25)
    expected = torch.tensor([[0.6 / math.sqrt(2.05), 1.3 / math.sqrt(2.05)],
                             [1 / math.sqrt(1.25), -0.5 / math.sqrt(1.25)]])
    assert torch.allclose(mix_features(clean, noisy, alpha), expected, atol=1e-6)
    assert torch.allclose(mix_features(clean, noisy, math.inf), torch.tensor([[0.0, 1], [0, -1]]))
    weak = mix_features(clean, noisy, 0.001)
    assert torch.allclose(weak.norm(dim=-1), torch.ones(2))
    assert (weak * torch.nn.functional.normalize(clean, dim=-1)).sum(-1).min() > 0.9999
    with pytest.raises(ValueError):
        mix_features(clean, noisy, -1.0)


def test_params_validation():
    with pytest.raises(AnbenchError, match="unknown parameter 'sevrity'"):
        build_perturbation("drop", {"sevrity": [0.1]})
    with pytest.raises(AnbenchError, match="severity"):
        build_perturbation("mask", {"severity": [1.5]})
    with pytest.raises(AnbenchError, match="alpha"):
        build_perturbation("wsp", {"alpha": 0})
    with pytest.raises(UnknownNameError, match="known: .*drop"):
        build_perturbation("no-such-noise")
    cfg = yaml.safe_load("severity: 0.5\nalpha: .inf\n")
    p = build_perturbation("wsp", cfg)
    assert p.params.severity == [0.5] and math.isinf(p.alpha)
    for spelled in ["inf", ".inf", "Infinity", float("inf")]:
        assert math.isinf(build_perturbation("drop", {"alpha": spelled}).alpha)
    sweep = build_perturbation("drop", {"severity": [0.1, 0.2, 0.4], "alpha": 0.01})
    assert sweep.severities == [0.1, 0.2, 0.4] and sweep.alpha == 0.01


def test_describe_is_frozen_json():
    p = build_perturbation("drop", {"severity": [0.1, 0.5]})
    desc = p.describe(seed=3)
    again = json.loads(json.dumps(desc))
    assert again == desc
    assert desc["name"] == "drop" and desc["seed"] == 3 and desc["version"]
    assert desc["params"] == {"severity": [0.1, 0.5], "alpha": "inf", "protect_class_names": True}
    rebuilt = build_perturbation(desc["name"], desc["params"])
    assert rebuilt.params == p.params
    assert p.describe(3, severity=0.5)["severity"] == 0.5
    assert p.fingerprint(3) == rebuilt.fingerprint(3) != p.fingerprint(4)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        p.params.alpha = 1.0


def test_apply_checks_lengths():
    with pytest.raises(ValueError):
        apply(build_perturbation("drop"), ["a", "b"], contexts_for(SENTENCES[:1]), ["x"], 1, 0.3)


def test_guess_class_name():
    assert guess_class_name("a photo of a tabby cat with dark stripes.") == "tabby cat"
    assert guess_class_name("a photo of the golden retriever.") == "golden retriever"
    assert guess_class_name("stripes") == "stripes"


def test_preview_lists_every_perturbation_and_severity():
    text = "a photo of a tabby cat with dark stripes."
    rows = preview(text, seed=1)
    names = [r[0] for r in rows]
    for name in BUILTINS:
        assert name in names
    assert all(isinstance(r[1], float) and isinstance(r[2], str) for r in rows)
    assert rows == preview(text, seed=1)
    wsp = dict((r[0], r[2]) for r in rows)["wsp"]
    assert wsp in {t.format("tabby cat") for t in GENERIC_TEMPLATES}
    mine = preview(text, ["wsp", "mask"], seed=1, class_name="cat", mask_token="<unk>")
    assert [r[0] for r in mine] == ["wsp", "mask"] and "cat" in mine[0][2]


def test_no_global_random_state_is_touched():
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()
    ctxs = contexts_for(SENTENCES)
    for name in BUILTINS:
        apply(build_perturbation(name), [t for t, _ in SENTENCES], ctxs,
              [str(i) for i in range(len(SENTENCES))], 1, 0.5)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]


_CHILD = textwrap.dedent("""
    import json, sys
    from anbench.perturbation import apply, build_perturbation, make_context, preview
    from anbench.registry import PERTURBATIONS, load_plugin
    items = json.loads(sys.argv[1])
    out = {}
    for name in %r:
        p = build_perturbation(name)
        ctxs = [make_context(t, c, 0, [], %r) for t, c in items]
        out[name] = apply(p, [t for t, _ in items], ctxs,
                          ["item%%d" %% i for i in range(len(items))], 7, 0.5)
    load_plugin(sys.argv[2])
    out["names"] = PERTURBATIONS.names()
    out["preview"] = preview("a photo of a tabby cat.", ["outside"], seed=1)
    print(json.dumps(out))
""") % (BUILTINS, TEMPLATES)

_OUTSIDE_PLUGIN = textwrap.dedent('''
    from anbench.perturbation import Perturbation
    from anbench.registry import PERTURBATIONS

    @PERTURBATIONS.register("outside", description="upper-case the sentence")
    class Outside(Perturbation):
        def perturb(self, text, rng, severity, ctx):
            return text.upper()
''')


def test_same_outputs_in_another_process(tmp_path):
    plugin = tmp_path / "outside_noise.py"  # a plugin file outside the repository
    plugin.write_text(_OUTSIDE_PLUGIN)
    env = dict(os.environ, PYTHONHASHSEED="12345")  # a different str-hash salt must not matter
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(SENTENCES), str(plugin)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    child = json.loads(res.stdout.strip().splitlines()[-1])
    for name in BUILTINS:
        p = build_perturbation(name)
        ctxs = [make_context(t, c, 0, [], TEMPLATES) for t, c in SENTENCES]
        mine = apply(p, [t for t, _ in SENTENCES], ctxs,
                     [f"item{i}" for i in range(len(SENTENCES))], 7, 0.5)
        assert child[name] == mine, name
    assert "outside" in child["names"] and set(BUILTINS) <= set(child["names"])
    assert child["preview"] == [["outside", 1.0, "A PHOTO OF A TABBY CAT."]]
