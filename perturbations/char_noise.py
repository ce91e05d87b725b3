"""Character-level noise: `keyboard`, `ocr`, `char-insert`, `char-substitute`, `char-swap`,
`char-delete`, after nlpaug's `KeyboardAug`, `OcrAug` and `RandomCharAug` (the character
perturbations of Qiu et al., "Benchmarking robustness of multimodal image-text models under
distribution shift").

nlpaug samples with Python's global `random` (`Augmenter.sample` is `random.sample`), so, as for
`synonym`, only its data and rules are used: the QWERTY neighbour map (KeyboardAug's model), the
OCR confusion map (OcrAug's), RandomCharAug's candidate characters and its adjacent-swap rule,
and its counting (`ceil(p * n)` words, at most 10, each with `ceil(p * len)` characters, at
least `aug_char_min`, at most 10). Every choice is drawn from our per-item rng.

Severity s sets both shares: ceil(s * n) of the n words of the sentence are corrupted (those
eligible: not a class-name word, at least `min_chars` long, with a character the map covers),
and ceil(s * len) characters of each. `char_share` fixes the second share instead (Qiu et al.
use nlpaug's default 0.3 with s = 0.05 .. 0.25 on COCO captions; on short class prompts such as
"a photo of a {}." that would give one identical corruption at every level). No corrupted word
may make a class name of the label space appear; such a draw is redrawn (3 tries), else the word
stays as it was.
"""

from __future__ import annotations

import math
import string
from dataclasses import replace
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from anbench.perturbation import (
    Perturbation,
    PerturbationParams,
    TextContext,
    split_sentence,
)
from anbench.registry import PERTURBATIONS

#: Five graded severity levels (the share of words, and of characters per word, corrupted).
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5]

_NAME_TRIES = 3  # redraws of a word whose corruption would write a class name


@lru_cache(maxsize=1)
def keyboard_map() -> dict[str, list[str]]:
    """nlpaug KeyboardAug's English QWERTY map: character -> its one-key-away neighbours.

    Entries that are not one visible character are dropped: nlpaug 1.1.11 lists " t" among the
    neighbours of "u", which would split the word in two."""
    import nlpaug.augmenter.char as nac

    table = {key: [v for v in values if len(v) == 1 and not v.isspace()]
             for key, values in nac.KeyboardAug().model.model.items()}
    return {key: values for key, values in table.items() if values}


@lru_cache(maxsize=1)
def ocr_map() -> dict[str, list[str]]:
    """nlpaug OcrAug's OCR confusion map (with its reverse entries): character -> confusions."""
    import nlpaug.augmenter.char as nac

    return {k: list(v) for k, v in nac.OcrAug().model.model.items() if v}


@lru_cache(maxsize=1)
def random_chars() -> list[str]:
    """RandomCharAug's default candidates: letters, digits and its special characters."""
    import nlpaug.augmenter.char as nac

    chars = nac.RandomCharAug().model
    return list(chars) if chars else list(string.ascii_letters + string.digits)


def share_count(share: float, n: int) -> int:
    """nlpaug's count ceil(share * n); rounded first, as 0.3 * 10 is 3.0000000000000004."""
    return math.ceil(round(share * n, 9))


class CharParams(PerturbationParams):
    max_severity = 1.0

    #: share of the sentence's words corrupted (nlpaug's aug_word_p), and of characters per
    #: corrupted word unless `char_share` is set; five graded levels
    severity: list[float] = Field(default_factory=lambda: list(LEVELS))
    alpha: float = math.inf
    #: share of each corrupted word's characters (nlpaug's aug_char_p); None: the severity
    char_share: float | None = Field(default=None, gt=0, le=1)
    #: nlpaug's aug_word_max and aug_char_max
    max_words: int = Field(default=10, ge=1)
    max_chars: int = Field(default=10, ge=1)


class KeyboardParams(CharParams):
    min_chars: int = Field(default=4, ge=1)  # KeyboardAug's min_char


class OcrParams(CharParams):
    min_chars: int = Field(default=1, ge=1)  # OcrAug's min_char


class RandomCharParams(CharParams):
    min_chars: int = Field(default=4, ge=1)  # RandomCharAug's min_char


