"""Tables: rows of `Stat` cells rendered as Markdown, LaTeX (booktabs) and CSV."""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from anbench.metrics import METRICS
from anbench.reporting.labels import MISSING_CELL
from anbench.reporting.stats import Stat, base_new
from anbench.reporting.uncertainty import Uncertainty, with_estimate
from anbench.stats import SIGNIFICANCE, paired_p_value


@dataclass(frozen=True)
class Column:
    key: str  # CSV header stem
    header: str  # display header, with units
    digits: int = 2
    better: Literal["max", "min"] | None = None  # which value is bold within a block

    @classmethod
    def for_metric(cls, metric: str, *, key: str | None = None, header: str | None = None,
                   prefix: str = "") -> Column:
        """A column of `metric` with its declared header, digits and direction."""
        info = METRICS[metric]
        return cls(key or metric, info.header(prefix) if header is None else header,
                   info.digits, "max" if info.better == "higher" else "min")


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
    # "column": the best value of each column (within a block) is bold; "row": the best of each
    # row (columns are methods, rows are conditions: a transposed table)
    compare: Literal["column", "row"] = "column"
    # a row index: n.s. marks and p-values compare every row with this row (named by its first
    # label in the legend), not with the bold one
    reference: int | None = None

    def cell(self, labels: Sequence[str], key: str) -> Stat | None:
        """The cell at the row whose labels are `labels` (blocks included) and column `key`."""
        col = [c.key for c in self.columns].index(key)
        for row in self.rows:
            if list(row.labels) == list(labels):
                return row.cells[col]
        raise KeyError(f"no row {labels!r} in table {self.name}")

    def bold(self) -> set[tuple[int, int]]:
        """(row, column) positions of the best value per block and column (ties all bold);
        with `compare="row"`, of the best value per row."""
        if self.compare == "row":
            return self._bold_rows()
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

    def _bold_rows(self) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        ranked = [j for j, c in enumerate(self.columns) if c.better in ("max", "min")]
        if not ranked:
            return out
        pick = max if self.columns[ranked[0]].better == "max" else min
        for i, row in enumerate(self.rows):
            if not row.ranked:
                continue
            vals = [(j, round(row.cells[j].mean, self.columns[j].digits)) for j in ranked
                    if row.cells[j] is not None and not math.isnan(row.cells[j].mean)]
            if len(vals) < 2:
                continue
            best = pick(v for _, v in vals)
            out.update((i, j) for j, v in vals if v == best)
        return out

    def has_intervals(self) -> bool:
        return any(c is not None and c.has_interval for r in self.rows for c in r.cells)

    def p_values(self) -> dict[tuple[int, int], float]:
        """(row, column) -> paired bootstrap p-value of its difference from the bold value of
        its block and column (rows with replicates only; the bold ones are left out); with a
        `reference` row, from that row's value; with `compare="row"`, from the bold of its row."""
        if self.reference is not None:
            return self._p_values_against(
                {(i, j): (self.reference, j) for i in range(len(self.rows))
                 for j in range(len(self.columns)) if i != self.reference})
        bold = self.bold()
        if self.compare == "row":
            pairs: dict[tuple[int, int], tuple[int, int]] = {}
            for i in range(len(self.rows)):
                best = next((j for j in range(len(self.columns)) if (i, j) in bold
                             and self.rows[i].cells[j].replicates is not None), None)
                if best is not None:
                    pairs.update({(i, j): (i, best) for j in range(len(self.columns))
                                  if (i, j) not in bold and self.columns[j].better})
            return self._p_values_against(pairs)
        out: dict[tuple[int, int], float] = {}
        for j in range(len(self.columns)):
            blocks = itertools.groupby(range(len(self.rows)), key=lambda i: self.rows[i].block)
            for _, idx in blocks:
                idx = list(idx)
                best = next((i for i in idx if (i, j) in bold
                             and self.rows[i].cells[j].replicates is not None), None)
                if best is None:
                    continue
                ref = self.rows[best].cells[j].replicates
                for i in idx:
                    cell = self.rows[i].cells[j]
                    if ((i, j) in bold or not self.rows[i].ranked or cell is None
                            or cell.replicates is None or len(cell.replicates) != len(ref)):
                        continue
                    out[(i, j)] = paired_p_value(ref - cell.replicates)
        return out

    def _p_values_against(self, pairs: dict[tuple[int, int], tuple[int, int]]
                          ) -> dict[tuple[int, int], float]:
        """p-values of cell - reference cell for each (cell, reference) pair with replicates."""
        out: dict[tuple[int, int], float] = {}
        for (i, j), (ri, rj) in pairs.items():
            cell, ref = self.rows[i].cells[j], self.rows[ri].cells[rj]
            if (not self.rows[i].ranked or cell is None or ref is None
                    or cell.replicates is None or ref.replicates is None
                    or len(cell.replicates) != len(ref.replicates)):
                continue
            out[(i, j)] = paired_p_value(ref.replicates - cell.replicates)
        return out

    def not_significant(self) -> set[tuple[int, int]]:
        return {pos for pos, p in self.p_values().items() if not p < SIGNIFICANCE}

    def all_notes(self) -> list[str]:
        """The table's notes, plus what the intervals and marks mean when it has them."""
        if not self.has_intervals():
            return list(self.notes)
        resamples = next(len(c.replicates) for r in self.rows for c in r.cells
                         if c is not None and c.replicates is not None)
        versus = ("the bold value of its row" if self.compare == "row"
                  else "the bold value of its block and column")
        if self.reference is not None:
            versus = f"{self.rows[self.reference].labels[0]} in its column"
        legend = (f"[low, high]: 95% bootstrap interval ({resamples} resamples of the test "
                  "images, of the classes for TS, and of the seeds; paired across methods); "
                  f"sd: std over noise draws; n.s.: not significantly different from {versus} "
                  f"(paired bootstrap, p ≥ {SIGNIFICANCE:g}).")
        return [*self.notes, legend]

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
        bold, ns = self.bold(), self.not_significant()
        head = [*self.label_headers, *(c.header for c in self.columns)]
        align = ["---"] * len(self.label_headers) + ["---:"] * len(self.columns)
        lines = [_md_row(head), _md_row(align)]
        for i, (row, labels) in enumerate(zip(self.rows, self._display_labels(), strict=True)):
            cells = [format_stat(s, c.digits, (i, j) in bold, "md", (i, j) in ns)
                     for j, (s, c) in enumerate(zip(row.cells, self.columns, strict=True))]
            lines.append(_md_row([*labels, *cells]))
        text = "\n".join(lines) + "\n"
        notes = self.all_notes()
        if notes:
            text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
        return text

    def to_latex(self) -> str:
        bold, ns = self.bold(), self.not_significant()
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
            cells = [format_stat(s, c.digits, (i, j) in bold, "tex", (i, j) in ns)
                     for j, (s, c) in enumerate(zip(row.cells, self.columns, strict=True))]
            lines.append(" & ".join([*(tex_escape(x) for x in labels), *cells]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        for note in self.all_notes():
            lines.append(f"\\par\\smallskip{{\\footnotesize {tex_escape(note)}}}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        # interval columns only when the table has intervals (results without cell arrays)
        extra = ("lo", "hi", "draw_std", "p") if self.has_intervals() else ()
        p_values = self.p_values() if extra else {}
        head = list(self.label_headers)
        for col in self.columns:
            head += [col.key, f"{col.key}_std", f"{col.key}_n"]
            head += [f"{col.key}_{e}" for e in extra]
        writer.writerow(head)
        for i, row in enumerate(self.rows):
            out = list(row.labels)
            for j, stat in enumerate(row.cells):
                if stat is None:
                    out += [""] * (3 + len(extra))
                    continue
                out += [_csv_num(stat.mean), _csv_num(stat.std), str(stat.n)]
                if extra:
                    out += [_csv_num(stat.lo), _csv_num(stat.hi), _csv_num(stat.draw_std),
                            _csv_num(p_values.get((i, j), math.nan))]
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


def format_stat(stat: Stat | None, digits: int, bold: bool, fmt: str,
                not_significant: bool = False) -> str:
    """'71.23 ± 0.45 (3)': mean ± std (seeds); the mean in bold when it is the best.

    With a bootstrap interval: '71.23 [70.10, 72.31] sd 0.21 n.s.' (interval, std over noise
    draws when there are several, and the not-significant mark)."""
    if stat is None or math.isnan(stat.mean):
        return MISSING_CELL if fmt == "md" else "--"
    mean = _fixed(stat.mean, digits)
    if bold:
        mean = f"**{mean}**" if fmt == "md" else f"\\textbf{{{mean}}}"
    if stat.has_interval:
        interval = f"[{_fixed(stat.lo, digits)}, {_fixed(stat.hi, digits)}]"
        sd = "" if math.isnan(stat.draw_std) else f"sd {_fixed(stat.draw_std, digits)}"
        mark = "n.s." if not_significant else ""
        if fmt == "md":
            return " ".join(p for p in (mean, interval, sd, mark) if p)
        small = " ".join(p for p in (interval, sd) if p)
        sup = "\\textsuperscript{n.s.}" if mark else ""
        return f"{mean}{sup} {{\\scriptsize {small}}}"
    pm = " ± " if fmt == "md" else " $\\pm$ "
    spread = "" if math.isnan(stat.std) else pm + _fixed(stat.std, digits)
    return f"{mean}{spread} ({stat.n})"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "α": r"$\alpha$", "∞": r"$\infty$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
    "±": r"$\pm$", "≥": r"$\geq$", "†": r"\textsuperscript{\dag}", "–": "--",
    "Δ": r"$\Delta$", "×": r"$\times$", "·": r"$\cdot$", "Σ": r"$\Sigma$",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


BASE_NEW_COLUMNS: tuple[Column, ...] = (
    Column.for_metric("acc", key="base", header="Base"),
    Column.for_metric("acc", key="new", header="New"),
    Column.for_metric("hm", header="HM"),
)


def base_new_rows(acc: pd.DataFrame, labels: Sequence[str], block: str,
                  datasets: Sequence[str], label_cells: Callable[[str], list[str]] | None = None,
                  uncertainty: Uncertainty | None = None) -> tuple[list[Row], list[str]]:
    """One Base/New/HM row per label over `datasets`; a label lacking some is marked with †.

    With `uncertainty`, each cell also gets its bootstrap interval and replicates."""
    rows: list[Row] = []
    notes: list[str] = []
    for label in labels:
        own = acc[acc["label"] == label]
        bn = base_new(own)
        shown = label
        cells: list[Stat | None] = [None, None, None]
        if bn is not None:
            cells = [bn.base, bn.new, bn.hm]
            if uncertainty is not None:
                found = uncertainty.base_new(own[own["dataset"].isin(bn.datasets)])
                if found is not None:
                    cells = [with_estimate(c, e) for c, e in zip(cells, found, strict=True)]
            lacking = [d for d in datasets if d not in bn.datasets]
            if lacking and len(datasets) > 1:  # an average over fewer datasets is not comparable
                shown = f"{label}†"
                notes.append(f"† {label}: averaged over {len(bn.datasets)} of {len(datasets)} "
                             f"datasets (no base and new results for {', '.join(lacking)})")
        labels_out = label_cells(shown) if label_cells else [block, shown]
        rows.append(Row(labels_out, cells, block, ranked=shown == label))
    return rows, notes
