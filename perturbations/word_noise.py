"""Word-level noise: `word-insert`, `word-swap` (EDA's random insertion and random swap, Wei and
Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification") and `punctuation-insert` (AEDA, Karimi et al. 2021, "AEDA: An Easier Data
Augmentation Technique for Text Classification"), the word perturbations of Qiu et al.,
"Benchmarking robustness of multimodal image-text models under distribution shift", besides
synonym replacement and deletion (`synonym`, `drop`).

Severity s makes ceil(s * n) edits in a sentence of n words (EDA: max(1, int(s * n)); AEDA and
Qiu et al.: a random count up to s * n + 1). A deterministic, rounded-up count keeps the five
levels distinct on short class prompts. Class-name spans are never split, moved or altered, and
no inserted word may make a class name of the label space appear.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from anbench.perturbation import (
    Perturbation,
    PerturbationParams,
    TextContext,
    Unit,
    split_sentence,
    tokenize,
)
from anbench.perturbations.char_noise import LEVELS, share_count
from anbench.registry import PERTURBATIONS

#: AEDA's punctuation marks.
PUNCTUATION = (".", ",", "!", "?", ";", ":")


class WordNoiseParams(PerturbationParams):
    max_severity = 1.0

    #: edits per word of the sentence: ceil(s * words); five graded levels
    severity: list[float] = Field(default_factory=lambda: list(LEVELS))
    alpha: float = math.inf
    #: at most this many edits per sentence
    max_edits: int = Field(default=10, ge=1)


class WordNoise(Perturbation):
    Params = WordNoiseParams
    level: ClassVar[str | None] = "word"

    def edits(self, severity: float, n_words: int) -> int:
        return min(share_count(severity, n_words), self.params.max_edits)


@lru_cache(maxsize=4096)
def _pos_tags(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """Penn tags of the tokens (NLTK's tagger through nlpaug, as `synonym` uses); a class
    sentence is tagged once per process, not once per draw and severity."""
    from anbench.perturbations.synonym import augmenter

    return tuple(tag for _, tag in augmenter().model.pos_tag(list(tokens)))


@lru_cache(maxsize=65536)
def _synonyms(word: str, tag: str) -> tuple[str, ...]:
    """`synonym`'s WordNet candidates for (word, tag) that are not stop words, looked up once."""
    from anbench.perturbations.synonym import candidates, is_stop_phrase

    return tuple(c for c in candidates(word, tag) if not is_stop_phrase(c))


def _word(text: str) -> Unit:
    return Unit(text, " ", True, False, (-1, -1))


@PERTURBATIONS.register("word-insert",
                        description="WordNet synonyms of the sentence's words inserted at "
                                    "random places (EDA random insertion)")
class WordInsert(WordNoise):
    """Insert ceil(s * words) times a synonym of a random word at a random place between words.

    Source words are the ones `synonym` could replace (not protected, not stop words or
    determiners, with a WordNet synonym that is neither a stop word nor a class name); a place
    is anywhere between units but after a final punctuation mark, never inside a class name.
    """

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        if severity <= 0:
            return text
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        k = self.edits(severity, sum(u.is_word for u in sent.units))
        if k == 0:
            return text
        from anbench.perturbations.synonym import (  # late: keeps the registration order
            NameIndex,
            is_stop_phrase,
        )

        names = NameIndex([*ctx.class_names, ctx.class_name])
        tags = _pos_tags(tuple(t for t, _, _ in tokenize(text)))
        pool: list[list[str]] = []
        for u in sent.units:
            if not u.is_word or u.protected or is_stop_phrase(u.text):
                continue
            tag = tags[u.tokens[0]]
            cands = [c for c in _synonyms(u.text, tag) if not names.counts(c)]
            if cands and tag != "DT":
                pool.append(cands)
        if not pool:
            return text
        before = names.counts(text)
        units = list(sent.units)
        for _ in range(k):
            cands = pool[int(rng.integers(len(pool)))]
            new = cands[int(rng.integers(len(cands)))]
            # places: before unit 0 .. len-1, and at the end unless the sentence ends in a mark
            places = len(units) + (1 if units[-1].is_word else 0)
            at = int(rng.integers(places))
            if at < len(units):  # before units[at]; a word there moves behind a space
                moved = replace(units[at], pre=" ") if units[at].is_word else units[at]
                trial = [*units[:at], _word(new), moved, *units[at + 1:]]
            else:
                trial = [*units, _word(new)]
            if not names.adds_a_name(before, sent.render(trial)):
                units = trial
        return sent.render(units)


@PERTURBATIONS.register("word-swap",
                        description="ceil(s * words) disjoint pairs of words swapped "
                                    "(EDA random swap)")
class WordSwap(WordNoise):
    """Swap k = ceil(s * words) pairs of non-protected words. Unlike EDA, whose later swaps
    may undo earlier ones, the pairs are disjoint (at most half the movable words), so exactly
    2k words change places. Punctuation, whitespace and class-name spans keep their places; a
    sentence with fewer than two movable words is returned unchanged."""

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        if severity <= 0:
            return text
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        slots = [i for i, u in enumerate(sent.units) if u.is_word and not u.protected]
        k = self.edits(severity, sum(u.is_word for u in sent.units))
        if len(slots) < 2 or k == 0:
            return text
        k = min(k, len(slots) // 2)
        words = {i: sent.units[i].text for i in slots}
        picked = [int(x) for x in rng.choice(slots, size=2 * k, replace=False)]
        for a, b in zip(picked[::2], picked[1::2], strict=True):
            words[a], words[b] = words[b], words[a]
        units = [replace(u, text=words[i]) if i in words else u for i, u in enumerate(sent.units)]
        return sent.render(units)


@PERTURBATIONS.register("punctuation-insert",
                        description="punctuation marks inserted before random words (AEDA)")
class PunctuationInsert(WordNoise):
    """Insert one of . , ! ? ; : (uniformly) before ceil(s * words) distinct random words,
    followed by a space, as AEDA does ("a photo ! of a dog."). Class names stay intact."""

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        if severity <= 0:
            return text
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        slots = [i for i, u in enumerate(sent.units) if u.is_word]
        k = min(self.edits(severity, len(slots)), len(slots))
        if k == 0:
            return text
        chosen = set(rng.choice(slots, size=k, replace=False).tolist())
        units: list[Unit] = []
        for i, u in enumerate(sent.units):
            if i in chosen:
                mark = PUNCTUATION[int(rng.integers(len(PUNCTUATION)))]
                units.append(Unit(mark, u.pre if units else "", False, False, (-1, -1)))
                units.append(replace(u, pre=" "))
            else:
                units.append(u)
        return sent.render(units)
