"""The perturbation contract and the machinery shared by every perturbation.

A perturbation maps a sentence to a noisy sentence. Its only source of randomness is the numpy
Generator it is handed, derived from (run seed, perturbation name, severity, item id), so the same
inputs give the same text in any order, batch or process. Every perturbation also carries a
feature-level mixing weight `alpha` (`mix_features`): `inf` replaces the clean feature, a small
value perturbs it weakly.

Writing one (see examples/plugins/typo_noise.py)::

    class TypoParams(PerturbationParams):
        severity: list[float] = [0.1]

    @PERTURBATIONS.register("typo", description="...")
    class Typo(Perturbation):
        Params = TypoParams

        def perturb(self, text, rng, severity, ctx):
            return map_words(text, ctx, self.params.protect_class_names, lambda w: ...)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pydantic
from pydantic import ConfigDict, Field, field_serializer, field_validator

from anbench import draw_memo
from anbench.hashing import json_digest
from anbench.registry import PERTURBATIONS, AnbenchError
from anbench.seeds import numpy_rng
from anbench.semantic_filter import FilterStats, SemanticFilterParams, filtered

if TYPE_CHECKING:  # torch is imported lazily: listing perturbations should not pay for it
    import torch

#: What a run masks with when the backbone's tokenizer has no mask token (CLIP's BPE has none).
DEFAULT_MASK_TOKEN = "<mask>"

#: Templates that stand in for a dataset's when `preview` has no dataset (wsp alternatives).
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a photo of one {}.",
    "this is a photo of a {}.",
)

_INF_STRINGS = {"inf", ".inf", "+inf", "+.inf", "infinity", "+infinity"}


class PerturbationParams(pydantic.BaseModel):
    """Parameters every perturbation has; subclasses add fields and change defaults.

    `severity` is a sweep (a list; YAML may give one number). `alpha` is the feature mixing
    weight in (0, inf]; YAML `.inf` or the string "inf" mean replacement.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Upper bound checked on each severity; None = unbounded (plugins may choose).
    max_severity: ClassVar[float | None] = None

    severity: list[float] = Field(default_factory=lambda: [1.0])
    alpha: float = math.inf
    protect_class_names: bool = True
    #: optional: keep a noisy sentence only if it stays close to the clean one (MiniLM cosine)
    semantic_filter: SemanticFilterParams | None = None

    @field_validator("severity", mode="before")
    @classmethod
    def _wrap_scalar(cls, v: Any) -> Any:
        return [v] if isinstance(v, int | float | str) and not isinstance(v, bool) else v

    @field_validator("severity")
    @classmethod
    def _check_severity(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("severity needs at least one value")
        for s in v:
            if not math.isfinite(s) or s < 0:
                raise ValueError(f"severity {s} must be finite and >= 0")
            if cls.max_severity is not None and s > cls.max_severity:
                raise ValueError(f"severity {s} is above the maximum {cls.max_severity}")
        return v

    @field_validator("alpha", mode="before")
    @classmethod
    def _parse_inf(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in _INF_STRINGS:
            return math.inf
        return v

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, v: float) -> float:
        if math.isnan(v) or v <= 0:
            raise ValueError(f"alpha {v} must be in (0, inf]")
        return v

    @field_serializer("alpha", when_used="json")
    def _alpha_json(self, v: float) -> float | str:
        return "inf" if math.isinf(v) else v  # strict JSON has no Infinity; "inf" parses back


@dataclass
class TextContext:
    """What a perturbation may know about the sentence it perturbs.

    `alternatives` are semantically equivalent sentences of the SAME class only (its other
    descriptions, then other templates filled with its name); `wsp` draws from them.
    `class_names` are every class name of the label space (this class's included), so a
    perturbation that writes new words can avoid writing a class name; empty when unknown.
    """

    class_name: str
    class_index: int = 0
    alternatives: list[str] = field(default_factory=list)
    mask_token: str = DEFAULT_MASK_TOKEN
    class_names: list[str] = field(default_factory=list)


class Perturbation:
    """Base class: subclasses set `Params` and implement `perturb`."""

    Params: ClassVar[type[PerturbationParams]] = PerturbationParams
    #: Bump when a perturbation's output for the same inputs changes; stored with results.
    version: ClassVar[str] = "1"
    registry_name: ClassVar[str]
    #: What it perturbs and how much of it one edit touches; they place it in the `--noise`
    #: groups (`anbench.noise_groups`): modality "text"; level "char", "word", "sentence" or None.
    modality: ClassVar[str] = "text"
    level: ClassVar[str | None] = None

    def __init__(self, params: PerturbationParams | None = None):
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} needs {self.Params.__name__}, "
                            f"got {type(params).__name__}")
        self.params = params

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__.lower())

    @property
    def alpha(self) -> float:
        return self.params.alpha

    @property
    def severities(self) -> list[float]:
        return list(self.params.severity)

    def perturb(self, text: str, rng: np.random.Generator, severity: float,
                ctx: TextContext) -> str:
        """Return the noisy version of `text`; all randomness from `rng`."""
        raise NotImplementedError

    def describe(self, seed: int, severity: float | None = None) -> dict[str, Any]:
        """Frozen, JSON-serialisable description stored with every result."""
        # No filter: left out, so descriptions (and cell fingerprints) stay as they were.
        exclude = None if getattr(self.params, "semantic_filter", None) else {"semantic_filter"}
        desc: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "params": self.params.model_dump(mode="json", exclude=exclude),
            "seed": int(seed),
        }
        if severity is not None:
            desc["severity"] = float(severity)
        return desc

    def filter_stats(self, severity: float) -> FilterStats:
        """The semantic filter's running counts for one severity on this instance."""
        table: dict[str, FilterStats] = self.__dict__.setdefault("_filter_stats", {})
        return table.setdefault(_severity_key(severity), FilterStats())

    def report(self, seed: int, severity: float | None = None) -> dict[str, Any]:
        """`describe` plus what applying it did so far (the semantic filter's draws and
        rejections, per severity); stored in a cell's meta.json, never in its fingerprint."""
        desc = self.describe(seed, severity)
        table: dict[str, FilterStats] = self.__dict__.get("_filter_stats", {})
        if severity is not None and _severity_key(severity) in table:
            desc["semantic_filter"] = table[_severity_key(severity)].as_dict()
        elif severity is None and table:
            desc["semantic_filter"] = {key: stats.as_dict() for key, stats in table.items()}
        return desc

    def fingerprint(self, seed: int, severity: float | None = None) -> str:
        """Short stable key of `describe` (for cache and result keys)."""
        return json_digest(self.describe(seed, severity))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def _severity_key(severity: float) -> str:
    # 12 significant digits: 0.1 + 0.2 and 0.3 are the same severity, 1 and 1.0 too.
    return f"{float(severity):.12g}"


