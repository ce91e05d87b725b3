"""The Python API: run a suite, load its results, perturb a sentence, write reports.

    import anbench
    suite = anbench.run(methods=["coop", "dapt"], noise=["drop"], seeds=[1])
    df = anbench.load("runs/default").results       # the long results table, typed
    cell = suite.cell(method="dapt", dataset="digits")
    cell.history, cell.sentences(), cell.per_class_accuracy(), cell.arrays
    anbench.perturb("a photo of a cat.", "drop", severity=0.5)
    suite.report(formats=["md", "html"])

`run` layers its arguments over the config exactly as the command line does (built-in defaults
-> bench.yaml -> `config` file -> `sets` -> keyword arguments); the CLI's `run`, `report` and
`perturb` commands call these functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from anbench.registry import AnbenchError
from anbench.results_schema import STRING_COLUMNS
from anbench.store import CellKey, StoredCell, SuiteStore

# `run` keyword arguments that are lists of names (a string is split at commas).
_NAME_LISTS = ("methods", "noise", "train_noise", "eval_noise", "datasets")
_SCALARS = ("shots", "backbone", "suite", "out", "device", "data_root")


def _yaml(value: Any) -> str:
    """A Python value as one line of YAML, the form `--set key=value` reads."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple | set | frozenset):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _names(value: str | Iterable[str]) -> str:
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return _yaml([part.strip() for part in parts if part.strip()])


def run_sets(*, methods: str | Iterable[str] | None = None,
             noise: str | Iterable[str] | None = None,
             train_noise: str | Iterable[str] | None = None,
             eval_noise: str | Iterable[str] | None = None,
             datasets: str | Iterable[str] | None = None,
             seeds: int | str | Iterable[int] | None = None, shots: int | None = None,
             backbone: str | None = None, suite: str | None = None,
             out: str | Path | None = None, device: str | None = None,
             data_root: str | Path | None = None, quiet: bool | None = None,
             sets: Iterable[str] | None = None, options: Mapping[str, Any] | None = None,
             ) -> list[str]:
    """The `--set key=value` list that `run`'s arguments stand for, later entries winning."""
    if isinstance(sets, str):
        raise AnbenchError("sets must be a list of 'dotted.key=value' strings, not one string")
    out_sets = list(sets or [])
    given = {"methods": methods, "noise": noise, "train_noise": train_noise,
             "eval_noise": eval_noise, "datasets": datasets}
    out_sets += [f"run.{k}={_names(v)}" for k, v in given.items() if v is not None]
    if seeds is not None:
        if isinstance(seeds, str):  # '1,2,3' from the command line; the config checks it
            out_sets.append(f"run.seeds=[{seeds}]")
        elif isinstance(seeds, int):
            out_sets.append(f"run.seeds={_yaml([seeds])}")
        else:
            out_sets.append(f"run.seeds={_yaml(list(seeds))}")
    scalars = {"shots": shots, "backbone": backbone, "suite": suite, "out": out,
               "device": device, "data_root": data_root}
    # names and paths stay strings: `--suite 1` is the suite '1', not the number 1
    out_sets += [f"run.{k}={v if k == 'shots' else _yaml(str(v))}"
                 for k, v in scalars.items() if v is not None]
    if quiet is not None:
        out_sets.append(f"run.quiet={_yaml(bool(quiet))}")
    for key, value in (options or {}).items():
        # `tensorboard=True` is run.tensorboard; a dotted key is a path from the top
        path = key if "." in key else f"run.{key}"
        out_sets.append(f"{path}={_yaml(value)}")
    return out_sets


