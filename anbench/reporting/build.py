"""`anbench report`: results.csv -> every registered report -> tables/, figures/, index.md."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anbench.files import atomic_write_text
from anbench.registry import REPORTS, AnbenchError
from anbench.reporting.contract import Report, ReportContext, ReportResult
from anbench.reporting.figures import render_figure, save_figure
from anbench.reporting.index import (
    BuildResult,
    ReportOutcome,
    render_index,
    setting_suffix,
)
from anbench.reporting.labels import ZEROSHOT, assign_labels
from anbench.reporting.order import Palette, make_palette, natural_key
from anbench.reporting.results import read_results, validate_results
from anbench.reporting.uncertainty import Uncertainty
from anbench.stats import DEFAULT_RESAMPLES

TABLE_FORMATS: tuple[str, ...] = ("md", "tex", "csv")
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf")


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

    Returns the path of `out_dir/index.md`. Missing results are listed there, never raised;
    a file that is not a results table raises `AnbenchError`.
    """
    return build_report_info(results_csv, out_dir, formats).index


def build_report_info(results_csv: Path | str, out_dir: Path | str,
                      formats: Sequence[str] | str | None = TABLE_FORMATS, *,
                      reports: Sequence[str] | None = None, strict: bool = False,
                      frame: pd.DataFrame | None = None, suite_root: Path | str | None = None,
                      resamples: int = DEFAULT_RESAMPLES) -> BuildResult:
    """Like `build_report`, returning what each report produced, wrote and found missing.

    `strict` re-raises a report's exception (tests); otherwise it is recorded in index.md so one
    broken report does not take the others down. `frame` supplies results already in memory.
    Bootstrap intervals (`resamples` resamples) come from the cells under `suite_root`
    (default: the folder of `results_csv`, when it holds `cells/`).
    """
    results_csv, out_dir = Path(results_csv), Path(out_dir)
    table_formats, figure_formats = parse_formats(formats)
    raw = (validate_results(frame, str(results_csv)) if frame is not None
           else read_results(results_csv))
    notes: list[str] = []
    dropped = int(raw["value"].isna().sum())
    if dropped:
        notes.append(f"{dropped} row(s) without a numeric value were ignored")
    raw = raw[raw["value"].notna()].reset_index(drop=True)
    labelled, main = assign_labels(raw)
    palette = make_palette(labelled["label"].unique()) if not labelled.empty else {}
    selected = _select(registered_reports(), reports)

    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(out_dir)

    outcomes: list[ReportOutcome] = []
    if labelled.empty:
        notes.append("the results table has no rows yet: nothing to report")
    root = Path(suite_root) if suite_root is not None else results_csv.parent
    uncertainty = (Uncertainty(root, resamples) if (root / "cells").is_dir() and not
                   labelled.empty else None)
    main_keys = set(map(tuple, main[["method", "train_noise"]].drop_duplicates().to_numpy()))
    for setting, sub in ([] if labelled.empty else settings_of(labelled)):
        keep = np.array([(m, t) in main_keys for m, t in
                         zip(sub["method"], sub["train_noise"], strict=True)], dtype=bool)
        ctx = ReportContext(results=sub, main=sub[keep].reset_index(drop=True), palette=palette,
                            setting=setting, uncertainty=uncertainty)
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

    if uncertainty is not None:
        notes += list(dict.fromkeys(uncertainty.problems))
    index = out_dir / "index.md"
    result = BuildResult(index, outcomes, notes, intervals=uncertainty is not None)
    atomic_write_text(index, render_index(result, raw, results_csv, out_dir, table_formats))
    atomic_write_text(out_dir / "report.json",
                      json.dumps(_manifest(result, out_dir), indent=2) + "\n")
    return result


def _select(selected: list[tuple[str, str, type[Report]]], reports: Sequence[str] | None
            ) -> list[tuple[str, str, type[Report]]]:
    if reports is None:
        return selected
    known = [name for name, _, _ in selected]
    unknown = [r for r in reports if r not in known]
    if unknown:
        raise AnbenchError(f"unknown report(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [s for s in selected if s[0] in reports]


def _write_outputs(result: ReportResult, tables_dir: Path, figures_dir: Path, setting: str,
                   table_formats: Sequence[str], figure_formats: Sequence[str],
                   palette: Palette) -> list[Path]:
    suffix = setting_suffix(setting)
    files: list[Path] = []
    for table in result.tables:
        # per-setting files need distinct LaTeX labels and captions that say the setting
        named = replace(table, name=f"{table.name}{suffix}",
                        title=f"{table.title} [{setting}]" if setting else table.title)
        for fmt in table_formats:
            path = tables_dir / f"{named.name}.{fmt}"
            atomic_write_text(path, named.render(fmt))
            files.append(path)
    for spec in result.figures:
        fig = render_figure(spec, palette)
        for fmt in figure_formats:
            path = figures_dir / f"{spec.name}{suffix}.{fmt}"
            save_figure(fig, path, fmt)
            files.append(path)
        data_path = figures_dir / f"{spec.name}{suffix}.data.csv"
        atomic_write_text(data_path, spec.data.to_csv(index=False, float_format="%.6g"))
        files.append(data_path)
    return files


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
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    entries = previous.get("reports", []) if isinstance(previous, dict) else []
    for entry in entries if isinstance(entries, list) else []:
        files = entry.get("files", []) if isinstance(entry, dict) else []
        for rel in files if isinstance(files, list) else []:
            if not isinstance(rel, str):
                continue
            path = (out_dir / rel).resolve()
            if out_dir.resolve() in path.parents and path.is_file():
                path.unlink()