def derive_rng(seed: int, name: str, severity: float, item_id: str, draw: int = 0
               ) -> np.random.Generator:
    """A Generator that depends only on its arguments (see `anbench.seeds`). Draw 0 keeps the
    key it had before noise draws existed, so single-draw results are unchanged."""
    if draw:
        return numpy_rng(int(seed), str(name), _severity_key(severity), str(item_id),
                         f"draw{int(draw)}")
    return numpy_rng(int(seed), str(name), _severity_key(severity), str(item_id))


def apply(p: Perturbation, texts: Sequence[str], contexts: Sequence[TextContext],
          item_ids: Sequence[str], seed: int, severity: float, draw: int = 0) -> list[str]:
    """Perturb each text with its own derived rng: the result does not depend on order or batch.

    `item_ids` must identify sentences uniquely within a run (e.g. "pets/12/3"); `draw` numbers
    independent noise draws of the same sentences. Severity 0 is the identity for every
    perturbation, built-in or plugin.
    """
    if not len(texts) == len(contexts) == len(item_ids):
        raise ValueError(f"apply: {len(texts)} texts, {len(contexts)} contexts, "
                         f"{len(item_ids)} item ids")
    if severity == 0:
        return list(texts)
    spec = getattr(p.params, "semantic_filter", None)
    # cells evaluated together (a fused group) draw each sentence list once: anbench.draw_memo
    memo = draw_memo.active() if spec is None else None
    memo_key = (memo.key(p, texts, contexts, item_ids, seed, severity, draw)
                if memo is not None else None)
    if memo is not None and (known := memo.get(memo_key)) is not None:
        return known
    out = []
    for text, ctx, item_id in zip(texts, contexts, item_ids, strict=True):
        rng = derive_rng(seed, p.name, severity, item_id, draw)

        def once(text: str = text, rng: np.random.Generator = rng,
                 ctx: TextContext = ctx) -> str:
            noisy = p.perturb(text, rng, severity, ctx)
            if not isinstance(noisy, str):
                raise TypeError(f"perturbation '{p.name}' returned {type(noisy).__name__}, "
                                "not str")
            return noisy

        # with the semantic filter, retries continue the item's own rng stream
        out.append(once() if spec is None else
                   filtered(once, text, spec, p.filter_stats(severity)))
    if memo is not None:
        memo.put(memo_key, out)
    return out