def run(methods: str | Iterable[str] | None = None, noise: str | Iterable[str] | None = None,
        datasets: str | Iterable[str] | None = None,
        seeds: int | str | Iterable[int] | None = None, *,
        train_noise: str | Iterable[str] | None = None,
        eval_noise: str | Iterable[str] | None = None, shots: int | None = None,
        backbone: str | None = None, suite: str | None = None, out: str | Path | None = None,
        device: str | None = None, data_root: str | Path | None = None,
        quiet: bool | None = None, config: str | Path | None = None,
        sets: Iterable[str] | None = None, plugins: Iterable[str] | None = None,
        dry_run: bool = False, **options: Any) -> Suite | None:
    """Train and evaluate the grid, like `anbench run`, and return the suite's handle.

    Arguments left as None come from the config. `sets` are `dotted.key=value` strings
    (`--set`); other keyword arguments set `run.<name>` (e.g. `tensorboard=True`,
    `noise_draws=3`) or, when the name is dotted (`**{"methods.coop.epochs": 2}`), that path.
    With `dry_run` the grid is printed and None returned.
    """
    from anbench.config import load_config
    from anbench.runner import run_suite

    all_sets = run_sets(methods=methods, noise=noise, train_noise=train_noise,
                        eval_noise=eval_noise, datasets=datasets, seeds=seeds, shots=shots,
                        backbone=backbone, suite=suite, out=out, device=device,
                        data_root=data_root, quiet=quiet, sets=sets, options=options)
    cfg = load_config(Path(config) if config is not None else None, all_sets,
                      extra_plugins=list(plugins or []))
    results = run_suite(cfg, dry_run=dry_run)
    if results is None:
        return None
    return Suite(Path(results).parent)


def load(path: str | Path) -> Suite:
    """The suite stored at `path` (a suite folder such as `runs/default`, or its results.csv)."""
    root = Path(path)
    if root.is_file() and root.name == "results.csv":
        root = root.parent
    if not root.exists():
        raise AnbenchError(f"no suite at {root}")
    if not root.is_dir():
        raise AnbenchError(f"{root} is not a suite folder")
    if not (root / "results.csv").is_file() and not (root / "cells").is_dir():
        raise AnbenchError(f"{root} is not an anbench suite folder (no results.csv, no cells/)")
    return Suite(root)


def perturb(text: str, noise: str | Iterable[str] = "all", *, seed: int = 1,
            severity: float | Iterable[float] | None = None, class_name: str | None = None,
            config: str | Path | None = None, sets: Iterable[str] | None = None,
            plugins: Iterable[str] | None = None) -> pd.DataFrame:
    """What each perturbation makes of `text`: one row (noise, severity, text) per perturbation
    and severity. `noise` names perturbations or groups ('all', 'paper', ...). Severities
    default to the configured ones (bench.yaml); `severity` replaces them. Masking uses the
    configured backbone's mask token, as a run would."""
    from anbench.backbones.loading import backbone_source
    from anbench.config import load_config
    from anbench.perturbation import backbone_mask_token, preview
    from anbench.registry import PERTURBATIONS

    if not isinstance(text, str):
        raise AnbenchError(f"perturb: text must be a string, got {type(text).__name__}")
    cfg = load_config(Path(config) if config is not None else None, list(sets or []),
                      extra_plugins=list(plugins or []))
    from anbench.noise_groups import expand

    values = noise.split(",") if isinstance(noise, str) else [str(n) for n in noise]
    asked = [n.strip() for n in values if n.strip()]
    names = expand(asked, "noise")  # names and groups
    images = [name for name in asked if name not in PERTURBATIONS and name in names]
    if images:  # named on their own; groups such as `all` just leave image ones out
        raise AnbenchError(f"perturb: {', '.join(images)} perturbs images, not text; see "
                           "`anbench perturb-image`")
    texts = [name for name in names if name in PERTURBATIONS]
    if names and not texts:
        raise AnbenchError(f"perturb: {', '.join(asked)} holds image perturbations only; see "
                           "`anbench perturb-image`")
    names = texts
    if not names:
        raise AnbenchError(f"perturb: no perturbation named; known: "
                           f"{', '.join(PERTURBATIONS.names())}")
    params: dict[str, Any] = {}
    for name in names:
        configured = cfg.plugin_params("perturbations", name)
        values = configured.model_dump() if configured is not None else {}
        if severity is not None:
            values["severity"] = (list(severity) if isinstance(severity, Iterable)
                                  and not isinstance(severity, str) else severity)
        params[name] = values
    mask_token = backbone_mask_token(backbone_source(cfg, cfg.run.backbone))
    rows = preview(text, names, seed, class_name, mask_token, params=params)
    return pd.DataFrame(rows, columns=["noise", "severity", "text"])


