"""Reports from a small synthetic results.csv: golden tables, hand-computed numbers, figures.

Regenerate the golden files with `ANBENCH_UPDATE_GOLDEN=1 pytest tests/test_reports.py`; by
default the tests compare against them.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from anbench.registry import REPORTS, AnbenchError
from anbench.reporting import (
    RESULT_COLUMNS,
    BuildResult,
    build_report,
    build_report_info,
    make_palette,
    order_datasets,
    order_methods,
    parse_formats,
    read_results,
)

GOLDEN = Path(__file__).parent / "golden" / "reports"
UPDATE = os.environ.get("ANBENCH_UPDATE_GOLDEN") == "1"

SEEDS = (1, 2)
# clean accuracy (base, new) per (method, train noise) -> dataset -> per-seed values
ACC: dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]] = {
    ("zeroshot", "none"): {
        "caltech101": {"base": (80, 80), "new": (75, 75)},
        "dtd": {"base": (50, 50), "new": (45, 45)},
    },
    ("dapt", "none"): {
        "caltech101": {"base": (88, 90), "new": (78, 80)},
        "dtd": {"base": (68, 70), "new": (40, 42)},
    },
    ("anprompt", "wsp"): {
        "caltech101": {"base": (90, 92), "new": (80, 84)},
        "dtd": {"base": (70, 74), "new": (40, 44)},
    },
    ("anprompt", "drop"): {
        "caltech101": {"base": (89, 89), "new": (79, 81)},
        "dtd": {"base": (69, 71), "new": (39, 41)},
    },
    ("anprompt-wo-nrvpp", "wsp"): {
        "caltech101": {"base": (89, 91), "new": (80, 82)},
        "dtd": {"base": (69, 71), "new": (41, 43)},
    },
    ("anprompt-wo-waloss", "wsp"): {
        "caltech101": {"base": (90, 90), "new": (79, 81)},
        "dtd": {"base": (70, 72), "new": (40, 40)},
    },
}
# text shift of each evaluation setting (eval noise, severity, alpha) before the method factor
SETTINGS: dict[tuple[str, float, float], float] = {
    ("wsp", 1.0, 0.001): 0.001,
    ("wsp", 1.0, math.inf): 0.08,
    ("drop", 0.1, math.inf): 0.05,
    ("drop", 0.3, math.inf): 0.15,
    ("mask", 0.3, math.inf): 0.2,
}
FACTOR = {("zeroshot", "none"): 1.0, ("dapt", "none"): 0.8, ("anprompt", "wsp"): 0.5,
          ("anprompt", "drop"): 0.6, ("anprompt-wo-nrvpp", "wsp"): 0.7,
          ("anprompt-wo-waloss", "wsp"): 0.6}
OFFSET = {("caltech101", "base"): 0.0, ("caltech101", "new"): 0.001, ("dtd", "base"): 0.002,
          ("dtd", "new"): 0.003}


def text_shift(key: tuple[str, str], setting: tuple[str, float, float], dataset: str,
               split: str, seed: int) -> float:
    return SETTINGS[setting] * FACTOR[key] + OFFSET[(dataset, split)] + 0.001 * (seed - 1)


def synthetic_results() -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    nan = math.nan
    # datasets written dtd first: the tables must still follow paper order (caltech101 first)
    for (method, noise), per_dataset in ACC.items():
        shots = 0 if method == "zeroshot" else 16  # zero-shot does not train
        for dataset in ("dtd", "caltech101"):
            for i, seed in enumerate(SEEDS):
                base = dict(suite="toy", dataset=dataset, backbone="mini", method=method,
                            train_noise=noise, shots=shots, seed=seed)
                accs = {s: per_dataset[dataset][s][i] for s in ("base", "new")}
                for split, value in accs.items():
                    rows.append(base | dict(split=split, eval_noise="clean", severity=nan,
                                            alpha=nan, metric="acc", value=value))
                b, n = accs["base"], accs["new"]
                rows.append(base | dict(split="base-new", eval_noise="clean", severity=nan,
                                        alpha=nan, metric="hm", value=2 * b * n / (b + n)))
                for setting in SETTINGS:
                    pert, sev, alpha = setting
                    for split in ("base", "new"):
                        ts = text_shift((method, noise), setting, dataset, split, seed)
                        cell = base | dict(split=split, eval_noise=pert, severity=sev, alpha=alpha)
                        rows.append(cell | dict(metric="ts", value=ts))
                        rows.append(cell | dict(metric="lpr", value=100 - 50 * ts))
                        rows.append(cell | dict(metric="as", value=-20 * ts))
                        rows.append(cell | dict(metric="acc", value=accs[split] - 20 * ts))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def build(tmp_path: Path, df: pd.DataFrame, formats: str = "md,tex,csv",
          reports: list[str] | None = None) -> BuildResult:
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv_path = tmp_path / "results.csv"
    df.to_csv(csv_path, index=False)
    return build_report_info(csv_path, tmp_path / "report", formats, strict=True,
                             reports=reports)


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)")


def golden_difference(actual: str, expected: str) -> str | None:
    """None when `actual` reads like `expected`, else where it first differs.

    Text between numbers must match exactly, integers too (counts, seeds, shots); a decimal
    must have the same number of decimals and may differ by one unit in its last one: a mean
    that lies on a rounding tie (x.xx5) may print either way, depending on float rounding.
    """
    got, want = _NUMBER.split(actual), _NUMBER.split(expected)
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if i % 2 == 0 or "." not in w:
            same = g == w
        else:
            decimals = len(w.split(".")[1])
            same = ("." in g and len(g.split(".")[1]) == decimals
                    and abs(float(g) - float(w)) <= 1.001 * 10.0 ** -decimals)
        if not same:
            line = "".join(want[:i]).count("\n") + 1
            return f"line {line}: got {g!r}, expected {w!r}"
    if len(got) != len(want):
        return f"got {len(got)} text/number parts, expected {len(want)}"
    return None


def check_golden(actual: Path, golden: Path) -> None:
    text = actual.read_text(encoding="utf-8")
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    assert golden.is_file(), f"missing golden {golden}; run with ANBENCH_UPDATE_GOLDEN=1"
    difference = golden_difference(text, golden.read_text(encoding="utf-8"))
    assert difference is None, f"{actual.name} differs from {golden}: {difference}"


def test_golden_comparison_tolerates_only_last_digit_ties() -> None:
    golden = "| anprompt | 3 | **0.0588** ± 0.0007 (2) | 94.22 |\nmini-16-shots"
    assert golden_difference(golden, golden) is None
    assert golden_difference(golden.replace("0.0588", "0.0587"), golden) is None
    assert golden_difference(golden.replace("94.22", "94.23"), golden) is None
    for wrong in (golden.replace("0.0588", "0.0586"),  # two units off
                  golden.replace("0.0588", "0.059"),  # other number of decimals
                  golden.replace("(2)", "(3)"),  # integers are exact
                  golden.replace("-16-", "-15-"),
                  golden.replace("anprompt", "dapt"),  # words are exact
                  golden.replace("**0.0588**", "0.0588"),  # bold is not a number
                  golden + " 1"):
        assert golden_difference(wrong, golden) is not None, wrong


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(tmp_path_factory.mktemp("full"), synthetic_results())


# ----------------------------------------------------------------------------------------------
# registry and helpers

def test_all_reports_are_registered() -> None:
    assert {"base-to-new", "ablation", "noise-strategy", "training-noise", "severity-curves",
            "robustness-summary", "perturbation-heatmap", "corruption-summary"} <= set(
        REPORTS.names())


def test_method_order_and_palette_are_stable() -> None:
    assert order_methods(["zzz", "anprompt", "dapt", "zeroshot", "aaa", "anprompt-wo-waloss"]) \
        == ["zeroshot", "dapt", "anprompt", "anprompt-wo-waloss", "aaa", "zzz"]
    assert order_datasets(["dtd", "imagenet", "mini-pets", "caltech101"]) \
        == ["imagenet", "caltech101", "dtd", "mini-pets"]
    small, big = make_palette(["dapt"]), make_palette(["x-method", "anprompt", "dapt", "coop"])
    assert small["dapt"] == big["dapt"] and small["anprompt"] == big["anprompt"]
    assert len(set(big.values())) == len(big)


def test_method_order_and_colour_come_from_registration() -> None:
    from anbench.method import Method
    from anbench.registry import METHODS
    from anbench.reporting import method_colours, method_order

    ranked = [e for e in METHODS.entries() if "order" in e.meta]
    assert method_order() == [e.name for e in sorted(ranked, key=lambda e: e.meta["order"])]
    assert method_order()[:3] == ["zeroshot", "coop", "dapt"]  # the paper's row order
    colours = method_colours()
    assert len(set(colours.values())) == len(colours)  # no two methods share a colour

    class FirstPlugin(Method):
        """A plugin that asks to be listed first, in colour 5."""

    METHODS.register("first-plugin", meta={"order": -1, "colour": 5})(FirstPlugin)
    try:
        assert order_methods(["dapt", "zz-unranked", "first-plugin"]) == [
            "first-plugin", "dapt", "zz-unranked"]
        palette = make_palette(["first-plugin", "zz-unranked"])
        assert palette["first-plugin"] == make_palette([])["first-plugin"]
        assert palette["zz-unranked"] not in {palette[m] for m in colours}
    finally:
        METHODS._entries.pop("first-plugin", None)


def test_formats() -> None:
    assert parse_formats("md,tex,csv") == (["md", "tex", "csv"], ["png", "pdf"])
    assert parse_formats(["csv", "png"]) == (["csv"], ["png"])
    with pytest.raises(AnbenchError, match="unknown report format"):
        parse_formats("md,docx")


def test_load_keeps_none_as_a_name(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    synthetic_results().to_csv(path, index=False)
    df = read_results(path)
    assert set(df.loc[df["method"] == "dapt", "train_noise"]) == {"none"}
    assert {c: str(df[c].dtype) for c in ("shots", "seed", "severity", "alpha", "value")} == {
        "shots": "int64", "seed": "int64", "severity": "float64", "alpha": "float64",
        "value": "float64"}
    assert sorted(df["seed"].unique()) == [1, 2]
    assert math.isinf(df.loc[df["eval_noise"] == "mask", "alpha"].iloc[0])
    assert df.loc[df["eval_noise"] == "clean", "severity"].isna().all()


def test_missing_columns_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    synthetic_results().drop(columns=["alpha"]).to_csv(path, index=False)
    with pytest.raises(AnbenchError, match="alpha"):
        read_results(path)


# ----------------------------------------------------------------------------------------------
# tables: golden text and hand-computed numbers

TABLES = ["base-to-new", "ablation", "noise-strategy", "training-noise", "robustness-summary"]


@pytest.mark.parametrize("fmt", ["md", "tex", "csv"])
@pytest.mark.parametrize("name", TABLES)
def test_tables_match_golden(full: BuildResult, name: str, fmt: str) -> None:
    path = full.index.parent / "tables" / f"{name}.{fmt}"
    check_golden(path, GOLDEN / "full" / "tables" / path.name)


def test_index_matches_golden(full: BuildResult) -> None:
    check_golden(full.index, GOLDEN / "full" / "index.md")
    assert not full.missing
    assert all(o.error is None for o in full.outcomes)


def test_average_hm_is_hm_of_averaged_base_and_new(full: BuildResult) -> None:
    table = full.outcome("base-to-new").result.tables[0]
    # anprompt (wsp): caltech101 base 90/92 new 80/84, dtd base 70/74 new 40/44
    base = (91 + 72) / 2  # 81.5
    new = (82 + 42) / 2  # 62.0
    hm = 2 * base * new / (base + new)  # 70.4251
    hm_of_hms = (2 * 91 * 82 / (91 + 82) + 2 * 72 * 42 / (72 + 42)) / 2  # 69.66, not wanted
    cell = table.cell(["Average", "anprompt"], "hm")
    assert cell.mean == pytest.approx(hm)
    assert round(cell.mean, 2) == 70.43 and round(hm_of_hms, 2) == 69.66
    b = table.cell(["Average", "anprompt"], "base")
    assert (b.mean, b.n) == (pytest.approx(81.5), 2)
    assert b.std == pytest.approx(statistics.stdev([(90 + 70) / 2, (92 + 74) / 2]))
    # per-seed HMs of the averaged base/new give the HM's spread
    h1, h2 = 2 * 80 * 60 / 140, 2 * 83 * 64 / 147
    assert cell.std == pytest.approx(statistics.stdev([h1, h2]))
    assert "70.43" in (full.index.parent / "tables" / "base-to-new.md").read_text()


def test_per_dataset_hm_is_hm_of_seed_means(full: BuildResult) -> None:
    table = full.outcome("base-to-new").result.tables[0]
    cell = table.cell(["dtd", "anprompt"], "hm")
    assert cell.mean == pytest.approx(2 * 72 * 42 / 114)
    assert table.cell(["caltech101", "zeroshot"], "new").mean == pytest.approx(75)
    # blocks: Average first, then datasets in paper order although dtd came first in the file
    assert [r.block for r in table.rows][::6] == ["Average", "caltech101", "dtd"]


def test_main_tables_show_default_training_noise(full: BuildResult) -> None:
    table = full.outcome("base-to-new").result.tables[0]
    methods = [r.labels[1] for r in table.rows if r.block == "Average"]
    assert methods == ["zeroshot", "dapt", "anprompt", "anprompt-wo-nrvpp", "anprompt-wo-waloss"]


def test_noise_strategy_values(full: BuildResult) -> None:
    table = full.outcome("noise-strategy").result.tables[0]
    ts = table.cell(["mask", "anprompt"], "ts")
    # 0.2 * 0.5 + mean cell offset (0 + .001 + .002 + .003) / 4 + mean seed offset .0005
    assert ts.mean == pytest.approx(0.102)
    assert ts.std == pytest.approx(statistics.stdev([0.1015, 0.1025]))
    assert table.cell(["mask", "anprompt"], "lpr").mean == pytest.approx(100 - 50 * 0.102)
    labels = list(dict.fromkeys(r.block for r in table.rows))
    assert labels == ["wsp (α=0.001)", "wsp (α=∞)", "drop (s=0.1)", "drop (s=0.3)", "mask"]


def test_robustness_summary_weighs_each_perturbation_equally(full: BuildResult) -> None:
    table = full.outcome("robustness-summary").result.tables[0]
    # anprompt TS per setting: wsp .0005/.04, drop .025/.075, mask .1 (+ .002 mean offsets);
    # severities/alphas are averaged within a perturbation first
    per_perturbation = [(0.0005 + 0.04) / 2, (0.025 + 0.075) / 2, 0.1]
    ts = sum(per_perturbation) / 3 + 0.002
    assert table.cell(["anprompt", "3"], "ts").mean == pytest.approx(ts)
    assert table.cell(["anprompt", "3"], "as").mean == pytest.approx(-20 * ts)


def test_training_noise_comparison(full: BuildResult) -> None:
    outcome = full.outcome("training-noise")
    data = outcome.result.figures[0].data
    assert list(zip(data["series"], data["train_noise"], strict=True)) == [
        ("anprompt", "wsp"), ("anprompt", "drop"), ("dapt", "reference")]
    drop = data[data["train_noise"] == "drop"]["mean"].iloc[0]
    b, n = (89 + 70) / 2, (80 + 40) / 2
    assert drop == pytest.approx(2 * b * n / (b + n))
    dapt = data[data["series"] == "dapt"]["mean"].iloc[0]
    b, n = (89 + 69) / 2, (79 + 41) / 2
    assert dapt == pytest.approx(2 * b * n / (b + n))


# ----------------------------------------------------------------------------------------------
# figures: files written, and the plotted series checked from the recorded data

def test_figures_are_written_with_expected_series(full: BuildResult) -> None:
    figures = full.index.parent / "figures"
    names = sorted(p.name for p in figures.iterdir())
    expected = ["noise-strategy", "training-noise", "severity-drop", "alpha-wsp",
                "perturbation-heatmap"]
    for stem in expected:
        for ext in ("png", "pdf", "data.csv"):
            path = figures / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, (path, names)
    assert len(names) == 3 * len(expected)

    noise = pd.read_csv(figures / "noise-strategy.data.csv", keep_default_na=False)
    methods = ["zeroshot", "dapt", "anprompt", "anprompt-wo-nrvpp", "anprompt-wo-waloss"]
    for metric in ("ts", "lpr", "as"):
        sub = noise[noise["metric"] == metric]
        assert list(dict.fromkeys(sub["method"])) == methods
        assert sub.groupby("method")["perturbation"].nunique().eq(5).all()

    sev = full.outcome("severity-curves").result.figures
    by_name = {f.name: f.data for f in sev}
    drop = by_name["severity-drop"]
    assert sorted(drop["x"].unique()) == [0.1, 0.3]
    assert set(drop["method"]) == set(methods)
    point = drop[(drop["method"] == "anprompt") & (drop["x"] == 0.3) & (drop["metric"] == "ts")]
    assert point["mean"].iloc[0] == pytest.approx(0.15 * 0.5 + 0.002)
    wsp = by_name["alpha-wsp"]
    assert sorted(wsp["x"].unique()) == [0.001, math.inf]
    assert wsp["x_plot"].max() == pytest.approx(0.01)  # inf drawn a decade past 0.001


# ----------------------------------------------------------------------------------------------
# partial and unusual results: notes, not exceptions

def partial_results() -> pd.DataFrame:
    df = synthetic_results()
    df = df[~df["method"].str.startswith("anprompt-wo-")]  # no ablation variants at all
    df = df[~((df["method"] == "dapt") & (df["dataset"] == "dtd"))]  # a dataset not run yet
    lost = ((df["method"] == "anprompt") & (df["train_noise"] == "wsp") & (df["dataset"] == "dtd")
            & (df["split"] == "new") & (df["seed"] == 2))  # one seed of one cell
    return df[~lost]


def test_partial_results_say_what_is_missing(tmp_path: Path) -> None:
    result = build(tmp_path, partial_results())
    assert all(o.error is None for o in result.outcomes)
    ablation = result.outcome("ablation")
    assert not ablation.files and not ablation.result.tables
    assert "no results for anprompt-wo-nrvpp" in ablation.result.missing
    assert any("ablation table not written" in n for n in ablation.result.notes)
    b2n = result.outcome("base-to-new").result
    assert "dapt: no results for dataset dtd" in b2n.missing
    assert "anprompt: seed 2 missing for dtd/new" in b2n.missing
    table = b2n.tables[0]
    assert table.cell(["dtd", "dapt"], "hm") is None  # shown as a dash, not dropped
    assert table.cell(["Average", "dapt†"], "base").mean == pytest.approx(89)
    text = result.index.read_text()
    assert "Partial results" in text and "dapt: no results for dataset dtd" in text
    check_golden(result.index, GOLDEN / "partial" / "index.md")
    check_golden(result.index.parent / "tables" / "base-to-new.md",
                 GOLDEN / "partial" / "tables" / "base-to-new.md")


def test_suite_without_sweep_or_perturbations(tmp_path: Path) -> None:
    df = synthetic_results()
    clean = df[df["eval_noise"] == "clean"]
    result = build(tmp_path / "clean", clean)
    for name in ("noise-strategy", "severity-curves", "robustness-summary"):
        outcome = result.outcome(name)
        assert outcome.result.notes and not outcome.files
    one_setting = df[(df["eval_noise"] != "drop") | (df["severity"] == 0.3)]
    one_setting = one_setting[(one_setting["eval_noise"] != "wsp") | (one_setting["alpha"] < 1)]
    sev = build(tmp_path / "nosweep", one_setting).outcome("severity-curves")
    assert not sev.files and "no severity or alpha sweep" in sev.result.notes[0]


def test_empty_and_cross_dataset_results(tmp_path: Path) -> None:
    empty = synthetic_results().iloc[:0]
    index = build(tmp_path / "empty", empty).index
    assert "no rows yet" in index.read_text()
    cross = synthetic_results()
    cross = cross[cross["split"] != "new"].assign(split="all")
    result = build(tmp_path / "cross", cross, "md,png")
    assert "no clean base/new accuracy" in result.outcome("base-to-new").result.notes[0]
    assert result.outcome("noise-strategy").files  # perturbation metrics still reported


def test_several_shots_settings_get_their_own_artefacts(tmp_path: Path) -> None:
    df = synthetic_results()
    trained = df[df["method"] != "zeroshot"].assign(shots=4)
    result = build(tmp_path, pd.concat([df, trained]), formats="md",
                   reports=["base-to-new", "training-noise"])
    settings = {o.setting for o in result.outcomes}
    assert settings == {"mini, 4 shots", "mini, 16 shots"}
    tables = sorted(p.name for p in (tmp_path / "report" / "tables").iterdir())
    assert "base-to-new_mini-4-shots.md" in tables and "base-to-new_mini-16-shots.md" in tables
    figures = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    assert "training-noise_mini-4-shots.png" in figures
    assert "[md](tables/base-to-new_mini-4-shots.md)" in result.index.read_text()
    four = result.outcome("base-to-new", "mini, 4 shots").result.tables[0]
    assert four.cell(["Average", "zeroshot"], "base").n == 2  # zero-shot joins every setting


def test_build_report_returns_index_and_replaces_stale_files(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    synthetic_results().to_csv(path, index=False)
    out = tmp_path / "report"
    index = build_report(path, out, ["md", "csv", "png"])  # png only: keeps the test fast
    assert index == out / "index.md" and index.is_file()
    assert (out / "tables" / "base-to-new.csv").is_file()
    assert not (out / "tables" / "base-to-new.tex").exists()
    keep = out / "tables" / "mine.txt"
    keep.write_text("user file")
    build_report(path, out, ["tex", "png"])
    assert not (out / "tables" / "base-to-new.csv").exists()  # stale artefact removed
    assert (out / "tables" / "base-to-new.tex").is_file() and keep.is_file()


def test_a_failing_report_is_recorded_not_raised(tmp_path: Path) -> None:
    from anbench.reporting import Report, ReportContext, ReportResult

    class Broken(Report):
        title = "Broken"

        def build(self, ctx: ReportContext) -> ReportResult:
            raise RuntimeError("boom")

    REPORTS.register("broken-test-report", description="fails on purpose")(Broken)
    try:
        path = tmp_path / "results.csv"
        synthetic_results().to_csv(path, index=False)
        result = build_report_info(path, tmp_path / "report", "md",
                                   reports=["broken-test-report", "base-to-new"])
        assert result.outcome("broken-test-report").error == "RuntimeError: boom"
        assert result.outcome("base-to-new").files
        assert "This report failed" in result.index.read_text()
        with pytest.raises(AnbenchError, match="unknown report"):
            build_report_info(path, tmp_path / "report", "md", reports=["nope"])
    finally:
        REPORTS._entries.pop("broken-test-report", None)


# ----------------------------------------------------------------------------------------------
# bootstrap intervals and significance marks from the cells' arrays (a hand-made suite)

INTERVAL_METHODS = {"good": (0.85, 0.05), "twin": (0.85, 0.05), "close": (0.8475, 0.05),
                    "bad": (0.70, 0.20)}


@pytest.fixture(scope="module")
def with_cells(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    from tests.synthetic_cells import write_suite

    root = tmp_path_factory.mktemp("cells") / "toy"
    write_suite(root, methods=INTERVAL_METHODS)
    return build_report_info(root / "results.csv", root / "report", "md,csv,tex", strict=True,
                             resamples=500)


def test_tables_gain_intervals_and_marks_from_the_cells(with_cells: BuildResult) -> None:
    table = with_cells.outcome("base-to-new").result.tables[0]
    bad = table.cell(["toy", "bad"], "base")
    # seeds 1 and 2: 71% and 72% of 400 images right; the interval brackets the mean
    assert bad.mean == pytest.approx(71.5) and bad.lo < 71.5 < bad.hi and bad.hi - bad.lo < 10
    assert all(c is not None and c.has_interval for r in table.rows for c in r.cells)
    rows = {tuple(r.labels): i for i, r in enumerate(table.rows)}
    bold, ns = table.bold(), table.not_significant()
    p = table.p_values()
    for col in range(3):
        assert (rows[("toy", "good")], col) in bold and (rows[("toy", "twin")], col) in bold
        assert (rows[("toy", "bad")], col) not in ns and p[(rows[("toy", "bad")], col)] < 0.05
    for col in range(2):  # 'close' gets one image fewer right per seed: not significant
        assert (rows[("toy", "close")], col) in ns
    text = (with_cells.index.parent / "tables" / "base-to-new.md").read_text()
    assert "n.s." in text and "95% bootstrap interval (500 resamples" in text
    assert "n: test images per dataset and split: toy base 400, new 400; seeds per model: 2" \
        in text
    check_golden(with_cells.index.parent / "tables" / "base-to-new.md",
                 GOLDEN / "intervals" / "tables" / "base-to-new.md")
    csv_text = pd.read_csv(with_cells.index.parent / "tables" / "base-to-new.csv")
    assert {"base_lo", "base_hi", "base_draw_std", "base_p", "hm_p"} <= set(csv_text.columns)
    assert "\\textsuperscript{n.s.}" in (with_cells.index.parent / "tables"
                                         / "base-to-new.tex").read_text()
    assert "bootstrap interval" in with_cells.index.read_text()


def test_perturbation_tables_show_draw_spread(with_cells: BuildResult) -> None:
    from tests.synthetic_cells import DRAWS

    table = with_cells.outcome("noise-strategy").result.tables[0]
    lpr = table.cell(["drop", "bad"], "lpr")
    assert lpr.has_interval and lpr.lo <= lpr.mean <= lpr.hi and lpr.draw_std > 0
    text = (with_cells.index.parent / "tables" / "noise-strategy.md").read_text()
    assert " sd " in text and f"noise draws per perturbation: {DRAWS}" in text
    assert "(5 classes)" not in text and "(4 classes)" in text  # TS resamples the classes
    summary = with_cells.outcome("robustness-summary").result.tables[0]
    assert summary.cell(["bad", "1"], "as").has_interval
    figure = with_cells.outcome("noise-strategy").result.figures[0]
    assert figure.data["lo"].notna().all() and "bootstrap" in figure.title


def test_intervals_leave_the_numbers_unchanged(with_cells: BuildResult, tmp_path: Path) -> None:
    root = with_cells.index.parent.parent
    plain = tmp_path / "results.csv"  # the same results without cells: mean ± std only
    plain.write_bytes((root / "results.csv").read_bytes())
    without = build_report_info(plain, tmp_path / "report", "md", strict=True)
    for name in ("base-to-new", "noise-strategy", "robustness-summary"):
        a = with_cells.outcome(name).result.tables[0]
        b = without.outcome(name).result.tables[0]
        assert [r.labels for r in a.rows] == [r.labels for r in b.rows]
        for ra, rb in zip(a.rows, b.rows, strict=True):
            for ca, cb in zip(ra.cells, rb.cells, strict=True):
                assert (ca.mean, ca.std, ca.n) == (cb.mean, cb.std, cb.n)
                assert not cb.has_interval


def test_a_damaged_cell_loses_its_interval_not_the_report(tmp_path: Path) -> None:
    from tests.synthetic_cells import write_suite

    root = tmp_path / "toy"
    store = write_suite(root, seeds=(1,), methods={"good": (0.8, 0.1), "bad": (0.6, 0.1)})
    arrays = store.cells_dir / "mini/toy/bad/none/shots16-seed1/arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-10])
    result = build_report_info(root / "results.csv", root / "report", "md", strict=True,
                               resamples=200)
    table = result.outcome("base-to-new").result.tables[0]
    assert table.cell(["toy", "good"], "base").has_interval
    assert not table.cell(["toy", "bad"], "base").has_interval
    assert "bad on toy (seed 1): arrays.npz has" in result.index.read_text()