class CharNoise(Perturbation):
    """Corrupt characters of ceil(s * n) eligible words (see the module docstring)."""

    level: ClassVar[str | None] = "char"
    #: nlpaug's aug_char_min: at least this many characters of a chosen word
    min_edits: ClassVar[int] = 1

    def eligible_chars(self, word: str) -> list[int]:
        """Positions this augmenter may change in `word`."""
        return list(range(len(word)))

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        raise NotImplementedError

    def max_count(self, word: str, eligible: int) -> int:
        return eligible

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        if severity <= 0:
            return text
        sent = split_sentence(text, ctx.class_name, self.params.protect_class_names)
        n_words = sum(u.is_word for u in sent.units)
        words = [i for i, u in enumerate(sent.units)
                 if u.is_word and not u.protected and len(u.text) >= self.params.min_chars
                 and self.max_count(u.text, len(self.eligible_chars(u.text))) > 0]
        k = min(share_count(severity, n_words), self.params.max_words, len(words))
        if k == 0:
            return text
        from anbench.perturbations.synonym import NameIndex  # late: keeps registration order

        char_share = self.params.char_share or severity
        names = NameIndex([*ctx.class_names, ctx.class_name])
        before = names.counts(text)
        units = list(sent.units)
        for i in sorted(rng.choice(words, size=k, replace=False).tolist()):
            word = units[i].text
            where = self.eligible_chars(word)
            count = max(self.min_edits, min(share_count(char_share, len(word)),
                                            self.params.max_chars))
            count = min(count, self.max_count(word, len(where)))
            for _ in range(_NAME_TRIES):
                picked = sorted(rng.choice(where, size=count, replace=False).tolist())
                new = self.edit(word, picked, rng)
                trial = [*units[:i], replace(units[i], text=new), *units[i + 1:]]
                if not names.adds_a_name(before, sent.render(trial)):
                    units = trial
                    break
        return sent.render(units)


class MappedCharNoise(CharNoise):
    """Replace characters by one of their entries in a confusion map."""

    def table(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def eligible_chars(self, word: str) -> list[int]:
        table = self.table()
        return [j for j, ch in enumerate(word) if table.get(ch)]

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        table = self.table()
        chars = list(word)
        for j in positions:
            options = table[chars[j]]
            chars[j] = options[int(rng.integers(len(options)))]
        return "".join(chars)


@PERTURBATIONS.register("keyboard",
                        description="keyboard typos: characters replaced by a QWERTY neighbour "
                                    "(nlpaug KeyboardAug)")
class Keyboard(MappedCharNoise):
    Params = KeyboardParams

    def table(self) -> dict[str, list[str]]:
        return keyboard_map()


@PERTURBATIONS.register("ocr",
                        description="OCR errors: characters replaced by a look-alike "
                                    "(nlpaug OcrAug)")
class Ocr(MappedCharNoise):
    Params = OcrParams
    min_edits = 2  # OcrAug's aug_char_min

    def table(self) -> dict[str, list[str]]:
        return ocr_map()


@PERTURBATIONS.register("char-insert",
                        description="random characters inserted into words "
                                    "(nlpaug RandomCharAug insert)")
class CharInsert(CharNoise):
    Params = RandomCharParams

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        chars, pool = list(word), random_chars()
        for j in sorted(positions, reverse=True):  # right to left: positions stay valid
            chars.insert(j, pool[int(rng.integers(len(pool)))])
        return "".join(chars)


@PERTURBATIONS.register("char-substitute",
                        description="characters replaced by random ones "
                                    "(nlpaug RandomCharAug substitute)")
class CharSubstitute(CharNoise):
    """As RandomCharAug's substitute, except that a character is never replaced by itself."""

    Params = RandomCharParams

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        chars = list(word)
        for j in positions:
            pool = [c for c in random_chars() if c != chars[j]]
            chars[j] = pool[int(rng.integers(len(pool)))]
        return "".join(chars)


@PERTURBATIONS.register("char-swap",
                        description="characters swapped with a neighbour "
                                    "(nlpaug RandomCharAug swap, adjacent)")
class CharSwap(CharNoise):
    """RandomCharAug's adjacent swap: the first character swaps with the next, the last with
    the previous, any other with a random side; each position keeps its letter case."""

    Params = RandomCharParams

    def max_count(self, word: str, eligible: int) -> int:
        return eligible if len(word) >= 2 else 0

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        chars, last = list(word), len(word) - 1
        for j in positions:
            other = j + 1 if j == 0 else j - 1 if j == last else j + int(rng.choice([-1, 1]))
            upper_j, upper_o = chars[j].isupper(), chars[other].isupper()
            chars[j], chars[other] = chars[other], chars[j]
            chars[j] = chars[j].upper() if upper_j else chars[j].lower()
            chars[other] = chars[other].upper() if upper_o else chars[other].lower()
        return "".join(chars)


@PERTURBATIONS.register("char-delete",
                        description="random characters deleted from words "
                                    "(nlpaug RandomCharAug delete)")
class CharDelete(CharNoise):
    """As RandomCharAug's delete, except that one character always stays (a word that vanished
    would be `drop`, not a typo)."""

    Params = RandomCharParams

    def max_count(self, word: str, eligible: int) -> int:
        return min(eligible, len(word) - 1)

    def edit(self, word: str, positions: list[int], rng: np.random.Generator) -> str:
        return "".join(ch for j, ch in enumerate(word) if j not in set(positions))