def mix_features(clean: torch.Tensor, noisy: torch.Tensor, alpha: float) -> torch.Tensor:
    """`n(n(clean) + alpha * n(noisy))` over the last dim; alpha = inf gives `n(noisy)`."""
    import torch.nn.functional as F

    if math.isnan(alpha) or alpha < 0:
        raise ValueError(f"alpha {alpha} must be in [0, inf]")
    noisy_n = F.normalize(noisy, dim=-1)
    if math.isinf(alpha):
        return noisy_n
    return F.normalize(F.normalize(clean, dim=-1) + alpha * noisy_n, dim=-1)


def build_perturbation(name: str,
                       params: dict[str, Any] | PerturbationParams | None = None) -> Perturbation:
    """Instantiate a registered perturbation with validated parameters (an image perturbation
    for a name of that kind: `anbench.image_perturbation`)."""
    from anbench.registry import IMAGE_PERTURBATIONS

    if name not in PERTURBATIONS and name in IMAGE_PERTURBATIONS:
        from anbench.image_perturbation import build_image_perturbation

        return build_image_perturbation(name, params)  # type: ignore[arg-type]
    cls = PERTURBATIONS.get(name)  # a Perturbation subclass: the registry checks that
    if isinstance(params, PerturbationParams):
        return cls(params)
    try:
        validated = cls.Params.model_validate(params or {})
    except pydantic.ValidationError as exc:
        raise AnbenchError(_params_error(name, cls.Params, exc)) from None
    return cls(validated)


def _params_error(name: str, params_cls: type[PerturbationParams],
                  exc: pydantic.ValidationError) -> str:
    allowed = ", ".join(sorted(params_cls.model_fields))
    msgs = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(params)"
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown parameter '{key}' (allowed: {allowed})")
        else:
            msgs.append(f"parameter '{key}': {err['msg']}")
    return f"perturbation '{name}': " + "; ".join(msgs)


# --- words, punctuation and protected class-name spans -------------------------------------

_TOKEN_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


@dataclass(frozen=True)
class Unit:
    """A word, a punctuation mark, or a whole class-name span (one protected unit)."""

    text: str
    pre: str  # whitespace before it in the source sentence
    is_word: bool
    protected: bool
    tokens: tuple[int, int]  # [start, end) token indices in `tokenize(text)`


@dataclass
class Sentence:
    units: list[Unit]
    lead: str = ""
    trail: str = ""

    def render(self, units: Sequence[Unit] | None = None) -> str:
        """Text of `units` (default: own); reproduces the source exactly when nothing changed."""
        units = self.units if units is None else units
        parts = [self.lead]
        for i, u in enumerate(units):
            parts.append((u.pre if i else "") + u.text)
        if not units:
            return (self.lead + self.trail).strip()
        return "".join(parts) + self.trail


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Words (keeping in-word hyphens and apostrophes) and single punctuation marks."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def _is_word(tok: str) -> bool:
    return bool(re.match(r"\w", tok))


def class_name_words(class_name: str) -> set[str]:
    return {t.lower() for t, _, _ in tokenize(class_name) if _is_word(t)}


def find_class_spans(tokens: Sequence[str], class_name: str) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) token spans equal (case-insensitively) to the class name."""
    name = [t.lower() for t, _, _ in tokenize(class_name)]
    low = [t.lower() for t in tokens]
    spans, i = [], 0
    while name and i + len(name) <= len(low):
        if low[i:i + len(name)] == name:
            spans.append((i, i + len(name)))
            i += len(name)
        else:
            i += 1
    return spans


def split_sentence(text: str, class_name: str, protect: bool) -> Sentence:
    """Split into units. With `protect`, each class-name occurrence becomes one protected unit and
    any other word equal to a class-name word is protected too."""
    toks = tokenize(text)
    if not toks:
        return Sentence([], lead=text)
    spans = find_class_spans([t for t, _, _ in toks], class_name) if protect else []
    name_words = class_name_words(class_name) if protect else set()
    span_at = {s: e for s, e in spans}
    units: list[Unit] = []
    i, prev_end = 0, toks[0][1]
    while i < len(toks):
        start = toks[i][1]
        pre = text[prev_end:start] if units else ""
        if i in span_at:
            j = span_at[i]
            end = toks[j - 1][2]
            units.append(Unit(text[start:end], pre, True, True, (i, j)))
        else:
            tok, _, end = toks[i]
            j = i + 1
            word = _is_word(tok)
            units.append(Unit(tok, pre, word, word and tok.lower() in name_words, (i, j)))
        prev_end, i = end, j
    return Sentence(units, lead=text[:toks[0][1]], trail=text[toks[-1][2]:])


def map_words(text: str, ctx: TextContext, protect: bool,
              fn: Callable[[str], str | None]) -> str:
    """Apply `fn` to each non-protected word in order: a string replaces it, None drops it.

    Punctuation and whitespace are kept; the source is returned unchanged if nothing changed.
    """
    sent = split_sentence(text, ctx.class_name, protect)
    out: list[Unit] = []
    changed = False
    for u in sent.units:
        if not u.is_word or u.protected:
            out.append(u)
            continue
        new = fn(u.text)
        if new is None:
            changed = True
        else:
            changed |= new != u.text
            out.append(replace(u, text=new))
    return sent.render(out) if changed else text


def contains_class_name(text: str, class_name: str) -> bool:
    return bool(find_class_spans([t for t, _, _ in tokenize(text)], class_name))


# --- contexts and preview -------------------------------------------------------------------

def make_context(text: str, class_name: str, class_index: int = 0,
                 descriptions: Sequence[str] = (), templates: Sequence[str] = (),
                 mask_token: str | None = None,
                 class_names: Sequence[str] = ()) -> TextContext:
    """Context for `text` of one class: alternatives are that class's other descriptions, then
    the other templates filled with its name (never sentences of another class); `class_names`
    are all the label space's class names."""
    seen = {text.strip().lower()}
    alternatives = []
    for cand in [*descriptions, *(t.format(class_name) for t in templates)]:
        key = cand.strip().lower()
        if key not in seen:
            seen.add(key)
            alternatives.append(cand)
    return TextContext(class_name, class_index, alternatives, mask_token or DEFAULT_MASK_TOKEN,
                       list(class_names))


