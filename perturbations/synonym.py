"""`synonym`: replace words with WordNet synonyms, via nlpaug's `SynonymAug(aug_src='wordnet')`.

nlpaug draws with Python's and numpy's global random state (and its helpers reseed them), so
its sampling is not used: nlpaug supplies the POS tags (`nltk.pos_tag`), the WordNet candidates
(its `WordNet.predict` per POS, as `SynonymAug.substitute` does) and the capitalisation rule,
and every choice is drawn from our rng. Outputs are therefore WordNet lemmas of the replaced
words, deterministic, and no global random state is read or written.

Two guards nlpaug lacks. Stop words (scikit-learn's `ENGLISH_STOP_WORDS`; NLTK's list is not
part of the offline data) are never replaced, and no synonym made only of stop words is written:
WordNet knows "or" as Oregon and "in" as indium. And no class name of the label space
(`TextContext.class_names`) is ever written: "purse" -> "bag" would put another class's name
into the sentence.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field

from anbench.nltk_data import ensure_nltk_data
from anbench.perturbation import (
    Perturbation,
    PerturbationParams,
    TextContext,
    split_sentence,
    tokenize,
)
from anbench.registry import PERTURBATIONS

_AUGMENTER: Any = None


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (lower case), imported on first use."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def is_stop_phrase(text: str) -> bool:
    """True when every word of `text` is a stop word ("or", "along with")."""
    words = [t.lower() for t, _, _ in tokenize(text) if t[0].isalnum() or t[0] == "_"]
    return bool(words) and all(w in stop_words() for w in words)


class NameIndex:
    """Counts occurrences of class names (as lower-case token sequences) in a text."""

    def __init__(self, names: Sequence[str]):
        self.names = {tuple(t.lower() for t, _, _ in tokenize(n)) for n in names}
        self.names.discard(())
        self.longest = max((len(n) for n in self.names), default=0)

    def counts(self, text: str) -> Counter[tuple[str, ...]]:
        toks = [t.lower() for t, _, _ in tokenize(text)]
        found: Counter[tuple[str, ...]] = Counter()
        for i in range(len(toks)):
            for n in range(1, min(self.longest, len(toks) - i) + 1):
                gram = tuple(toks[i:i + n])
                if gram in self.names:
                    found[gram] += 1
        return found

    def adds_a_name(self, before: Counter[tuple[str, ...]], text: str) -> bool:
        """True if `text` holds some class name more often than `before` counted."""
        return any(count > before[name] for name, count in self.counts(text).items())


def augmenter() -> Any:
    """The shared nlpaug SynonymAug (built once, after the offline NLTK data is in place)."""
    global _AUGMENTER
    if _AUGMENTER is None:
        ensure_nltk_data()  # nlpaug would otherwise try nltk.download, which fails offline
        import nlpaug.augmenter.word as naw

        _AUGMENTER = naw.SynonymAug(aug_src="wordnet", lang="eng")
    return _AUGMENTER


def candidates(word: str, tag: str) -> list[str]:
    """nlpaug's synonym candidates for `word` with Penn tag `tag`, normalised as nlpaug does
    (underscores and hyphens to spaces, lower case); duplicates kept, as nlpaug samples them."""
    from nlpaug.util import PartOfSpeech

    aug = augmenter()
    poses = PartOfSpeech.constituent2pos(tag)
    raw: list[str] = []
    if not poses:
        raw.extend(aug.model.predict(word))
    else:
        for pos in poses:
            raw.extend(aug.model.predict(word, pos=pos))
    out = []
    for cand in raw:
        norm = cand.replace("_", " ").replace("-", " ").lower()
        if cand.lower() != word.lower() and norm != word.lower():
            out.append(norm)
    return out


class SynonymParams(PerturbationParams):
    max_severity = 1.0

    #: share of the sentence's words replaced: ceil(p * words), as nlpaug's aug_p
    severity: list[float] = Field(default_factory=lambda: [0.3])
    alpha: float = math.inf
    #: nlpaug's aug_max: at most this many words replaced per sentence (None: no cap)
    max_words: int | None = Field(default=10, ge=1)


@PERTURBATIONS.register("synonym",
                        description="replace words with WordNet synonyms (nlpaug SynonymAug)")
class Synonym(Perturbation):
    """Replace ceil(p * words) words (at most `max_words`) with a WordNet synonym each.

    Candidate words are non-protected, not determiners (nlpaug skips DT), not stop words, and
    have at least one synonym that is neither a stop word nor contains a class name of
    `ctx.class_names` (or `ctx.class_name`); the words and their synonyms are drawn uniformly
    with our rng. A drawn synonym that would still make a class name appear (joined with its
    neighbours) is dropped and another drawn; a word left with none stays as it is.
    """

    Params = SynonymParams
    level = "word"
    version = "2"  # 2: stop words and class names are never written

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        return self.perturb_with_log(text, rng, severity, ctx)[0]

    def perturb_with_log(self, text: str, rng: np.random.Generator, severity: float,
                         ctx: TextContext) -> tuple[str, list[tuple[str, str]]]:
        """The noisy text and its (original word, synonym) replacements, in sentence order."""
        if severity <= 0:
            return text, []
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        n_words = sum(u.is_word for u in sent.units)
        # round first: 0.3 * 10 is 3.0000000000000004, which ceil would make 4
        k = math.ceil(round(severity * n_words, 9))
        if self.params.max_words is not None:
            k = min(k, self.params.max_words)
        if k == 0:
            return text, []
        tags = augmenter().model.pos_tag([t for t, _, _ in tokenize(text)])
        names = NameIndex([*ctx.class_names, ctx.class_name])
        eligible: list[tuple[int, list[str]]] = []
        for i, u in enumerate(sent.units):
            if not u.is_word or u.protected or is_stop_phrase(u.text):
                continue
            tag = tags[u.tokens[0]][1]
            if tag == "DT":
                continue
            cands = [c for c in candidates(u.text, tag)
                     if not is_stop_phrase(c) and not names.counts(c)]
            if cands:
                eligible.append((i, cands))
        k = min(k, len(eligible))
        if k == 0:
            return text, []
        aug = augmenter()
        before = names.counts(text)
        units = list(sent.units)
        log = []
        for j in sorted(rng.choice(len(eligible), size=k, replace=False).tolist()):
            i, cands = eligible[j]
            cands = list(cands)
            while cands:
                new = aug.align_capitalization(units[i].text,
                                               cands.pop(int(rng.integers(len(cands)))))
                trial = [*units[:i], replace(units[i], text=new), *units[i + 1:]]
                if not names.adds_a_name(before, sent.render(trial)):
                    log.append((units[i].text, new))
                    units = trial
                    break
        return sent.render(units), log