def perturb_image(out: str | Path = "perturb-image.png", *, dataset: str | None = None,
                  image: str | Path | None = None, names: str | Iterable[str] = "image",
                  seed: int = 1, size: int | None = None, config: str | Path | None = None,
                  sets: Iterable[str] | None = None, plugins: Iterable[str] | None = None
                  ) -> Path:
    """A PNG grid of one image under image corruptions (rows) and severities (columns, 0 =
    clean): `image` (a file), else the first test image of `dataset` (default: the first
    configured dataset). `names`: image perturbations and groups (default: all that act on
    pixels). Severities are the configured ones (bench.yaml). Returns the PNG's path."""
    from anbench import image_grid
    from anbench.backbones.loading import config_cache_dir
    from anbench.config import load_config
    from anbench.data.loading import dataset_source
    from anbench.noise_groups import expand, groups
    from anbench.registry import IMAGE_PERTURBATIONS

    cfg = load_config(Path(config) if config is not None else None, list(sets or []),
                      extra_plugins=list(plugins or []))
    size = image_grid.DEFAULT_SIZE if size is None else int(size)
    if size < 8:
        raise AnbenchError(f"--size {size}: give 8 or more pixels")
    values = names.split(",") if isinstance(names, str) else [str(n) for n in names]
    asked = [n.strip() for n in values if n.strip()]
    expanded = expand(asked, "--names")
    table, image_names = groups(), set(IMAGE_PERTURBATIONS.names())
    texts = [n for n in asked if n not in table and n not in image_names]
    if texts:
        raise AnbenchError(f"--names: {', '.join(texts)} perturbs text, not images; see "
                           "`anbench perturb`")
    params = {n: cfg.plugin_params("perturbations", n) for n in expanded if n in image_names}
    explicit = all(n not in table for n in asked)
    perturbations = image_grid.pixel_perturbations(expanded, explicit, params)
    if not perturbations:
        raise AnbenchError(f"--names {','.join(asked)}: no image perturbation that acts on "
                           "pixels")
    if image is not None:
        picture, image_id, title = (image_grid.read_image(image), f"file:{Path(image).name}",
                                    str(image))
    else:
        name = dataset or (cfg.run.datasets[0] if cfg.run.datasets else None)
        if not name:
            raise AnbenchError("--dataset: no dataset named and none configured")
        loaded = dataset_source(cfg, name).load(config_cache_dir(cfg))
        if len(loaded.test) == 0:
            raise AnbenchError(f"--dataset {name}: its test split is empty")
        item, label = loaded.test[0]
        picture = loaded.load_image(item)
        image_id = f"{name}/0"  # the id evaluation keys this image's rng by
        title = f"{name}: first test image ({loaded.classnames[int(label)]})"
    pixels = image_grid.as_array(image_grid.fit(picture, size))
    rows = image_grid.grid(pixels, perturbations, seed, image_id)
    return image_grid.write_grid(rows, Path(out), f"{title}; seed {seed}")


# ---------------------------------------------------------------------------------- reports
HTML = "html"


def write_reports(root: Path, formats: Sequence[str] | str | None = None,
                  out: Path | None = None) -> list[Path]:
    """The suite's reports in `formats` (md, tex, csv, png, pdf, html); returns the index
    files written (index.md, and index.html when html is asked for)."""
    from anbench.reporting import build_report_info, parse_formats

    items = _format_list(formats)
    html = HTML in items
    others = [f for f in items if f != HTML]
    parse_formats(others or ["md"])  # unknown formats fail before anything is written
    store = SuiteStore(root)
    results = store.results_path
    if not results.is_file():
        raise AnbenchError(f"no results at {results}; run `anbench run` first")
    out_dir = Path(out) if out is not None else root / "report"
    if not html:
        return [build_report_info(results, out_dir, others).index]
    from anbench.reporting.html import build_html

    # the HTML page embeds the PNG figures, so PNG is always among what gets written
    built = build_report_info(results, out_dir, [*others, "png"])
    return [built.index, build_html(root, built, out_dir)]


