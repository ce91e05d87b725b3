"""Shared machinery for `anbench report`: results -> paper-style tables and figures.

Reports read the runner's long results table only; they never load a model, so they run anywhere
in seconds. Each registered report (a module in `reports/`) turns a `ReportContext` into tables and
figure specs; this module aggregates over seeds, orders methods, keeps one palette, writes
Markdown / LaTeX (booktabs) / CSV tables and PNG / PDF figures, and writes `index.md`.

Aggregation convention (one rule for every report):
- a *cell* is one combination of the dimensions a statistic averages over (e.g. dataset x split);
  its value is the mean over its seeds;
- the reported mean is the mean of the cell means (CoCoOp/MaPLe: average over datasets first);
- the std (sample std, ddof=1) and n are taken over the per-seed averages of the seeds that every
  cell has, so a partial seed never skews the spread;
- HM is the harmonic mean of the mean Base and mean New, never a mean of HMs; its std is over the
  per-seed HMs.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from anbench.registry import REPORTS, AnbenchError

if TYPE_CHECKING:  # matplotlib is imported lazily: tables alone must not pay for it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RESULT_COLUMNS: tuple[str, ...] = (
    "suite", "dataset", "backbone", "method", "train_noise", "shots", "seed", "split",
    "eval_noise", "severity", "alpha", "metric", "value",
)
_STRING_COLUMNS = ("suite", "dataset", "backbone", "method", "train_noise", "shots", "seed",
                   "split", "eval_noise", "metric")
_NUMERIC_COLUMNS = ("severity", "alpha", "value")

# Canonical orders; names not listed follow alphabetically, so unknown plugins still sort stably.
METHOD_ORDER: tuple[str, ...] = (
    "zeroshot", "coop", "dapt", "anprompt", "anprompt-wo-nrvpp", "anprompt-wo-waloss",
    "anprompt-wo-noise",
)
NOISE_ORDER: tuple[str, ...] = ("clean", "none", "wsp", "drop", "mask", "shuffle", "synonym")
# Paper order (CoOp's 11 datasets, then ImageNet variants); keys are normalised names.
_DATASET_RANK: dict[str, int] = {
    "imagenet": 0, "caltech101": 1, "oxfordpets": 2, "stanfordcars": 3, "flowers102": 4,
    "oxfordflowers": 4, "oxfordflowers102": 4, "food101": 5, "fgvcaircraft": 6, "sun397": 7,
    "dtd": 8, "describabletextures": 8, "eurosat": 9, "ucf101": 10, "imagenetv2": 11,
    "imagenetsketch": 12, "imageneta": 13, "imagenetr": 14,
}
ZEROSHOT = "zeroshot"
DEFAULT_TRAIN_NOISE = "wsp"  # ANPrompt's default training noise (METHOD.md 3.4)
CLEAN = "clean"

TABLE_FORMATS: tuple[str, ...] = ("md", "tex", "csv")
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf")

# Fixed colour index per canonical method in seaborn's colour-blind palette, so a method keeps
# its colour in every figure and every report; other labels take the remaining colours.
_METHOD_COLOUR: dict[str, int] = {
    "zeroshot": 7, "coop": 4, "dapt": 0, "anprompt": 3, "anprompt-wo-nrvpp": 1,
    "anprompt-wo-waloss": 2, "anprompt-wo-noise": 9,
}
_SPARE_COLOURS = (5, 6, 8)

MISSING_CELL = "–"

Palette = dict[str, str]


# ----------------------------------------------------------------------------------------------
# ordering and labels

def _rank_key(name: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(name), "") if name in order else (len(order), name)


def method_sort_key(method: str) -> tuple[int, str]:
    return _rank_key(method, METHOD_ORDER)


def order_methods(names: Iterable[str]) -> list[str]:
    """Canonical methods in paper order, then any other names alphabetically."""
    return sorted(set(names), key=method_sort_key)


def split_label(label: str) -> tuple[str, str]:
    """'anprompt (drop)' -> ('anprompt', 'drop'); a bare method name has no noise part."""
    method, sep, rest = label.partition(" (")
    return (method, rest.rstrip(")")) if sep else (label, "")


def label_sort_key(label: str) -> tuple[Any, ...]:
    method, noise = split_label(label.rstrip("†"))
    return (*method_sort_key(method), noise != "", *noise_sort_key(noise))


def order_labels(labels: Iterable[str]) -> list[str]:
    return sorted(set(labels), key=label_sort_key)


def noise_sort_key(noise: str) -> tuple[int, str]:
    return _rank_key(noise, NOISE_ORDER)


def order_noises(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=noise_sort_key)


def dataset_sort_key(name: str) -> tuple[int, str]:
    norm = re.sub(r"[^a-z0-9]", "", name.lower())
    return (_DATASET_RANK.get(norm, len(_DATASET_RANK) + 1), name)


def order_datasets(names: Iterable[str]) -> list[str]:
    """Paper order for the known datasets (independent of row order in the file), then A-Z."""
    return sorted(set(names), key=dataset_sort_key)


def natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


def fmt_num(x: float) -> str:
    """Compact number for labels: 0.3 -> '0.3', inf -> '∞'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING_CELL
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:g}"


