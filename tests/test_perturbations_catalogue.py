"""The perturbation catalogue: character and word noise, severity levels, groups, the semantic
filter, and the `list` / `perturb` commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from anbench import noise_groups
from anbench.cli import app
from anbench.config import load_config
from anbench.perturbation import (
    apply,
    build_perturbation,
    contains_class_name,
    derive_rng,
    make_context,
    tokenize,
)
from anbench.perturbations.synonym import NameIndex
from anbench.registry import AnbenchError
from anbench.runner import make_plan

CHAR = ["keyboard", "ocr", "char-insert", "char-substitute", "char-swap", "char-delete"]
WORD = ["word-insert", "word-swap", "punctuation-insert"]
NEW = CHAR + WORD
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5]

# (sentence, its class name): long enough that every level makes a different number of edits
CORPUS = [
    ("a photo of a tabby cat with dark stripes sitting on a wooden fence.", "tabby cat"),
    ("a close-up photo of a trouser made of blue denim with two front pockets.", "trouser"),
    ("a small grey bird perched on a thin branch in the morning light.", "bird"),
    ("an old red pickup truck parked beside a barn in the countryside.", "pickup truck"),
    ("a plate of fresh pasta with tomato sauce and basil leaves on top.", "pasta"),
    ("a photo of the digit seven written in black ink on white paper.", "seven"),
    ("a brown leather ankle boot standing next to an open wooden door.", "ankle boot"),
    ("a bright yellow sunflower growing tall in a summer garden field.", "sunflower"),
]
CLASS_NAMES = ["tabby cat", "trouser", "bird", "pickup truck", "pasta", "seven", "ankle boot",
               "sunflower", "one", "two", "ten", "shirt", "bag", "coat", "dog", "car"]


def contexts(items: list[tuple[str, str]] = CORPUS) -> list[Any]:
    return [make_context(text, name, class_names=CLASS_NAMES) for text, name in items]


def run(name: str, severity: float, seed: int = 1, items: list[tuple[str, str]] = CORPUS,
        params: dict[str, Any] | None = None) -> list[str]:
    p = build_perturbation(name, params)
    return apply(p, [t for t, _ in items], contexts(items),
                 [f"item{i}" for i in range(len(items))], seed, severity)


def words(text: str) -> list[str]:
    return [t for t, _, _ in tokenize(text) if t[0].isalnum()]


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# --- registration, levels and groups --------------------------------------------------------

def test_registered_with_five_levels_and_a_level():
    for name in NEW:
        p = build_perturbation(name)
        assert p.severities == LEVELS and math.isinf(p.alpha)
        assert p.params.protect_class_names is True
        assert type(p).level == ("char" if name in CHAR else "word")
        assert type(p).modality == "text"


def test_groups_follow_the_declared_levels():
    table = noise_groups.groups()
    assert table["char"] == CHAR
    assert set(WORD + ["drop", "mask", "shuffle", "synonym"]) <= set(table["word"])
    assert "wsp" in table["sentence"]
    assert table["paper"] == ["drop", "mask", "shuffle", "synonym", "wsp", "paraphrase"]
    assert set(table["all"]) == set(table["text"]) | set(table["image"])
    assert set(table["text"]) >= set(NEW)


def test_expand_names_and_groups():
    expand = noise_groups.expand
    assert expand(["none"], "--noise") == [] and expand([], "--noise") == []
    assert expand(["char", "drop"], "--noise") == [*CHAR, "drop"]
    # a member shared by two groups is kept once, in first-seen order
    both = expand(["word", "text"], "--noise")
    assert len(both) == len(set(both)) and both[:len(noise_groups.groups()["word"])] == \
        noise_groups.groups()["word"]
    with pytest.raises(AnbenchError, match=r"unknown perturbation 'chars'.*char \(group\)"):
        expand(["chars"], "--noise")
    with pytest.raises(AnbenchError, match="twice"):
        expand(["char", "char"], "--eval-noise")
    with pytest.raises(AnbenchError, match="'none' cannot be combined"):
        expand(["none", "drop"], "--noise")


def test_plan_expands_groups_and_default_is_the_paper_set():
    config = load_config(None, ["run.train_noise=[paper]", "run.eval_noise=[char,word-swap]"])
    plan = make_plan(config)
    assert plan.train_noise == ["drop", "mask", "shuffle", "synonym", "wsp", "paraphrase"]
    assert plan.eval_noise == [*CHAR, "word-swap"]
    assert make_plan(load_config(None, [])).eval_noise == plan.train_noise  # bench.yaml: paper


class _ImageRegistry:
    """Another perturbation kind, as the image registry is: the groups span every kind."""

    class Blur:
        modality, level = "image", None

    class Entry:
        def __init__(self, name: str, obj: Any):
            self.name, self.obj, self.origin, self.description = name, obj, "builtin", "blur"

    def entries(self) -> list[Any]:
        return [self.Entry("blur", self.Blur)]

    def __contains__(self, name: str) -> bool:
        return name == "blur"


def test_a_second_kind_joins_all_and_gets_its_own_group(monkeypatch):
    # the text kind alone, then a stand-in for the image kind (anbench.image_perturbation)
    noise_groups.kinds()  # discovery done: the image kind has registered itself
    monkeypatch.setattr(noise_groups, "_KINDS", list(noise_groups._KINDS[:1]))
    assert noise_groups.expand(["image"], "--noise") == []  # a known group, empty so far
    noise_groups.register_kind("image", _ImageRegistry())
    table = noise_groups.groups()
    assert table["image"] == ["blur"] and table["all"][-1] == "blur"
    assert "blur" not in table["text"]
    assert noise_groups.expand(["text", "image"], "--noise")[-1] == "blur"
    assert any(line.startswith("image / other:") for line in noise_groups.listing())


# --- the contract: identity at 0, determinism, protection -----------------------------------

@pytest.mark.parametrize("name", NEW)
def test_severity_zero_is_identity(name):
    p = build_perturbation(name)
    for (text, _), ctx in zip(CORPUS, contexts(), strict=True):
        assert p.perturb(text, derive_rng(1, name, 0.0, "x"), 0.0, ctx) == text
    assert run(name, 0.0) == [t for t, _ in CORPUS]


@pytest.mark.parametrize("name", NEW)
def test_order_and_batch_independence(name):
    texts, ctxs = [t for t, _ in CORPUS], contexts()
    ids = [f"item{i}" for i in range(len(texts))]
    p = build_perturbation(name)
    for severity in (0.1, 0.5):
        full = apply(p, texts, ctxs, ids, 7, severity)
        rev = apply(p, texts[::-1], ctxs[::-1], ids[::-1], 7, severity)[::-1]
        single = [apply(p, [t], [c], [i], 7, severity)[0]
                  for t, c, i in zip(texts, ctxs, ids, strict=True)]
        assert full == rev == single
        assert full != apply(p, texts, ctxs, ids, 8, severity)  # the seed matters
        assert full != texts


_CHILD = textwrap.dedent("""
    import json, sys
    from anbench.perturbation import apply, build_perturbation, make_context
    items, names, class_names = json.loads(sys.argv[1])
    out = {}
    for name in names:
        p = build_perturbation(name)
        ctxs = [make_context(t, c, class_names=class_names) for t, c in items]
        out[name] = [apply(p, [t for t, _ in items], ctxs,
                           ["item%d" % i for i in range(len(items))], 1, s)
                     for s in p.severities]
    print(json.dumps(out))