def _format_list(formats: Sequence[str] | str | None) -> list[str]:
    if formats is None:
        return ["md", "tex", "csv"]
    if isinstance(formats, str):
        formats = [formats]
    items = [f.strip().lower().lstrip(".") for part in formats for f in str(part).split(",")]
    items = [f for f in items if f]
    if not items:
        raise AnbenchError("no report format named; known: md, tex, csv, png, pdf, html")
    return items


# ---------------------------------------------------------------------------------- handles
@dataclass
class Cell:
    """One stored cell: its key, parameters, training history, arrays and sentences."""

    key: CellKey
    directory: Path
    current: bool = True  # in results.csv (False: computed under other settings)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Cell({self.key.label()}, {self.directory})"

    @property
    def meta(self) -> dict[str, Any]:
        if "meta" not in self._cache:
            path = self.directory / "meta.json"
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise AnbenchError(f"cannot read {path}: {exc}") from None
            if not isinstance(meta, dict):
                raise AnbenchError(f"{path} does not hold a JSON object")
            self._cache["meta"] = meta
        return self._cache["meta"]

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters the cell was trained with."""
        return dict(self.meta.get("method_params") or {})

    @property
    def history(self) -> pd.DataFrame:
        """One row per optimiser step: step, epoch, loss, each loss term, lr, seconds
        (empty for methods that do not train)."""
        records = [r for r in self.meta.get("history") or [] if isinstance(r, dict)]
        frame = pd.DataFrame.from_records(records)
        first = [c for c in ("step", "epoch", "loss") if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """arrays.npz: `<split>/labels`, `<split>/logits/<condition>`, `<split>/text/...`;
        perturbed entries carry a leading axis of noise draws."""
        if "arrays" not in self._cache:
            path = self.directory / "arrays.npz"
            try:
                with np.load(path, allow_pickle=False) as data:
                    self._cache["arrays"] = {name: data[name] for name in data.files}
            except (OSError, ValueError, EOFError) as exc:
                raise AnbenchError(f"cannot read {path}: {exc}") from None
        return self._cache["arrays"]

    @property
    def rows(self) -> pd.DataFrame:
        """The cell's own rows of the results table."""
        from anbench.reporting.results import read_results

        return read_results(self.directory / "rows.csv")

    @property
    def splits(self) -> list[str]:
        return list((self.meta.get("classes") or {}).keys())

    def classes(self, split: str) -> list[str]:
        classes = self.meta.get("classes") or {}
        if split not in classes:
            raise AnbenchError(f"{self.key.label()}: no split '{split}'; it has "
                               f"{', '.join(classes) or 'none'}")
        return [str(c) for c in classes[split]]

    def conditions(self, split: str | None = None) -> list[str]:
        """'clean' and every evaluation condition ('drop@0.3', ...) of a split."""
        split = split or (self.splits[0] if self.splits else "")
        prefix = f"{split}/logits/"
        names = [k[len(prefix):] for k in self.arrays if k.startswith(prefix)]
        return ["clean"] + [n for n in names if n != "clean"]

    def sentences(self, split: str | None = None) -> pd.DataFrame:
        """Class sentences as evaluated: split, condition ('clean' or e.g. 'drop@0.3'), draw,
        class_index, class, sentence."""
        stored = self.meta.get("sentences") or {}
        rows = []
        for name in [split] if split is not None else list(stored):
            classes = self.classes(name)
            for condition, value in (stored.get(name) or {}).items():
                draws = value if value and isinstance(value[0], list) else [value]
                for draw, sentences in enumerate(draws):
                    for index, sentence in enumerate(sentences):
                        rows.append((name, condition, draw, index,
                                     classes[index] if index < len(classes) else "", sentence))
        return pd.DataFrame(rows, columns=["split", "condition", "draw", "class_index", "class",
                                           "sentence"])

    def per_class_accuracy(self, split: str | None = None) -> pd.DataFrame:
        """Accuracy (%) of each class under each condition (mean over noise draws): split,
        condition, class_index, class, images, accuracy."""
        arrays = self.arrays
        rows = []
        for name in [split] if split is not None else self.splits:
            labels = arrays.get(f"{name}/labels")
            if labels is None:
                raise AnbenchError(f"{self.key.label()}: arrays.npz has no split '{name}'")
            classes = self.classes(name)
            for condition in self.conditions(name):
                logits = arrays[f"{name}/logits/{condition}"]
                draws = logits if logits.ndim == 3 else logits[None]
                correct = np.mean([d.argmax(1) == labels for d in draws], axis=0)
                for index, cname in enumerate(classes):
                    mine = labels == index
                    n = int(mine.sum())
                    acc = 100.0 * float(correct[mine].mean()) if n else math.nan
                    rows.append((name, condition, index, cname, n, acc))
        return pd.DataFrame(rows, columns=["split", "condition", "class_index", "class",
                                           "images", "accuracy"])