def slug(text: str) -> str:
    """A file-name-safe kebab form: 'ViT-B/16' -> 'vit-b-16', '0.3' -> '0p3'."""
    text = str(text).lower().replace(".", "p").replace("∞", "inf")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "x"


def make_palette(labels: Iterable[str]) -> Palette:
    """One colour per method label, stable across figures (canonical methods have fixed ones)."""
    import seaborn as sns

    base = sns.color_palette("colorblind", 10).as_hex()
    palette: Palette = {}
    extra: list[str] = []
    # canonical methods always have their colour, so a figure may use it with or without rows
    for label in order_labels([*labels, *METHOD_ORDER]):
        if label in _METHOD_COLOUR:
            palette[label] = base[_METHOD_COLOUR[label]]
        else:
            extra.append(label)
    spare = [base[i] for i in _SPARE_COLOURS]
    if len(extra) > len(spare):
        spare += sns.color_palette("husl", len(extra) - len(spare)).as_hex()
    palette.update(zip(extra, spare, strict=False))
    return palette


# ----------------------------------------------------------------------------------------------
# loading

def load_results(path: Path | str) -> pd.DataFrame:
    """Read a runner results.csv; every column is checked, numbers parsed, labels not added."""
    path = Path(path)
    if not path.is_file():
        raise AnbenchError(f"no results file at {path}")
    # keep_default_na=False: 'none' / 'NA' are names here, not missing values
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return normalise_results(frame)


def normalise_results(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise AnbenchError(f"results table lacks column(s): {', '.join(missing)}; "
                           f"expected {', '.join(RESULT_COLUMNS)}")
    df = frame[list(RESULT_COLUMNS)].copy()
    for col in _STRING_COLUMNS:
        df[col] = df[col].map(_as_text).astype(object)
    df["metric"] = df["metric"].str.lower()
    for col in _NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col].map(_as_text).replace({"": "nan"}), errors="coerce")
    return df.reset_index(drop=True)


def _as_text(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))  # a seed or shots read as 1.0 must still be '1'
    return str(x).strip()


