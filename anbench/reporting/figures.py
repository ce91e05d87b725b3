"""Figures: a spec (tidy data + a drawing function) and shared drawing helpers.

matplotlib is imported lazily: tables alone must not pay for it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from anbench.files import atomic_write_bytes
from anbench.reporting.order import Palette

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    # no creation date / software version in the file: the same results give the same bytes
    metadata: dict[str, Any] = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
    buffer = io.BytesIO()
    with plot_style():
        fig.savefig(buffer, format=fmt, dpi=300, metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())


def grouped_bars(ax: Axes, data: pd.DataFrame, *, x: str, hue: str, x_order: Sequence[str],
                 hue_order: Sequence[str], palette: Palette, value: str = "mean",
                 err: str | None = "std", ticklabels: bool = True,
                 interval: tuple[str, str] | None = None) -> None:
    """Bars grouped by `x`, one colour per `hue`, with error bars: the (low, high) `interval`
    columns where the data has them (bootstrap intervals), else ± `err` (std over seeds)."""
    width = 0.8 / max(len(hue_order), 1)
    use_interval = interval is not None and all(c in data for c in interval) and bool(
        data[list(interval)].notna().all(axis=None))
    for j, h in enumerate(hue_order):
        sub = data[data[hue] == h].set_index(x)
        pos, ys, below, above = [], [], [], []
        for i, xv in enumerate(x_order):
            if xv in sub.index:
                pos.append(i - 0.4 + width * (j + 0.5))
                y = float(sub.loc[xv, value])
                ys.append(y)
                if use_interval and interval is not None:
                    low, high = float(sub.loc[xv, interval[0]]), float(sub.loc[xv, interval[1]])
                    below.append(max(y - low, 0.0))
                    above.append(max(high - y, 0.0))
                else:
                    e = float(sub.loc[xv, err]) if err else 0.0
                    below.append(0.0 if math.isnan(e) else e)
                    above.append(below[-1])
        if pos:
            ax.bar(pos, ys, width * 0.92, color=palette.get(h, "0.5"), label=h,
                   yerr=[below, above] if (err or use_interval) else None,
                   error_kw={"elinewidth": 0.6, "capsize": 1.2, "capthick": 0.6})
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
