"""`anbench report --format html`: one self-contained index.html per suite.

No network and no side files: styles and the table-sorting script are inlined, figures are the
report's PNGs as base64 data URIs, training curves are inline SVG. Rendered with Jinja2 from
`templates/`. The page holds the suite's facts, every report's tables (sortable) and figures, a
method x perturbation heatmap per robustness metric (text and image perturbations apart), a
table of cells, and one page per cell (shown when its anchor is the URL fragment): parameters,
training curves from meta.json, per-class accuracy from arrays.npz, and the clean and noisy class
sentences.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pandas as pd

from anbench.api import Cell, Suite
from anbench.files import atomic_write_text
from anbench.registry import AnbenchError
from anbench.reporting.build import settings_of
from anbench.reporting.html_cells import CellPage, cell_anchor, cell_page
from anbench.reporting.html_format import num_cell, ramp_colour, table_view
from anbench.reporting.index import BuildResult, setting_suffix
from anbench.reporting.labels import (
    CLEAN,
    add_perturbation_labels,
    assign_labels,
    order_perturbations,
)
from anbench.reporting.modality import IMAGE, TEXT, metric_info, of_modality, order_by_category
from anbench.reporting.order import (
    dataset_sort_key,
    method_sort_key,
    natural_key,
    noise_sort_key,
    order_datasets,
    order_labels,
    order_noises,
)
from anbench.reporting.stats import fmean

TEMPLATES = Path(__file__).resolve().parent / "templates"
HEATMAP_METRICS = ("as", "lpr", "ts")  # text perturbations
IMAGE_HEATMAP_METRICS = ("as", "lpr", "ifs")


def environment() -> Any:
    try:
        import jinja2
    except ImportError:  # a dependency, but say what is missing rather than a traceback
        raise AnbenchError("the HTML report needs Jinja2: pip install jinja2") from None
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def heatmaps(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per setting, modality and metric: rows = method label, columns = perturbation, each value
    the mean over datasets, seeds, splits (base and new) and noise draws of that metric. Text
    columns are perturbation settings (severity, alpha); image columns are perturbations, their
    severities averaged (15 corruptions x 5 severities would not fit a page)."""
    rows = results[results["value"].notna() & (results["eval_noise"] != CLEAN)
                   & results["metric"].isin(HEATMAP_METRICS + IMAGE_HEATMAP_METRICS)
                   & (results["split"] != "base-new")]
    if rows.empty:
        return []
    labelled, _ = assign_labels(rows)
    out: list[dict[str, Any]] = []
    for setting, sub in settings_of(labelled):
        text = of_modality(sub, TEXT)
        text = text[text["metric"].isin(HEATMAP_METRICS)]
        image = of_modality(sub, IMAGE)
        image = image[image["metric"].isin(IMAGE_HEATMAP_METRICS)]
        if not text.empty:
            text = add_perturbation_labels(text)
            out += _heatmaps(text, order_perturbations(text), HEATMAP_METRICS, setting,
                             "Text perturbations: " if not image.empty else "", "heatmap", out)
        if not image.empty:
            image = image.assign(perturbation=image["eval_noise"])
            columns = [name for name, _ in order_by_category(image["eval_noise"].unique())]
            out += _heatmaps(image, columns, IMAGE_HEATMAP_METRICS, setting,
                             "Image perturbations: ", "heatmap-image", out)
    return out