""")


def same_outputs_in_another_process(names: list[str]) -> None:
    env = dict(os.environ, PYTHONHASHSEED="4321")  # another str-hash salt must not matter
    res = subprocess.run([sys.executable, "-c", _CHILD,
                          json.dumps([CORPUS, names, CLASS_NAMES])],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    child = json.loads(res.stdout.strip().splitlines()[-1])
    for name in names:
        assert child[name] == [run(name, s) for s in LEVELS], name


def test_same_outputs_in_another_process():
    same_outputs_in_another_process([n for n in NEW if n != "word-insert"])


@pytest.mark.slow  # loading WordNet again in the child takes ~20 s on 2 cores
def test_word_insert_same_outputs_in_another_process():
    same_outputs_in_another_process(["word-insert"])


@pytest.mark.parametrize("name", NEW)
def test_class_names_are_kept_and_never_written(name):
    index = NameIndex(CLASS_NAMES)
    for severity in LEVELS + [1.0]:
        for seed in range(4):
            for out, (text, cname) in zip(run(name, severity, seed), CORPUS, strict=True):
                assert contains_class_name(out, cname), (name, severity, out)
                assert not index.adds_a_name(index.counts(text), out), (name, severity, out)


def test_protection_can_be_switched_off():
    text, cname = "a photo of a trouser.", "trouser"
    outs = [run("char-delete", 1.0, seed, [(text, cname)], {"protect_class_names": False})[0]
            for seed in range(6)]
    assert any("trouser" not in out for out in outs)
    kept = [run("char-delete", 1.0, seed, [(text, cname)])[0] for seed in range(6)]
    assert all("trouser" in out for out in kept)


# --- rate and effect against severity -------------------------------------------------------

def mean_edit_rate(name: str, severity: float) -> float:
    rates = [levenshtein(out, text) / len(text)
             for seed in range(3)
             for out, (text, _) in zip(run(name, severity, seed), CORPUS, strict=True)]
    return float(np.mean(rates))


@pytest.mark.parametrize("name", NEW)
def test_effect_grows_with_severity(name):
    rates = [mean_edit_rate(name, s) for s in LEVELS]
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False)), rates
    assert rates[0] > 0


@pytest.mark.parametrize("name", ["keyboard", "ocr", "char-insert", "char-substitute",
                                  "char-delete"])
def test_char_noise_corrupts_ceil_s_n_words(name):
    min_chars = build_perturbation(name).params.min_chars
    for severity in LEVELS:
        for out, (text, cname) in zip(run(name, severity), CORPUS, strict=True):
            before, after = text.split(), out.split()  # char noise keeps the word count
            assert len(before) == len(after)
            n = len(words(text)) - len(words(cname)) + 1  # a class-name span is one word
            eligible = sum(len(w) >= min_chars for w in words(text)
                           if w.lower() not in cname.split())
            expected = min(math.ceil(round(severity * n, 9)), 10, eligible)
            changed = sum(a != b for a, b in zip(before, after, strict=True))
            assert changed == expected, (severity, text, out)


def test_char_substitute_changes_ceil_s_len_characters():
    for severity in LEVELS:
        for out, (text, _) in zip(run("char-substitute", severity), CORPUS, strict=True):
            for a, b in zip(text.split(), out.split(), strict=True):
                if a.endswith("."):  # the sentence's full stop is not part of the word
                    a, b = a[:-1], b[:-1]
                if a != b:
                    assert len(a) == len(b)
                    expected = min(max(1, math.ceil(round(severity * len(a), 9))), 10, len(a))
                    assert sum(x != y for x, y in zip(a, b, strict=True)) == expected


def test_char_share_fixes_the_share_of_characters():
    # Qiu et al.'s setting: severity = share of words only, 30% of each word's characters
    for severity in (0.05, 0.25):
        outs = run("char-substitute", severity, params={"char_share": 0.3})
        for out, (text, _) in zip(outs, CORPUS, strict=True):
            for a, b in zip(text.split(), out.split(), strict=True):
                if a.endswith("."):
                    a, b = a[:-1], b[:-1]
                if a != b:
                    assert sum(x != y for x, y in zip(a, b, strict=True)) == \
                        math.ceil(round(0.3 * len(a), 9))


def test_punctuation_insert_adds_ceil_s_n_marks():
    for severity in LEVELS:
        for out, (text, cname) in zip(run("punctuation-insert", severity), CORPUS, strict=True):
            n = len(words(text)) - len(words(cname)) + 1  # a class-name span is one word
            marks = sum(not t[0].isalnum() for t, _, _ in tokenize(out)) - \
                sum(not t[0].isalnum() for t, _, _ in tokenize(text))
            assert marks == min(math.ceil(round(severity * n, 9)), 10, n)
            assert words(out) == words(text)  # nothing else changes


def test_word_swap_moves_exactly_two_words_per_pair():
    items = [("a quick brown fox jumps over the lazy dog near my tent.", "dog")]
    text = items[0][0]
    for severity in LEVELS:
        out = run("word-swap", severity, items=items)[0]
        before, after = words(text), words(out)
        assert sorted(before) == sorted(after) and after[before.index("dog")] == "dog"
        n, movable = len(before), len(before) - 1
        k = min(math.ceil(round(severity * n, 9)), 10, movable // 2)
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 2 * k


def test_word_insert_keeps_the_sentence_and_adds_synonyms():
    for severity in LEVELS:
        for out, (text, _) in zip(run("word-insert", severity), CORPUS, strict=True):
            added = len(words(out)) - len(words(text))
            assert added >= math.ceil(round(severity * len(words(text)), 9)) - 1 or added > 0
            # the original words keep their order: the output contains them as a subsequence
            it = iter(words(out))
            assert all(w in it for w in words(text))


# --- hostile input --------------------------------------------------------------------------

@pytest.mark.parametrize("params", [{"severity": 1.5}, {"severity": -0.1},
                                    {"char_share": 0}, {"char_share": 2},
                                    {"max_words": 0}, {"nope": 1},
                                    {"semantic_filter": {"min_cos": 2}},
                                    {"semantic_filter": {"retries": -1}},
                                    {"semantic_filter": {"on_reject": "maybe"}}])
def test_bad_parameters_fail_with_one_line(params):
    with pytest.raises(AnbenchError) as err:
        build_perturbation("keyboard", params)
    assert "\n" not in str(err.value) and "keyboard" in str(err.value)


@pytest.mark.parametrize("name", NEW)
def test_odd_text(name):
    p = build_perturbation(name)
    huge = " ".join(["extraordinary"] * 5000) + " cat."
    for text in ["", "   ", "\x00\x01\x02", "!!! ???", "cat", "cat.", huge]:
        ctx = make_context(text, "cat", class_names=CLASS_NAMES)
        out = apply(p, [text], [ctx], ["x"], 1, 0.5)[0]
        assert isinstance(out, str)
        if "cat" in text:
            assert contains_class_name(out, "cat")
    out = apply(p, [huge], [make_context(huge, "cat")], ["x"], 1, 1.0)[0]
    changed = sum(a != b for a, b in zip(huge.split(), out.split(), strict=False))
    if name in CHAR:  # at most max_words (10) words are corrupted, however long the text
        assert 0 < changed <= 10


# --- the semantic filter --------------------------------------------------------------------

@pytest.fixture
def one_thread():
    # One sentence at a time through MiniLM: on 2 busy cores a second thread only waits.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_minilm_embedding_is_a_sentence_similarity(one_thread):
    from anbench.semantic_filter import cosine, embed

    a = "a photo of a dog running on the beach."
    assert abs(float(np.linalg.norm(embed(a))) - 1) < 1e-9
    assert cosine(a, a) == 1.0
    assert cosine(a, "a picture of a dog running on the sand.") > \
        cosine(a, "a spreadsheet of quarterly tax figures.") + 0.3


def test_filter_keeps_only_close_sentences_and_records_its_work(one_thread):
    from anbench.semantic_filter import cosine

    threshold = 0.85
    plain = build_perturbation("keyboard")
    p = build_perturbation("keyboard", {"semantic_filter": {"min_cos": threshold,
                                                            "retries": 5}})
    texts, ctxs = [t for t, _ in CORPUS], contexts()
    ids = [f"item{i}" for i in range(len(texts))]
    out = apply(p, texts, ctxs, ids, 1, 0.1)
    stats = p.filter_stats(0.1)
    assert stats.sentences == len(texts) and stats.retries > 0
    assert 0 < stats.rejected < len(texts)  # some kept (after retries), some not
    for text, noisy in zip(texts, out, strict=True):
        assert noisy == text or cosine(text, noisy) >= threshold
    assert sum(noisy == text for noisy, text in zip(out, texts, strict=True)) == \
        stats.rejected  # on_reject: clean
    # deterministic and order-independent, as without the filter
    again = build_perturbation("keyboard", p.params.model_dump())
    assert apply(again, texts[::-1], ctxs[::-1], ids[::-1], 1, 0.1)[::-1] == out
    # the first draw of the filtered run is the unfiltered output
    first = apply(plain, texts, ctxs, ids, 1, 0.1)
    for a, b, text in zip(first, out, texts, strict=True):
        if cosine(text, a) >= threshold:
            assert a == b
    # recorded in the cell's meta (report), not in the description (fingerprint)
    report = p.report(1, 0.1)
    assert report["semantic_filter"] == stats.as_dict()
    assert "semantic_filter" not in p.describe(1, 0.1)
    assert p.describe(1, 0.1)["params"]["semantic_filter"]["min_cos"] == threshold
    assert "semantic_filter" not in plain.describe(1, 0.1)["params"]  # unchanged when off


def test_filter_bounds_and_fallbacks(one_thread):
    text, ctx = CORPUS[0][0], contexts()[:1]
    strict = build_perturbation("char-insert", {"semantic_filter": {"min_cos": 1.0,
                                                                    "retries": 3}})
    assert apply(strict, [text], ctx, ["x"], 1, 0.5) == [text]
    assert strict.filter_stats(0.5).as_dict() == {"sentences": 1, "retries": 3, "rejected": 1}
    best = build_perturbation("char-insert", {"semantic_filter": {
        "min_cos": 1.0, "retries": 3, "on_reject": "best"}})
    assert apply(best, [text], ctx, ["x"], 1, 0.5) != [text]
    lax = build_perturbation("char-insert", {"semantic_filter": {"min_cos": -1.0}})
    plain = build_perturbation("char-insert")
    assert apply(lax, [text], ctx, ["x"], 1, 0.5) == apply(plain, [text], ctx, ["x"], 1, 0.5)
    assert lax.filter_stats(0.5).retries == 0


# --- command line ---------------------------------------------------------------------------

def test_perturb_shows_every_text_perturbation_at_each_severity():
    res = CliRunner().invoke(app, ["perturb", "a photo of a tabby cat with dark stripes.",
                                   "--noise", "text", "--seed", "1"])
    assert res.exit_code == 0, res.output
    shown = [(line.split()[0], float(line.split()[1].removeprefix("severity=")))
             for line in res.output.splitlines()]
    expected = [(name, s) for name in noise_groups.groups()["text"]
                for s in build_perturbation(name).severities]
    assert shown == expected
    assert all("cat" in line for line in res.output.splitlines())


def test_list_perturbations_is_grouped():
    res = CliRunner().invoke(app, ["list", "perturbations"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    char = lines.index("text / char:")
    assert [line.split()[0] for line in lines[char + 1:char + 7]] == CHAR
    assert "text / word:" in lines and "text / sentence:" in lines
    assert any(line.split()[:1] == ["paper"] for line in lines)
    assert "not provided:" in lines and "back-translation" in res.output
