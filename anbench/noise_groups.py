"""Named groups of perturbations for `--noise` / `--train-noise` / `--eval-noise`.

Every perturbation class declares its `modality` (what it perturbs: "text"; an image kind joins
with "image") and its `level` (how much of the input one edit touches: "char", "word",
"sentence", or None when it does not say). The groups are derived from those two attributes,
so a plugin joins them by declaring them:

- `all`: every registered perturbation of every kind;
- one group per modality (`text`) and per level (`char`, `word`, `sentence`);
- `paper`: the five strategies of the ANPrompt paper, plus `paraphrase` (wsp's sentences at
  full strength, the row that shows what `wsp` at alpha 0.001 cannot): the default run's noise.

A kind is a (modality, registry) pair; `register_kind` adds one (e.g. image perturbations with
their own registry and entry-point group), and `all` then spans both. Group names are reserved:
a perturbation registered under a group's name is reached through the group, not by its name.
"""

from __future__ import annotations

from typing import Any

from anbench.registry import PERTURBATIONS, AnbenchError, UnknownNameError

#: The ANPrompt paper's noise strategies (its Figure 1 and Figure 4), in its order, then
#: `paraphrase`: mild (wsp, alpha 0.001) against strong (alpha inf) use of the same sentences.
PAPER_NOISE: tuple[str, ...] = ("drop", "mask", "shuffle", "synonym", "wsp", "paraphrase")

#: Levels, in the order `anbench list perturbations` shows them.
LEVELS: tuple[str, ...] = ("char", "word", "sentence")

#: Perturbations of the robustness literature that anbench does not provide, with the reason.
NOT_PROVIDED: tuple[tuple[str, str], ...] = (
    ("formal, casual, passive, active",
     "sentence style transfer needs a generation model (Styleformer), not available offline"),
    ("back-translation", "needs two translation models (e.g. WMT19 en-de, de-en), not offline"),
)

_GROUP_NAMES = frozenset({"all", "paper", "text", "image", *LEVELS})

#: (modality, registry) of every perturbation kind; the text kind is built in.
_KINDS: list[tuple[str, Any]] = [("text", PERTURBATIONS)]


def register_kind(modality: str, registry: Any) -> None:
    """Add a perturbation kind (its registry's entries declare `modality` and `level`)."""
    if any(registry is r for _, r in _KINDS):
        return
    _KINDS.append((modality, registry))


def kinds() -> list[tuple[str, Any]]:
    """Every kind, after discovery: discovering a registry imports its built-in package, whose
    modules may register another kind (the image kind registers itself that way)."""
    seen = 0
    while seen < len(_KINDS):
        discover = getattr(_KINDS[seen][1], "discover", None)
        if callable(discover):
            discover()
        seen += 1
    return list(_KINDS)


def modality_of(obj: Any, default: str) -> str:
    return str(getattr(obj, "modality", default) or default)


def level_of(obj: Any) -> str | None:
    level = getattr(obj, "level", None)
    return str(level) if level else None


def groups() -> dict[str, list[str]]:
    """Group name -> member names, each list in registration order; empty groups left out."""
    out: dict[str, list[str]] = {"all": []}
    for modality, registry in kinds():
        for entry in registry.entries():
            out["all"].append(entry.name)
            out.setdefault(modality_of(entry.obj, modality), []).append(entry.name)
            level = level_of(entry.obj)
            if level:
                out.setdefault(level, []).append(entry.name)
    registered = set(out["all"])
    out["paper"] = [name for name in PAPER_NOISE if name in registered]
    return {name: members for name, members in out.items() if members}


def _lookup(name: str, table: dict[str, list[str]]) -> None:
    """Fail on an unknown name, listing the known names and groups."""
    if any(name in registry for _, registry in kinds()):
        return
    names = table.get("all", [])
    raise UnknownNameError("perturbation", name,
                           [*names, *(f"{group} (group)" for group in table)])


def expand(values: list[str], what: str) -> list[str]:
    """Names and groups -> perturbation names, in order, each once.

    `none` or nothing selects none. A name or group listed twice is an error (a typo, most
    likely); members shared by two different groups are kept once.
    """
    if values in ([], ["none"]):
        return []
    if len(set(values)) != len(values):
        raise AnbenchError(f"{what} lists a name twice: {', '.join(values)}")
    table = groups()
    out: list[str] = []
    for value in values:
        if value == "none":
            raise AnbenchError(f"{what}: 'none' cannot be combined with other names")
        if value in table:
            members = table[value]
        elif value in _GROUP_NAMES:  # a group with no member in this session
            members = []
        else:
            _lookup(value, table)
            members = [value]
        out.extend(m for m in members if m not in out)
    return out


def can_train(name: str) -> bool:
    """Whether a method may train with perturbation `name`: text ones can; one of another kind
    only when its class declares `can_train` (image corruptions are evaluation-only)."""
    for modality, registry in kinds():
        if name in registry:
            return bool(getattr(registry.get(name), "can_train", modality == "text"))
    return False


def expand_training(values: list[str], what: str, explicit: bool) -> list[str]:
    """`expand` for training noises: groups keep only their members that can train. A name
    given on its own that cannot train is an error when `explicit` (it was asked for as a
    training noise, `--train-noise`), else left out (`--noise` names evaluation noise too)."""
    names = expand(values, what)
    if explicit:
        table = groups()
        wrong = [v for v in values if v not in table and v in names and not can_train(v)]
        if wrong:
            trainable = [n for n in table.get("all", []) if can_train(n)]
            raise AnbenchError(f"{what}: {', '.join(wrong)} cannot be a training noise "
                               "(image corruptions are evaluation-only; use --eval-noise); "
                               f"training noises: {', '.join(trainable)}")
    kept = [name for name in names if can_train(name)]
    if explicit and names and not kept:
        raise AnbenchError(f"{what}: no member of {', '.join(values)} can be a training noise")
    return kept


def listing() -> list[str]:
    """`anbench list perturbations`: one block per (modality, level), then the groups and what
    is not provided."""
    blocks: dict[str, list[Any]] = {}
    for modality, registry in kinds():
        for entry in registry.entries():
            level = level_of(entry.obj) or "other"
            blocks.setdefault(f"{modality_of(entry.obj, modality)} / {level}", []).append(entry)
    order = {level: i for i, level in enumerate((*LEVELS, "other"))}
    lines: list[str] = []
    width = max((len(e.name) for entries in blocks.values() for e in entries), default=0)
    for title in sorted(blocks, key=lambda t: (t.split(" / ")[0] != "text", t.split(" / ")[0],
                                                order.get(t.split(" / ")[1], len(order)))):
        lines.append(f"{title}:")
        for e in blocks[title]:
            origin = "" if e.origin == "builtin" else f"  [{e.origin}]"
            lines.append(f"  {e.name.ljust(width)}  {e.description}{origin}")
    lines.append("groups (--noise, --train-noise, --eval-noise):")
    for group, members in groups().items():
        lines.append(f"  {group.ljust(width)}  {', '.join(members)}")
    lines.append("not provided:")
    for names, why in NOT_PROVIDED:
        lines.append(f"  {names}: {why}")
    return lines