class Suite:
    """A results folder (`runs/<suite>`): the typed results table and its cells."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()  # a notebook may change directory later
        self.store = SuiteStore(self.root)
        self._results: tuple[Any, pd.DataFrame] | None = None

    def __repr__(self) -> str:
        return f"Suite({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def results(self) -> pd.DataFrame:
        """results.csv with typed columns: shots, seed int64; severity, alpha, value float64
        (NaN where not applicable); the other columns strings."""
        from anbench.reporting.results import read_results

        path = self.store.results_path
        try:
            stat = path.stat()
            signature: Any = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            raise AnbenchError(f"no results at {path}; run `anbench run` first") from None
        if self._results is None or self._results[0] != signature:
            frame = read_results(path)
            for column in STRING_COLUMNS:
                frame[column] = frame[column].astype("str")
            self._results = (signature, frame)
        return self._results[1].copy()

    @property
    def df(self) -> pd.DataFrame:
        return self.results

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.results["dataset"]))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.results["method"]))

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config of the latest run that trained a cell (config.yaml)."""
        return self._read("config.yaml", yaml.safe_load)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._read("manifest.json", json.loads)

    def _read(self, name: str, parse: Any) -> dict[str, Any]:
        path = self.root / name
        try:
            data = parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise AnbenchError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise AnbenchError(f"{path} does not hold a mapping")
        return data

    def _stored(self) -> list[tuple[StoredCell, bool]]:
        current = self.store.result_keys()
        return [(c, c.key in current) for c in self.store.stored_cells() if c.intact]

    def cells(self, include_stale: bool = False) -> pd.DataFrame:
        """One row per intact cell: its key, whether results.csv holds it, and its folder."""
        rows = [{**vars(c.key), "current": cur, "path": str(c.directory)}
                for c, cur in self._stored() if cur or include_stale]
        columns = ["backbone", "dataset", "method", "train_noise", "shots", "seed", "current",
                   "path"]
        return pd.DataFrame(rows, columns=columns)

    def cell(self, method: str | None = None, dataset: str | None = None,
             train_noise: str | None = None, seed: int | None = None, shots: int | None = None,
             backbone: str | None = None) -> Cell:
        """The one current cell that matches; fails listing the candidates when several do."""
        wanted = {"method": method, "dataset": dataset, "train_noise": train_noise,
                  "seed": seed, "shots": shots, "backbone": backbone}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        found = [(c, cur) for c, cur in self._stored()
                 if cur and all(getattr(c.key, k) == v for k, v in wanted.items())]
        if len(found) == 1:
            stored, cur = found[0]
            return Cell(stored.key, stored.directory, cur)
        what = ", ".join(f"{k}={v}" for k, v in wanted.items()) or "no filter"
        if not found:
            raise AnbenchError(f"no complete, current cell matches {what} in {self.root}")
        shown = "; ".join(c.key.label() for c, _ in found[:6])
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        raise AnbenchError(f"{len(found)} cells match {what}: {shown}{more}; name more of "
                           "method, dataset, train_noise, seed, shots, backbone")

    def all_cells(self) -> list[Cell]:
        """Every current cell, in the store's order."""
        return [Cell(c.key, c.directory, cur) for c, cur in self._stored() if cur]

    def report(self, formats: Sequence[str] | str | None = None,
               out: str | Path | None = None) -> Path:
        """Write the reports (default md, tex, csv; add 'html' for index.html) and return the
        main index: index.html when html was asked for, else index.md."""
        return write_reports(self.root, formats, Path(out) if out is not None else None)[-1]


__all__ = ["Cell", "Suite", "load", "perturb", "run", "write_reports"]