def _heatmaps(sub: pd.DataFrame, columns: list[str], metrics: tuple[str, ...], setting: str,
              prefix: str, id_stem: str, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One map per metric of `sub` (rows with `label` and `perturbation`); `before`: the maps
    already made, which number the ids of several settings."""
    labels = order_labels(sub["label"].unique())
    out: list[dict[str, Any]] = []
    for metric in metrics:
        mine = sub[sub["metric"] == metric]
        if mine.empty:
            continue
        means = {key: fmean(group["value"]) for key, group in
                 mine.groupby(["label", "perturbation"], sort=False)}
        values = [v for v in means.values() if v == v]
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        info = metric_info(metric)
        grid = []
        for label in labels:
            cells = []
            for column in columns:
                value = means.get((label, column), float("nan"))
                cell = num_cell(value, info.digits)
                if value == value:
                    t = (value - low) / (high - low) if high > low else 0.5
                    cell["bg"], cell["fg"] = ramp_colour(t if info.better == "higher" else 1 - t)
                cells.append(cell)
            grid.append({"label": label, "cells": cells})
        better = "higher" if info.better == "higher" else "lower"
        number = len(before) + len(out)
        out.append({"setting": setting, "metric": metric, "title": prefix + info.header(""),
                    "better": better, "columns": columns, "rows": grid,
                    "id": f"{id_stem}-{metric}" + (f"-{number}" if setting else "")})
    return out


def _figure(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def sections(built: BuildResult) -> list[dict[str, Any]]:
    out = []
    for o in built.outcomes:
        pngs = {p.name: p for p in o.files if p.suffix == ".png" and p.is_file()}
        suffix = setting_suffix(o.setting)
        figures = [{"title": spec.title, "src": _figure(pngs[f"{spec.name}{suffix}.png"])}
                   for spec in o.result.figures if f"{spec.name}{suffix}.png" in pngs]
        title = f"{o.title} ({o.setting})" if o.setting else o.title
        out.append({"title": title, "name": o.name, "description": o.description,
                    "error": o.error, "tables": [table_view(t) for t in o.result.tables],
                    "figures": figures, "notes": list(o.result.notes),
                    "missing": list(o.result.missing)})
    return out


def cells_table(pages: list[CellPage]) -> dict[str, Any]:
    # accuracy columns only for the splits the cells have (base/new, or all classes)
    splits = [s for s in ("base", "new", "all", "hm") if any(s in p.summary for p in pages)]
    columns = ["dataset", "method", "train noise", "seed", "shots", "backbone",
               *(s.replace("hm", "HM") for s in splits), "seconds"]
    rows = []
    for page in pages:
        key = page.key
        facts = dict(page.facts)
        rows.append({"anchor": page.anchor, "cells": [
            {"text": key["dataset"]}, {"text": key["method"], "link": page.anchor},
            {"text": key["train_noise"]}, num_cell(key["seed"], 0), num_cell(key["shots"], 0),
            {"text": key["backbone"]},
            *(num_cell(page.summary.get(s, float("nan")), 2) for s in splits),
            num_cell(facts.get("seconds"), 1)]})
    return {"columns": columns, "rows": rows}


def _page(cell: Cell) -> CellPage:
    """A cell's page; a cell whose stored files cannot be shown gets a page that says why
    instead of taking the whole report down."""
    try:
        return cell_page(cell)
    except (AnbenchError, KeyError, IndexError, TypeError, ValueError) as exc:
        return CellPage(cell_anchor(cell), cell.key.label(), vars(cell.key),
                        [("folder", cell.key.relpath),
                         ("error", f"cannot show this cell: {type(exc).__name__}: {exc}")],
                        [], [], {}, {})


def build_html(root: Path, built: BuildResult, out_dir: Path) -> Path:
    """Write `out_dir/index.html` for the suite at `root` from a report already built."""
    suite = Suite(root)
    results = suite.results
    cells = sorted(suite.all_cells(), key=lambda c: (
        c.key.backbone, dataset_sort_key(c.key.dataset), method_sort_key(c.key.method),
        noise_sort_key(c.key.train_noise), c.key.shots, c.key.seed))
    pages = [_page(cell) for cell in cells]
    facts = []
    if not results.empty:
        facts = [
            ("backbones", ", ".join(sorted(results["backbone"].unique(), key=natural_key))),
            ("datasets", ", ".join(order_datasets(results["dataset"].unique()))),
            ("methods", ", ".join(order_labels(results["method"].unique()))),
            ("seeds", ", ".join(str(s) for s in sorted(results["seed"].unique()))),
            ("evaluation noises", ", ".join(order_noises(results["eval_noise"].unique()))),
            ("cells", str(len(pages))), ("result rows", str(len(results))),
        ]
    template = environment().get_template("report.html.j2")
    html = template.render(
        suite=suite.name, facts=facts, notes=list(built.notes), sections=sections(built),
        heatmaps=heatmaps(results), cells=cells_table(pages), pages=pages)
    path = Path(out_dir) / "index.html"
    atomic_write_text(path, html)
    return path
