"""Table cells and heatmap colours for the HTML report (plain data; the template escapes)."""

from __future__ import annotations

import math
import re
from typing import Any

from anbench.reporting.labels import MISSING_CELL
from anbench.reporting.stats import Stat
from anbench.reporting.tables import Table, format_stat

# A colour-blind-safe sequential ramp (viridis stops), from least to most robust.
RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def num_cell(value: Any, digits: int) -> dict[str, Any]:
    """A numeric cell: its text and the number the table sorts by (missing sorts last)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number):
        return {"text": MISSING_CELL, "sort": "", "num": True}
    text = f"{number:.{digits}f}"
    if re.fullmatch(r"-0\.?0*", text):  # a tiny negative rounds to 0, not '-0.00'
        text = text[1:]
    return {"text": text, "sort": repr(number), "num": True}


def stat_cell(stat: Stat | None, digits: int, bold: bool) -> dict[str, Any]:
    text = format_stat(stat, digits, False, "md")
    missing = stat is None or math.isnan(stat.mean)
    return {"text": text, "sort": "" if missing else repr(float(stat.mean)), "num": True,
            "bold": bold and not missing}


def table_view(table: Table) -> dict[str, Any]:
    """A report `Table` as header and rows of cells; every row keeps its full labels, so the
    table still reads right after sorting."""
    bold = table.bold()
    rows = []
    for i, row in enumerate(table.rows):
        cells: list[dict[str, Any]] = [{"text": str(label)} for label in row.labels]
        cells += [stat_cell(stat, col.digits, (i, j) in bold)
                  for j, (stat, col) in enumerate(zip(row.cells, table.columns, strict=True))]
        rows.append(cells)
    return {"name": table.name, "title": table.title,
            "columns": [*table.label_headers, *(c.header for c in table.columns)],
            "rows": rows, "notes": list(table.notes)}


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i:i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def ramp_colour(t: float) -> tuple[str, str]:
    """(background, text colour) for t in [0, 1] (0 least, 1 most robust)."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(RAMP) - 1)
    i = min(int(pos), len(RAMP) - 2)
    background = _mix(RAMP[i], RAMP[i + 1], pos - i)
    return background, "#111111" if t > 0.55 else "#ffffff"