def assign_labels(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label rows by method, and pick one training noise per method for the main tables.

    A method trained under one noise is labelled by its name; under several, the default `wsp`
    keeps the bare name (and is what the main tables show) and the others become
    'method (noise)'; without `wsp`, every noise gets its own 'method (noise)' row.
    Returns (all rows labelled, main rows).
    """
    df = df.copy()
    labels: dict[tuple[str, str], str] = {}
    main_keys: set[tuple[str, str]] = set()
    for method, noises in df.groupby("method", sort=False)["train_noise"].unique().items():
        noises = set(noises)
        for noise in noises:
            key = (str(method), str(noise))
            if len(noises) == 1 or noise == DEFAULT_TRAIN_NOISE:
                labels[key] = str(method)
            else:
                labels[key] = f"{method} ({noise})"
            if DEFAULT_TRAIN_NOISE not in noises or noise == DEFAULT_TRAIN_NOISE:
                main_keys.add(key)
    keys = list(zip(df["method"], df["train_noise"], strict=True))
    df["label"] = [labels[k] for k in keys]
    main = df[np.array([k in main_keys for k in keys], dtype=bool)].reset_index(drop=True)
    return df, main


def add_perturbation_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add `perturbation`: the eval noise, plus only the setting parts that vary for it."""
    df = df.copy()
    names: dict[tuple[str, Any, Any], str] = {}
    for noise, sub in df.groupby("eval_noise", sort=False):
        combos = sorted({(_nan_key(s), _nan_key(a)) for s, a in zip(sub["severity"], sub["alpha"],
                                                                      strict=True)},
                        key=lambda c: (_sort_num(c[0]), _sort_num(c[1])))
        vary_s = len({c[0] for c in combos}) > 1
        vary_a = len({c[1] for c in combos}) > 1
        for sev, alpha in combos:
            parts = ([f"s={fmt_num(_unkey(sev))}"] if vary_s else []) + (
                [f"α={fmt_num(_unkey(alpha))}"] if vary_a else [])
            label = f"{noise} ({', '.join(parts)})" if parts else str(noise)
            names[(str(noise), sev, alpha)] = label
    df["perturbation"] = [names[(n, _nan_key(s), _nan_key(a))] for n, s, a in
                          zip(df["eval_noise"], df["severity"], df["alpha"], strict=True)]
    return df


def _nan_key(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _unkey(x: Any) -> float:
    return math.nan if x is None else x


def _sort_num(x: Any) -> float:
    return -math.inf if x is None else x


def order_perturbations(df: pd.DataFrame) -> list[str]:
    """Perturbation labels in canonical noise order, settings by severity then alpha."""
    seen: dict[str, tuple[Any, ...]] = {}
    for label, noise, sev, alpha in zip(df["perturbation"], df["eval_noise"], df["severity"],
                                        df["alpha"], strict=True):
        seen.setdefault(label, (*noise_sort_key(noise), _sort_num(_nan_key(sev)),
                                _sort_num(_nan_key(alpha))))
    return sorted(seen, key=lambda lab: seen[lab])


# ----------------------------------------------------------------------------------------------
# aggregation over seeds and cells

@dataclass(frozen=True)
class Stat:
    """A mean with the std and number of seeds behind it (std is NaN for fewer than 2)."""

    mean: float
    std: float = math.nan
    n: int = 0


def harmonic_mean(base: float, new: float) -> float:
    if math.isnan(base) or math.isnan(new):
        return math.nan
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def reduce_cells(rows: pd.DataFrame, cells: Sequence[str],
                 weight_by: Sequence[str] = ()) -> tuple[float, pd.Series]:
    """Mean over cells of the per-cell seed means, and the per-seed means over the cells.

    `rows` holds `cells` columns, `seed` and `value`. Per-seed means use only the seeds present
    in every cell. With `weight_by`, each group of cells counts equally (e.g. each perturbation,
    however many severities it was evaluated at).
    """
    if rows.empty:
        return math.nan, pd.Series(dtype=float)
    keys = list(cells)
    per = rows.groupby([*keys, "seed"], sort=True)["value"].mean()
    if not keys:
        return float(per.mean()), per
    wide = per.unstack("seed")
    index = wide.index.to_frame(index=False)
    if weight_by:
        groups = index.groupby(list(weight_by), sort=False)
        weights = 1.0 / (groups[keys[0]].transform("size").to_numpy() * groups.ngroups)
    else:
        weights = np.full(len(index), 1.0 / len(index))
    mean = float(np.dot(weights, wide.mean(axis=1).to_numpy()))
    complete = [s for s in wide.columns if wide[s].notna().all()]
    per_seed = pd.Series(wide[complete].to_numpy().T @ weights if complete else [],
                         index=complete, dtype=float)
    return mean, per_seed


def make_stat(mean: float, per_seed: pd.Series) -> Stat:
    std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
    return Stat(mean, std, int(len(per_seed)))


def summarise(rows: pd.DataFrame, cells: Sequence[str], weight_by: Sequence[str] = ()) -> Stat:
    return make_stat(*reduce_cells(rows, cells, weight_by))


@dataclass(frozen=True)
class BaseNew:
    base: Stat
    new: Stat
    hm: Stat
    datasets: tuple[str, ...]


def base_new(rows: pd.DataFrame) -> BaseNew | None:
    """Base / New / HM over the datasets in `rows` (clean accuracy of one label).

    Only datasets with both a base and a new result count; HM is of the averaged Base and New.
    """
    have = rows.groupby("dataset")["split"].agg(lambda s: {"base", "new"} <= set(s))
    datasets = tuple(order_datasets(have.index[have.to_numpy(dtype=bool)]))
    if not datasets:
        return None
    rows = rows[rows["dataset"].isin(datasets)]
    b_mean, b_seed = reduce_cells(rows[rows["split"] == "base"], ["dataset"])
    n_mean, n_seed = reduce_cells(rows[rows["split"] == "new"], ["dataset"])
    common = [s for s in b_seed.index if s in n_seed.index]
    h_seed = pd.Series([harmonic_mean(b_seed[s], n_seed[s]) for s in common], index=common,
                       dtype=float)
    return BaseNew(make_stat(b_mean, b_seed), make_stat(n_mean, n_seed),
                   make_stat(harmonic_mean(b_mean, n_mean), h_seed), datasets)


# ----------------------------------------------------------------------------------------------
# tables

@dataclass(frozen=True)
class Column:
    key: str  # CSV header stem
    header: str  # display header, with units
    digits: int = 2
    better: str | None = None  # "max" or "min": which value is bold within a block


@dataclass
class Row:
    labels: list[str]
    cells: list[Stat | None]
    block: str = ""
    ranked: bool = True  # False: shown, but not a candidate for bold (e.g. fewer datasets)


@dataclass
class Table:
    name: str
    title: str
    label_headers: list[str]
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def cell(self, labels: Sequence[str], key: str) -> Stat | None:
        """The cell at the row whose labels are `labels` (blocks included) and column `key`."""
        col = [c.key for c in self.columns].index(key)
        for row in self.rows:
            if list(row.labels) == list(labels):
                return row.cells[col]
        raise KeyError(f"no row {labels!r} in table {self.name}")

    def bold(self) -> set[tuple[int, int]]:
        """(row, column) positions of the best value per block and column (ties all bold)."""
        out: set[tuple[int, int]] = set()
        for j, col in enumerate(self.columns):
            if col.better not in ("max", "min"):
                continue
            blocks = itertools.groupby(range(len(self.rows)), key=lambda i: self.rows[i].block)
            for _, idx in blocks:
                vals = [(i, round(self.rows[i].cells[j].mean, col.digits)) for i in idx
                        if self.rows[i].ranked and self.rows[i].cells[j] is not None
                        and not math.isnan(self.rows[i].cells[j].mean)]
                if len(vals) < 2:  # a lone value is not "best" of anything
                    continue
                pick = max if col.better == "max" else min
                best = pick(v for _, v in vals)
                out.update((i, j) for i, v in vals if v == best)
        return out

    def _display_labels(self) -> list[list[str]]:
        shown: list[list[str]] = []
        prev: Row | None = None
        for row in self.rows:
            labels = list(row.labels)
            # repeat the block label only on the block's first row (paper layout)
            if (len(labels) > 1 and prev is not None and prev.block == row.block
                    and prev.labels[0] == labels[0]):
                labels[0] = ""
            shown.append(labels)
            prev = row
        return shown

    def to_markdown(self) -> str:
        bold = self.bold()
        head = [*self.label_headers, *(c.header for c in self.columns)]
        align = ["---"] * len(self.label_headers) + ["---:"] * len(self.columns)
        lines = [_md_row(head), _md_row(align)]
        for i, (row, labels) in enumerate(zip(self.rows, self._display_labels(), strict=True)):
            cells = [format_stat(s, c.digits, (i, j) in bold, "md")
                     for j, (s, c) in enumerate(zip(row.cells, self.columns, strict=True))]
            lines.append(_md_row([*labels, *cells]))
        text = "\n".join(lines) + "\n"
        if self.notes:
            text += "\n" + "\n".join(f"- {n}" for n in self.notes) + "\n"
        return text

    def to_latex(self) -> str:
        bold = self.bold()
        spec = "l" * len(self.label_headers) + "r" * len(self.columns)
        head = [*self.label_headers, *(c.header for c in self.columns)]
        lines = [
            "% Generated by `anbench report`; needs \\usepackage{booktabs}.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{tex_escape(self.title)}}}",
            f"\\label{{tab:{self.name}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(tex_escape(h) for h in head) + " \\\\",
            "\\midrule",
        ]
        prev_block: str | None = None
        for i, (row, labels) in enumerate(zip(self.rows, self._display_labels(), strict=True)):
            if prev_block is not None and row.block != prev_block:
                lines.append("\\midrule")
            prev_block = row.block
            cells = [format_stat(s, c.digits, (i, j) in bold, "tex")
                     for j, (s, c) in enumerate(zip(row.cells, self.columns, strict=True))]
            lines.append(" & ".join([*(tex_escape(x) for x in labels), *cells]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        for note in self.notes:
            lines.append(f"\\par\\smallskip{{\\footnotesize {tex_escape(note)}}}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        head = list(self.label_headers)
        for col in self.columns:
            head += [col.key, f"{col.key}_std", f"{col.key}_n"]
        writer.writerow(head)
        for row in self.rows:
            out = list(row.labels)
            for stat in row.cells:
                if stat is None:
                    out += ["", "", ""]
                else:
                    out += [_csv_num(stat.mean), _csv_num(stat.std), str(stat.n)]
            writer.writerow(out)
        return buf.getvalue()

    def render(self, fmt: str) -> str:
        return {"md": self.to_markdown, "tex": self.to_latex, "csv": self.to_csv}[fmt]()


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _csv_num(x: float) -> str:
    return "" if math.isnan(x) else _fixed(x, 4)


def _fixed(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text  # no '-0.00'


def format_stat(stat: Stat | None, digits: int, bold: bool, fmt: str) -> str:
    """'71.23 ± 0.45 (3)': mean ± std (seeds); the mean in bold when it is the best."""
    if stat is None or math.isnan(stat.mean):
        return MISSING_CELL if fmt == "md" else "--"
    mean = _fixed(stat.mean, digits)
    if bold:
        mean = f"**{mean}**" if fmt == "md" else f"\\textbf{{{mean}}}"
    pm = " ± " if fmt == "md" else " $\\pm$ "
    spread = "" if math.isnan(stat.std) else pm + _fixed(stat.std, digits)
    return f"{mean}{spread} ({stat.n})"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "α": r"$\alpha$", "∞": r"$\infty$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
    "±": r"$\pm$", "†": r"\textsuperscript{\dag}", "–": "--", "Δ": r"$\Delta$", "×": r"$\times$",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


BASE_NEW_COLUMNS: tuple[Column, ...] = (
    Column("base", "Base", 2, "max"),
    Column("new", "New", 2, "max"),
    Column("hm", "HM", 2, "max"),
)


def base_new_rows(acc: pd.DataFrame, labels: Sequence[str], block: str,
                  datasets: Sequence[str], label_cells: Callable[[str], list[str]] | None = None,
                  ) -> tuple[list[Row], list[str]]:
    """One Base/New/HM row per label over `datasets`; a label lacking some is marked with †."""
    rows: list[Row] = []
    notes: list[str] = []
    for label in labels:
        bn = base_new(acc[acc["label"] == label])
        shown = label
        cells: list[Stat | None] = [None, None, None]
        if bn is not None:
            cells = [bn.base, bn.new, bn.hm]
            lacking = [d for d in datasets if d not in bn.datasets]
            if lacking and len(datasets) > 1:  # an average over fewer datasets is not comparable
                shown = f"{label}†"
                notes.append(f"† {label}: averaged over {len(bn.datasets)} of {len(datasets)} "
                             f"datasets (no base and new results for {', '.join(lacking)})")
        labels_out = label_cells(shown) if label_cells else [block, shown]
        rows.append(Row(labels_out, cells, block, ranked=shown == label))
    return rows, notes


# ----------------------------------------------------------------------------------------------
# figures

@dataclass
class FigureSpec:
    """A figure as data plus a drawing function; `data` is exactly what is plotted (tidy)."""

    name: str
    title: str
    data: pd.DataFrame
    draw: Callable[[Figure, pd.DataFrame, Palette], None]
    size: tuple[float, float] = (3.4, 2.6)  # inches; 3.4 in is one column of a 2-column paper


@contextmanager
def plot_style() -> Iterator[None]:
    """Small, column-width-friendly fonts on a seaborn whitegrid style; no global state change."""
    import matplotlib as mpl
    import seaborn as sns

    rc = dict(sns.axes_style("whitegrid"))
    rc.update({
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
        "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
        "axes.linewidth": 0.6, "grid.linewidth": 0.4, "lines.linewidth": 1.2,
        "lines.markersize": 4, "pdf.fonttype": 42, "svg.fonttype": "none",
    })
    with mpl.rc_context(rc):
        yield


def render_figure(spec: FigureSpec, palette: Palette) -> Figure:
    # Figure + Agg canvas instead of pyplot: the Agg backend without touching global state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with plot_style():
        fig = Figure(figsize=spec.size, layout="constrained")
        FigureCanvasAgg(fig)
        spec.draw(fig, spec.data, palette)
    return fig


def save_figure(fig: Figure, path: Path, fmt: str) -> None:
    metadata: dict[str, Any] = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
    with plot_style(), _atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=300, metadata=metadata)


def grouped_bars(ax: Axes, data: pd.DataFrame, *, x: str, hue: str, x_order: Sequence[str],
                 hue_order: Sequence[str], palette: Palette, value: str = "mean",
                 err: str | None = "std", ticklabels: bool = True) -> None:
    """Bars grouped by `x`, one colour per `hue`, with error bars (std over seeds)."""
    width = 0.8 / max(len(hue_order), 1)
    for j, h in enumerate(hue_order):
        sub = data[data[hue] == h].set_index(x)
        pos, ys, es = [], [], []
        for i, xv in enumerate(x_order):
            if xv in sub.index:
                pos.append(i - 0.4 + width * (j + 0.5))
                ys.append(float(sub.loc[xv, value]))
                e = float(sub.loc[xv, err]) if err else 0.0
                es.append(0.0 if math.isnan(e) else e)
        if pos:
            ax.bar(pos, ys, width * 0.92, color=palette.get(h, "0.5"), label=h,
                   yerr=es if err else None, error_kw={"elinewidth": 0.6, "capsize": 1.2,
                                                       "capthick": 0.6})
    if ticklabels:
        ax.set_xticks(range(len(x_order)), list(x_order), rotation=30, ha="right")
    else:
        ax.set_xticks(range(len(x_order)), [""] * len(x_order))
    ax.set_xlim(-0.6, len(x_order) - 0.4)
    ax.grid(axis="x", visible=False)  # category positions need no grid lines


def figure_legend(fig: Figure, axes: Sequence[Axes], order: Sequence[str]) -> None:
    """One legend above all panels, in method order, in as many columns as fit one column."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = [k for k in order if k in handles] + [k for k in handles if k not in order]
    if not labels:
        return
    ncols = 3 if max(len(k) for k in labels) <= 10 else 2
    fig.legend([handles[k] for k in labels], labels, loc="outside upper center",
               ncols=min(len(labels), ncols), frameon=False)


def zoom_percent(ax: Axes, values: Iterable[float], top: float | None = None) -> None:
    """Start a percentage axis near the data: differences of a point are invisible from 0."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return
    low = max(0.0, 5 * math.floor((min(finite) - 3) / 5))
    ax.set_ylim(low, top if top is not None else max(finite) + 2)


# ----------------------------------------------------------------------------------------------
# missing-cell descriptions

def describe_missing(rows: pd.DataFrame, dims: Sequence[str], unit: str = "label",
                     limit: int = 6) -> list[str]:
    """What each unit (method label) lacks relative to the grid the others cover.

    Reports whole missing values of the first dimension (e.g. a dataset), then missing cells,
    then seeds a cell lacks relative to the unit's other cells.
    """
    if rows.empty:
        return []
    values = {d: _ordered(d, rows[d]) for d in dims}
    grid = list(itertools.product(*(values[d] for d in dims)))
    out: list[str] = []
    for unit_value in order_labels(rows[unit].unique()):
        sub = rows[rows[unit] == unit_value]
        seeds_by_cell = sub.groupby(list(dims), sort=False)["seed"].agg(set)
        present = {(k if isinstance(k, tuple) else (k,)) for k in seeds_by_cell.index}
        absent = [c for c in grid if c not in present]
        whole: list[tuple[int, str]] = []  # (dim index, value) the unit has no cell for at all
        for i, dim in enumerate(dims):
            lacking = [v for v in values[dim] if all(c[i] != v for c in present)]
            if lacking:
                out.append(f"{unit_value}: no results for {dim} {', '.join(lacking)}")
                whole += [(i, v) for v in lacking]
        rest = ["/".join(c) for c in absent if not any(c[i] == v for i, v in whole)]
        if rest:
            more = f" (+{len(rest) - limit} more)" if len(rest) > limit else ""
            out.append(f"{unit_value}: missing {'/'.join(dims)} {', '.join(rest[:limit])}{more}")
        all_seeds = set().union(*seeds_by_cell.to_list())
        gaps: dict[tuple[str, ...], list[str]] = {}
        for key, seeds in seeds_by_cell.items():
            lack = tuple(sorted(all_seeds - seeds, key=natural_key))
            if lack:
                cell = "/".join(key if isinstance(key, tuple) else (key,))
                gaps.setdefault(lack, []).append(cell)
        for lack, cells in sorted(gaps.items()):
            cells = sorted(cells, key=lambda c: _cell_key(c, dims))
            more = f" (+{len(cells) - limit} more)" if len(cells) > limit else ""
            word = "seed" if len(lack) == 1 else "seeds"
            out.append(f"{unit_value}: {word} {', '.join(lack)} missing for "
                       f"{', '.join(cells[:limit])}{more}")
    return out


def _ordered(dim: str, values: Iterable[str]) -> list[str]:
    if dim == "dataset":
        return order_datasets(values)
    if dim in ("method", "label"):
        return order_labels(values)
    if dim in ("eval_noise", "train_noise"):
        return order_noises(values)
    return sorted(set(values), key=natural_key)


def _cell_key(cell: str, dims: Sequence[str]) -> tuple[Any, ...]:
    return tuple(dataset_sort_key(p) if d == "dataset" else natural_key(p)
                 for d, p in zip(dims, cell.split("/"), strict=False))


# ----------------------------------------------------------------------------------------------
# the report contract

@dataclass
class ReportResult:
    """What a report produced: tables and figures to write, notes and missing cells to show."""

    tables: list[Table] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class ReportContext:
    """The results one report run sees (one backbone/shots setting), already labelled."""

    results: pd.DataFrame  # every row, `label` = method or 'method (noise)'
    main: pd.DataFrame  # one training noise per method (wsp preferred)
    palette: Palette
    setting: str = ""

    def clean_accuracy(self, frame: pd.DataFrame | None = None,
                       splits: Sequence[str] = ("base", "new")) -> pd.DataFrame:
        df = self.main if frame is None else frame
        return df[(df["eval_noise"] == CLEAN) & (df["metric"] == "acc")
                  & df["split"].isin(splits)].reset_index(drop=True)

    def perturbed(self, metrics: Sequence[str] = ("ts", "lpr", "as")) -> pd.DataFrame:
        df = self.main
        rows = df[(df["eval_noise"] != CLEAN) & df["metric"].isin(metrics)
                  & (df["split"] != "base-new")]
        return add_perturbation_labels(rows).reset_index(drop=True)


class Report:
    """Base class of a registered report.

    Subclasses set `title` (and `order`, the position in index.md) and implement `build`, which
    must only read the context: files are written by the machinery, so a report is testable from
    what it returns. A report without data for itself returns notes, not an exception.
    """

    title: ClassVar[str] = ""
    order: ClassVar[int] = 100
    registry_name: ClassVar[str] = ""

    def build(self, ctx: ReportContext) -> ReportResult:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ReportOutcome:
    name: str
    title: str
    description: str
    setting: str
    result: ReportResult
    files: list[Path] = field(default_factory=list)
    error: str | None = None


@dataclass
class BuildResult:
    index: Path
    outcomes: list[ReportOutcome]
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [f"{o.name}: {m}" for o in self.outcomes for m in o.result.missing]

    def outcome(self, name: str, setting: str = "") -> ReportOutcome:
        for o in self.outcomes:
            if o.name == name and (not setting or o.setting == setting):
                return o
        raise KeyError(name)


def parse_formats(formats: Iterable[str] | str | None) -> tuple[list[str], list[str]]:
    """('md,tex' | ['md','png']) -> (table formats, figure formats); figures default to both."""
    if formats is None:
        items = list(TABLE_FORMATS)
    elif isinstance(formats, str):
        items = [f for f in formats.split(",") if f.strip()]
    else:
        items = [f for part in formats for f in str(part).split(",") if f.strip()]
    items = [f.strip().lower().lstrip(".") for f in items]
    unknown = [f for f in items if f not in TABLE_FORMATS + FIGURE_FORMATS]
    if unknown:
        raise AnbenchError(f"unknown report format(s) {', '.join(unknown)}; "
                           f"known: {', '.join(TABLE_FORMATS + FIGURE_FORMATS)}")
    tables = [f for f in TABLE_FORMATS if f in items]
    figures = [f for f in FIGURE_FORMATS if f in items] or list(FIGURE_FORMATS)
    return tables, figures


def registered_reports() -> list[tuple[str, str, type[Report]]]:
    entries = REPORTS.entries()
    entries.sort(key=lambda e: (getattr(e.obj, "order", 100), e.name))
    return [(e.name, e.description, e.obj) for e in entries]


def settings_of(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split results by (backbone, shots); zero-shot rows join every shots setting.

    Zero-shot does not train, so its shots value (often 0) must not make a setting of its own.
    """
    trained = df[df["method"] != ZEROSHOT]
    source = trained if not trained.empty else df
    combos = sorted({(b, s) for b, s in zip(source["backbone"], source["shots"], strict=True)},
                    key=lambda c: (c[0], natural_key(c[1])))
    if len(combos) <= 1 and df["backbone"].nunique() <= 1:
        return [("", df)]
    out: list[tuple[str, pd.DataFrame]] = []
    for backbone, shots in combos:
        own = (df["backbone"] == backbone) & (df["method"] != ZEROSHOT) & (df["shots"] == shots)
        zs = df[(df["backbone"] == backbone) & (df["method"] == ZEROSHOT)]
        if (zs["shots"] == shots).any():
            zs = zs[zs["shots"] == shots]
        elif not zs.empty:  # one zero-shot evaluation, whatever shots value it carries
            zs = zs[zs["shots"] == min(zs["shots"], key=natural_key)]
        sub = pd.concat([df[own], zs]) if not trained.empty else df[df["backbone"] == backbone]
        label = f"{backbone}, {shots} shots" if not trained.empty else backbone
        out.append((label, sub.reset_index(drop=True)))
    return out


def build_report(results_csv: Path, out_dir: Path,
                 formats: Sequence[str] | str | None = TABLE_FORMATS) -> Path:
    """Run every registered report over `results_csv`; write tables/, figures/, index.md.

    Returns the path of `out_dir/index.md`. Missing results are listed there, never raised.
    """
    return build_report_info(results_csv, out_dir, formats).index


def build_report_info(results_csv: Path | str, out_dir: Path | str,
                      formats: Sequence[str] | str | None = TABLE_FORMATS, *,
                      reports: Sequence[str] | None = None, strict: bool = False,
                      frame: pd.DataFrame | None = None) -> BuildResult:
    """Like `build_report`, returning what each report produced, wrote and found missing.

    `strict` re-raises a report's exception (tests); otherwise it is recorded in index.md so one
    broken report does not take the others down. `frame` supplies results already in memory.
    """
    results_csv, out_dir = Path(results_csv), Path(out_dir)
    table_formats, figure_formats = parse_formats(formats)
    raw = normalise_results(frame) if frame is not None else load_results(results_csv)
    notes: list[str] = []
    dropped = int(raw["value"].isna().sum())
    if dropped:
        notes.append(f"{dropped} row(s) without a numeric value were ignored")
    raw = raw[raw["value"].notna()].reset_index(drop=True)
    labelled, main = assign_labels(raw)
    palette = make_palette(labelled["label"].unique()) if not labelled.empty else {}

    selected = registered_reports()
    if reports is not None:
        known = [name for name, _, _ in selected]
        unknown = [r for r in reports if r not in known]
        if unknown:
            raise AnbenchError(f"unknown report(s) {', '.join(unknown)}; known: {', '.join(known)}")
        selected = [s for s in selected if s[0] in reports]

    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(out_dir)

    outcomes: list[ReportOutcome] = []
    if labelled.empty:
        notes.append("the results table has no rows yet: nothing to report")
    main_keys = set(map(tuple, main[["method", "train_noise"]].drop_duplicates().to_numpy()))
    for setting, sub in ([] if labelled.empty else settings_of(labelled)):
        keep = np.array([(m, t) in main_keys for m, t in
                         zip(sub["method"], sub["train_noise"], strict=True)], dtype=bool)
        ctx = ReportContext(results=sub, main=sub[keep].reset_index(drop=True), palette=palette,
                            setting=setting)
        for name, description, cls in selected:
            outcome = ReportOutcome(name, getattr(cls, "title", "") or name, description, setting,
                                    ReportResult())
            try:
                outcome.result = cls().build(ctx)
                outcome.files = _write_outputs(outcome.result, tables_dir, figures_dir, setting,
                                               table_formats, figure_formats, palette)
            except Exception as exc:
                if strict:
                    raise
                outcome.error = f"{type(exc).__name__}: {exc}"
            outcomes.append(outcome)

    index = out_dir / "index.md"
    result = BuildResult(index, outcomes, notes)
    _write_text(index, render_index(result, raw, results_csv, out_dir, table_formats))
    _write_text(out_dir / "report.json", json.dumps(_manifest(result, out_dir), indent=2) + "\n")
    return result


def _write_outputs(result: ReportResult, tables_dir: Path, figures_dir: Path, setting: str,
                   table_formats: Sequence[str], figure_formats: Sequence[str],
                   palette: Palette) -> list[Path]:
    suffix = f"_{slug(setting)}" if setting else ""
    files: list[Path] = []
    for table in result.tables:
        # per-setting files need distinct LaTeX labels and captions that say the setting
        named = replace(table, name=f"{table.name}{suffix}",
                        title=f"{table.title} [{setting}]" if setting else table.title)
        for fmt in table_formats:
            path = tables_dir / f"{named.name}.{fmt}"
            _write_text(path, named.render(fmt))
            files.append(path)
    for spec in result.figures:
        fig = render_figure(spec, palette)
        for fmt in figure_formats:
            path = figures_dir / f"{spec.name}{suffix}.{fmt}"
            save_figure(fig, path, fmt)
            files.append(path)
        data_path = figures_dir / f"{spec.name}{suffix}.data.csv"
        _write_text(data_path, spec.data.to_csv(index=False, float_format="%.6g"))
        files.append(data_path)
    return files


def render_index(result: BuildResult, raw: pd.DataFrame, results_csv: Path, out_dir: Path,
                 table_formats: Sequence[str]) -> str:
    suites = sorted(raw["suite"].unique(), key=natural_key) if not raw.empty else []
    lines = [f"# anbench report: {', '.join(f'`{s}`' for s in suites) or 'no results'}", ""]
    lines.append(f"Generated by `anbench report` from `{results_csv.name}` ({len(raw)} rows); "
                 "results only, no model was loaded.")
    if not raw.empty:
        facts = [
            ("backbones", sorted(raw["backbone"].unique(), key=natural_key)),
            ("datasets", order_datasets(raw["dataset"].unique())),
            ("methods", order_methods(raw["method"].unique())),
            ("seeds", sorted(raw["seed"].unique(), key=natural_key)),
            ("evaluation noises", order_noises(raw["eval_noise"].unique())),
        ]
        lines.append("")
        lines += [f"- {k}: {', '.join(v)}" for k, v in facts]
    lines += [""] + [f"> {n}" for n in result.notes] + ([""] if result.notes else [])
    lines += ["Tables show mean ± std (number of seeds) over seeds; the best value per column "
              "(within a block) is in bold. Averages over datasets average Base and New first and "
              "take the HM of those averages.", ""]
    n_missing = len(result.missing)
    if n_missing:
        lines += [f"**Partial results**: {n_missing} gap(s) found; each section lists its own.", ""]
    lines += ["## Contents", ""]
    for o in result.outcomes:
        lines.append(f"- [{_section_title(o)}](#{_anchor(_section_title(o))})")
    lines.append("")
    for o in result.outcomes:
        lines += [f"## {_section_title(o)}", ""]
        if o.description:
            lines += [f"{o.description} (`{o.name}`)", ""]
        if o.error:
            lines += [f"**This report failed**: `{o.error}`", ""]
        for table in o.result.tables:
            stem = Path(f"{table.name}").name
            links = [f"[{p.suffix[1:]}]({p.relative_to(out_dir).as_posix()})" for p in o.files
                     if p.parent.name == "tables" and p.name.startswith(stem + _suffix_of(o) + ".")]
            lines += [f"**{table.title}**" + (f" ({' · '.join(links)})" if links else ""), ""]
            lines += [table.to_markdown().rstrip("\n"), ""]
        for spec in o.result.figures:
            stem = spec.name + _suffix_of(o)
            paths = [p for p in o.files
                     if p.parent.name == "figures" and p.name.startswith(stem + ".")]
            png = next((p for p in paths if p.suffix == ".png"), None)
            if png is not None:
                lines += [f"![{spec.title}]({png.relative_to(out_dir).as_posix()})", ""]
            links = [f"[{p.name[len(stem) + 1:]}]({p.relative_to(out_dir).as_posix()})"
                     for p in paths]
            lines += [f"*{spec.title}* ({' · '.join(links)})", ""]
        if o.result.notes:
            lines += [f"- {n}" for n in o.result.notes] + [""]
        if o.result.missing:
            lines += ["Missing:", ""] + [f"- {m}" for m in o.result.missing] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _suffix_of(o: ReportOutcome) -> str:
    return f"_{slug(o.setting)}" if o.setting else ""


def _section_title(o: ReportOutcome) -> str:
    return f"{o.title} ({o.setting})" if o.setting else o.title


def _anchor(title: str) -> str:
    """GitHub-style heading anchor."""
    text = re.sub(r"[^\w\- ]", "", title.lower())
    return text.replace(" ", "-")


def _manifest(result: BuildResult, out_dir: Path) -> dict[str, Any]:
    return {
        "index": "index.md",
        "notes": result.notes,
        "reports": [
            {
                "name": o.name, "setting": o.setting,
                "files": [p.relative_to(out_dir).as_posix() for p in o.files],
                "notes": o.result.notes, "missing": o.result.missing, "error": o.error,
            }
            for o in result.outcomes
        ],
    }


def _remove_previous_outputs(out_dir: Path) -> None:
    """Delete only files a previous run listed in its report.json (stale artefacts, not user's)."""
    manifest = out_dir / "report.json"
    if not manifest.is_file():
        return
    try:
        previous = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    for entry in previous.get("reports", []):
        for rel in entry.get("files", []):
            path = (out_dir / rel).resolve()
            if out_dir.resolve() in path.parents and path.is_file():
                path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; artefacts are meant to be shared


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path, renamed over `path` on success (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text(path: Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