def mask_token_for(tokenizer: Any) -> str:
    """The mask token a run uses with a backbone's (open_clip) tokenizer: the mask token of the
    Hugging Face tokenizer it wraps (`.tokenizer`; "[MASK]" for the mini backbone's MiniLM),
    else DEFAULT_MASK_TOKEN (CLIP's BPE tokenizer wraps none)."""
    inner = getattr(tokenizer, "tokenizer", None)
    token = getattr(inner, "mask_token", None)
    return token if isinstance(token, str) and token else DEFAULT_MASK_TOKEN


def backbone_mask_token(backbone: Any) -> str:
    """The mask token a run on `backbone` (a backbone plugin instance, e.g. from
    `anbench.backbones.loading.backbone_source`) masks with, without loading its weights: from
    the plugin's `tokenizer()`. DEFAULT_MASK_TOKEN when the plugin offers no tokenizer or it
    cannot be built here (a preview must not need the backbone's files)."""
    make = getattr(backbone, "tokenizer", None)
    if not callable(make):
        return DEFAULT_MASK_TOKEN
    try:
        tokenizer = make()
    except Exception:  # missing files, offline hub: the preview still runs
        return DEFAULT_MASK_TOKEN
    return mask_token_for(tokenizer)


_ARTICLES = {"a", "an", "the", "this", "that", "these", "those", "one", "my", "your", "some"}
_BREAKS = {
    "with", "of", "in", "on", "at", "by", "for", "from", "to", "into", "near", "under", "over",
    "and", "or", "but", "which", "that", "who", "is", "are", "was", "were", "has", "have",
    "having", "while", "as", "against", "behind", "beside", "between", "during", "without",
}


def guess_class_name(text: str) -> str:
    """The words after the last article, up to the next preposition, conjunction, verb of being
    or punctuation ("a photo of a tabby cat with dark stripes." -> "tabby cat"); without an
    article, the last word."""
    toks = [t for t, _, _ in tokenize(text)]
    for i in range(len(toks) - 1, -1, -1):
        if toks[i].lower() in _ARTICLES:
            phrase = []
            for t in toks[i + 1:]:
                if not _is_word(t) or t.lower() in _BREAKS:
                    break
                phrase.append(t)
            if phrase:
                return " ".join(phrase)
    words = [t for t in toks if _is_word(t)]
    return words[-1] if words else text.strip()


def preview(text: str, names: Sequence[str] | None = None, seed: int = 1,
            class_name: str | None = None, mask_token: str | None = None,
            params: dict[str, Any] | None = None) -> list[tuple[str, float, str]]:
    """(name, severity, output) for each perturbation (default: all registered) and each of its
    default severities, for `anbench perturb`.

    With no dataset, wsp's alternatives are GENERIC_TEMPLATES filled with the class name, which is
    `class_name` or else guessed by `guess_class_name`. `mask_token` should be the one a run
    uses (`backbone_mask_token` of the configured backbone; None: DEFAULT_MASK_TOKEN). `params`
    maps a perturbation name to its configured parameters (bench.yaml's `perturbations`).
    """
    cname = class_name or guess_class_name(text)
    ctx = make_context(text, cname, templates=GENERIC_TEMPLATES, mask_token=mask_token)
    rows = []
    for name in names if names is not None else PERTURBATIONS.names():
        p = build_perturbation(name, (params or {}).get(name))
        for severity in p.severities:
            rows.append((name, severity, apply(p, [text], [ctx], ["preview"], seed, severity)[0]))
    return rows
