"""Report sections for image perturbations: the method × perturbation heatmap of accuracy shift
and the corruption summary (mCE and relative mCE against zero-shot), from small results tables
written here, with every number computed by hand; and the text sections unchanged by the
`modality` column (or its absence)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anbench.registry import AnbenchError
from anbench.reporting import BuildResult, build_report_info, read_results
from anbench.reporting.modality import categories, modalities, order_by_category
from anbench.reporting.stats import Stat
from anbench.reporting.tables import Column, Row, Table
from anbench.results_schema import RESULT_COLUMNS

OLD_COLUMNS = [c for c in RESULT_COLUMNS if c != "modality"]  # results before the column
SEEDS = (1, 2)
SPLITS = ("base", "new")
# clean accuracy per (method, split) and seed
CLEAN = {("zeroshot", "base"): (80.0, 80.0), ("zeroshot", "new"): (70.0, 70.0),
         ("coop", "base"): (90.0, 92.0), ("coop", "new"): (70.0, 72.0)}
# accuracy lost (pp) per method, perturbation and severity; coop loses 1 pp more on seed 2
DROP = {
    "zeroshot": {("gaussian-noise", 1): 10.0, ("gaussian-noise", 2): 30.0,
                 ("fog", 1): 5.0, ("fog", 2): 15.0, ("mix", 1): 1.0},
    "coop": {("gaussian-noise", 1): 8.0, ("gaussian-noise", 2): 20.0,
             ("fog", 1): 5.0, ("fog", 2): 10.0, ("mix", 1): 2.0},
}
TEXT_DROP = {"zeroshot": 3.0, "coop": 4.0}  # text perturbation `drop` at severity 0.3


def extra(method: str, seed: int) -> float:
    return 1.0 if method == "coop" and seed == 2 else 0.0


def image_results(methods: tuple[str, ...] = ("zeroshot", "coop"), modality: bool = True,
                  image: bool = True) -> pd.DataFrame:
    """Clean, text (`drop`) and image (two corruptions x two severities, one feature mixing)
    rows; `modality=False` writes the table as it was before the column existed."""
    rows: list[dict[str, object]] = []
    nan = math.nan
    for method in methods:
        for i, seed in enumerate(SEEDS):
            base = dict(suite="img", dataset="toy", backbone="mini", method=method,
                        train_noise="none", shots=0 if method == "zeroshot" else 16, seed=seed)
            for split in SPLITS:
                clean = CLEAN[(method, split)][i]
                rows.append(base | dict(split=split, eval_noise="clean", severity=nan, alpha=nan,
                                        metric="acc", value=clean, modality="none"))
                loss = TEXT_DROP[method] + extra(method, seed)
                cell = base | dict(split=split, eval_noise="drop", severity=0.3, alpha=math.inf,
                                   modality="text")
                rows += [cell | dict(metric="acc", value=clean - loss),
                         cell | dict(metric="as", value=-loss),
                         cell | dict(metric="lpr", value=95.0),
                         cell | dict(metric="ts", value=0.1)]
                if not image:
                    continue
                for (noise, severity), drop in DROP[method].items():
                    loss = drop + extra(method, seed)
                    cell = base | dict(split=split, eval_noise=noise, severity=float(severity),
                                       alpha=nan, modality="image")
                    rows += [cell | dict(metric="acc", value=clean - loss),
                             cell | dict(metric="as", value=-loss),
                             cell | dict(metric="lpr", value=90.0),
                             cell | dict(metric="ifs", value=0.05)]
            hm = 2 * CLEAN[(method, "base")][i] * CLEAN[(method, "new")][i] / (
                CLEAN[(method, "base")][i] + CLEAN[(method, "new")][i])
            rows.append(base | dict(split="base-new", eval_noise="clean", severity=nan,
                                    alpha=nan, metric="hm", value=hm, modality="none"))
    df = pd.DataFrame(rows)
    return df if modality else df[OLD_COLUMNS]


def build(path: Path, df: pd.DataFrame, formats: str = "md,tex,csv,png",
          reports: list[str] | None = None) -> BuildResult:
    path.mkdir(parents=True, exist_ok=True)
    df.to_csv(path / "results.csv", index=False)
    return build_report_info(path / "results.csv", path / "report", formats, strict=True,
                             reports=reports)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(tmp_path_factory.mktemp("image"), image_results())


# ------------------------------------------------------------------ hand computations

def acc(method: str, split: str, seed: int, noise: str | None = None,
        severity: int | None = None) -> float:
    clean = CLEAN[(method, split)][SEEDS.index(seed)]
    if noise is None:
        return clean
    return clean - DROP[method][(noise, severity)] - extra(method, seed)


def hand_ce(method: str, noise: str, seed: int, split: str, relative: bool) -> float:
    """100 · Σ_s E(method) / Σ_s E(zeroshot), zero-shot's errors averaged over its seeds."""
    def errors(m: str, s: int) -> float:
        total = 0.0
        for severity in (1, 2):
            e = 100 - acc(m, split, s, noise, severity)
            total += e - (100 - acc(m, split, s)) if relative else e
        return total

    reference = statistics.mean(errors("zeroshot", s) for s in SEEDS)
    return 100 * errors(method, seed) / reference


def hand_mce(method: str, seed: int, relative: bool = False) -> float:
    return statistics.mean(statistics.mean(hand_ce(method, c, seed, sp, relative)
                                           for sp in SPLITS)
                           for c in ("gaussian-noise", "fog"))


# ------------------------------------------------------------------ the heatmap

def test_heatmap_values_by_hand(built: BuildResult) -> None:
    table = built.outcome("perturbation-heatmap").result.tables[0]
    assert [c.key for c in table.columns] == ["zeroshot", "coop"]
    # coop under gaussian-noise: AS -(8, 20) on seed 1, one more pp on seed 2; splits alike
    cell = table.cell(["image · noise", "gaussian-noise"], "coop")
    per_seed = [-(8 + 20) / 2, -(8 + 20) / 2 - 1]
    assert cell.mean == pytest.approx(statistics.mean(per_seed))
    assert cell.std == pytest.approx(statistics.stdev(per_seed)) and cell.n == 2
    assert table.cell(["image · weather", "fog"], "zeroshot").mean == pytest.approx(-10.0)
    # the feature mixing has no ImageNet-C category: shown, in its own block
    assert table.cell(["image", "mix"], "coop").mean == pytest.approx(-2.5)
    # the image mean weighs each perturbation equally
    mean = table.cell(["image · mean", "mean of 3"], "coop")
    assert mean.mean == pytest.approx(statistics.mean([-14.5, -8.0, -2.5]))
    # text perturbations are a separate block, with only text rows in them
    assert table.cell(["text · word", "drop"], "coop").mean == pytest.approx(-4.5)
    assert table.cell(["text · mean", "mean of 1"], "zeroshot").mean == pytest.approx(-3.0)
    assert [r.labels[1] for r in table.rows] == ["drop", "mean of 1", "gaussian-noise", "fog",
                                                 "mix", "mean of 3"]
    # bold per row: the smaller loss
    bold = table.bold()
    row = [r.labels[1] for r in table.rows].index("gaussian-noise")
    assert (row, 1) in bold and (row, 0) not in bold
    text = (built.index.parent / "tables" / "perturbation-heatmap.md").read_text()
    assert "n (seeds per method): zeroshot 2, coop 2." in text
    assert "| image · noise | gaussian-noise | -20.00 ± 0.00 (2) | **-14.50** ± 0.71 (2) |" in text


def test_heatmap_figure_data_and_png(built: BuildResult) -> None:
    figures = built.index.parent / "figures"
    data = pd.read_csv(figures / "perturbation-heatmap.data.csv", keep_default_na=False)
    assert set(data["modality"]) == {"text", "image"}
    row = data[(data["perturbation"] == "fog") & (data["method"] == "coop")]
    assert row["mean"].item() == pytest.approx(-8.0)
    png = figures / "perturbation-heatmap.png"
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[1] > 900  # 3.4 in or more at 300 dpi
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # colours drawn, not blank


def test_text_only_results_get_a_text_heatmap(tmp_path: Path) -> None:
    result = build(tmp_path, image_results(image=False), "md")
    table = result.outcome("perturbation-heatmap").result.tables[0]
    assert [r.block for r in table.rows] == ["text · word", "text · mean"]
    corruption = result.outcome("corruption-summary")
    assert not corruption.result.tables and not corruption.files
    assert corruption.result.notes == ["no image corruptions in the results: no corruption "
                                       "summary"]


# ------------------------------------------------------------------ the corruption summary

def test_mce_and_relative_mce_by_hand(built: BuildResult) -> None:
    table = built.outcome("corruption-summary").result.tables[0]
    for method in ("zeroshot", "coop"):
        mce = table.cell([method, "2"], "mce")
        per_seed = [hand_mce(method, s) for s in SEEDS]
        assert mce.mean == pytest.approx(statistics.mean(per_seed), abs=1e-9)
        assert mce.std == pytest.approx(statistics.stdev(per_seed), abs=1e-9)
        rel = table.cell([method, "2"], "relative_mce")
        per_seed = [hand_mce(method, s, relative=True) for s in SEEDS]
        assert rel.mean == pytest.approx(statistics.mean(per_seed), abs=1e-9)
    assert table.cell(["zeroshot", "2"], "mce").mean == pytest.approx(100.0)
    assert table.cell(["zeroshot", "2"], "relative_mce").mean == pytest.approx(100.0)
    # spelled out for coop, base split, gaussian-noise, seed 1: errors 18 + 30 against 30 + 50
    assert hand_ce("coop", "gaussian-noise", 1, "base", False) == pytest.approx(60.0)
    # relative: (18 - 10) + (30 - 10) against (30 - 20) + (50 - 20)
    assert hand_ce("coop", "gaussian-noise", 1, "base", True) == pytest.approx(70.0)
    # mean corruption error: E over corruptions, severities, splits and seeds (no mixing)
    coop = [100 - acc("coop", sp, s, c, sev) for sp in SPLITS for s in SEEDS
            for c in ("gaussian-noise", "fog") for sev in (1, 2)]
    assert table.cell(["coop", "2"], "mean_error").mean == pytest.approx(statistics.mean(coop))
    per_corruption = built.outcome("corruption-summary").result.tables[1]
    fog = per_corruption.cell(["image · weather", "fog"], "coop")
    assert fog.mean == pytest.approx(statistics.mean(
        hand_ce("coop", "fog", s, sp, False) for s in SEEDS for sp in SPLITS))
    text = (built.index.parent / "tables" / "corruption-summary.md").read_text()
    assert "not counted as corruptions" not in text  # a report note, not a table note
    assert "mix" in " ".join(built.outcome("corruption-summary").result.notes)
    assert "Hendrycks & Dietterich" in text and "n (seeds per method): zeroshot 2, coop 2" in text


def test_without_zeroshot_only_mean_error(tmp_path: Path) -> None:
    result = build(tmp_path, image_results(methods=("coop",)), "md")
    outcome = result.outcome("corruption-summary")
    (table,) = outcome.result.tables
    assert [c.key for c in table.columns] == ["mean_error"]
    assert table.notes[0].startswith("no zeroshot results in this setting: mCE and relative "
                                     "mCE need them")
    coop = [100 - acc("coop", sp, s, c, sev) for sp in SPLITS for s in SEEDS
            for c in ("gaussian-noise", "fog") for sev in (1, 2)]
    assert table.cell(["coop", "2"], "mean_error").mean == pytest.approx(statistics.mean(coop))


def test_reference_without_a_positive_error_increase_is_left_out(tmp_path: Path) -> None:
    df = image_results()
    # zero-shot gains accuracy under fog: no relative CE for fog (the ratio would flip sign)
    fog_zs = (df["method"] == "zeroshot") & (df["eval_noise"] == "fog")
    df.loc[fog_zs & (df["metric"] == "as"), "value"] = 1.0
    result = build(tmp_path, df, "md")
    summary = result.outcome("corruption-summary").result.tables[0]
    rel = summary.cell(["coop", "2"], "relative_mce")
    per_seed = [statistics.mean(hand_ce("coop", "gaussian-noise", s, sp, True) for sp in SPLITS)
                for s in SEEDS]
    assert rel.mean == pytest.approx(statistics.mean(per_seed))
    assert any("fog/toy/base" in n and "not positive" in n for n in summary.notes)


def test_a_method_missing_a_corruption_is_marked(tmp_path: Path) -> None:
    df = image_results()
    df = df[~((df["method"] == "coop") & (df["eval_noise"] == "fog"))]
    result = build(tmp_path, df, "md")
    summary = result.outcome("corruption-summary").result.tables[0]
    cell = summary.cell(["coop†", "1"], "mce")
    assert cell.mean == pytest.approx(statistics.mean(
        statistics.mean(hand_ce("coop", "gaussian-noise", s, sp, False) for sp in SPLITS)
        for s in SEEDS))
    assert "† coop: mCE over 1 of 2 corruptions" in summary.notes
    heatmap = result.outcome("perturbation-heatmap").result.tables[0]
    assert heatmap.cell(["image · mean", "mean of 3"], "coop") is None
    assert "image: coop: no results for eval_noise fog" in result.outcome(
        "perturbation-heatmap").result.missing
    assert not result.outcome("corruption-summary").result.missing  # listed once


# ------------------------------------------------------------------ old results, text sections

TEXT_REPORTS = ["base-to-new", "noise-strategy", "severity-curves", "robustness-summary",
                "training-noise", "ablation"]


def test_text_sections_ignore_image_rows_and_old_tables_read_the_same(tmp_path: Path) -> None:
    with_images = build(tmp_path / "new", image_results(), "md,tex,csv")
    build(tmp_path / "old", image_results(image=False, modality=False), "md,tex,csv")
    for name in ("noise-strategy", "robustness-summary", "base-to-new"):
        for ext in ("md", "tex", "csv"):
            a = (tmp_path / "new" / "report" / "tables" / f"{name}.{ext}").read_text()
            b = (tmp_path / "old" / "report" / "tables" / f"{name}.{ext}").read_text()
            if name != "base-to-new":  # with image rows, a note points to the image sections
                assert (_IMAGE_NOTE in a) == (ext != "csv") and _IMAGE_NOTE not in b
                a = "".join(line for line in a.splitlines(keepends=True)
                            if _IMAGE_NOTE not in line)
            assert a == b, (name, ext)
    summary = with_images.outcome("robustness-summary").result.tables[0]
    assert summary.cell(["coop", "1"], "as").mean == pytest.approx(-4.5)  # drop only
    assert list(summary.columns[2:3]) and summary.rows[0].labels[1] == "1"
    assert "heatmap" not in (tmp_path / "old" / "report" / "tables"
                             / "robustness-summary.md").read_text()


_IMAGE_NOTE = "Text perturbations only: image perturbations are in the perturbation heatmap"


def test_old_results_without_the_column_equal_ones_with_it(tmp_path: Path) -> None:
    """The same text results with and without a modality column give the same report."""
    old = build(tmp_path / "old", image_results(image=False, modality=False), "md,tex,csv")
    new = build(tmp_path / "new", image_results(image=False), "md,tex,csv")
    names = sorted(p.name for p in (tmp_path / "old" / "report" / "tables").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "new" / "report" / "tables").iterdir())
    for name in names:
        assert ((tmp_path / "old" / "report" / "tables" / name).read_text()
                == (tmp_path / "new" / "report" / "tables" / name).read_text()), name
    assert [o.name for o in old.outcomes] == [o.name for o in new.outcomes]


def test_modality_is_read_or_inferred(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    image_results(modality=False).to_csv(path, index=False)
    df = read_results(path)
    # without the column, every perturbed row was a text row (all there was)
    assert set(df.loc[df["eval_noise"] == "clean", "modality"]) == {"none"}
    assert set(df.loc[df["eval_noise"] == "fog", "modality"]) == {"text"}
    with_column = image_results()
    with_column.loc[with_column["eval_noise"] == "drop", "modality"] = ""  # blank: inferred
    with_column.to_csv(path, index=False)
    df = read_results(path)
    assert set(df.loc[df["eval_noise"] == "fog", "modality"]) == {"image"}
    assert set(df.loc[df["eval_noise"] == "drop", "modality"]) == {"text"}
    # reports ask `modalities`, which reads the column or, without it, infers alike
    assert list(modalities(df)) == list(df["modality"])
    inferred = ["none" if n == "clean" else "text" for n in df["eval_noise"]]
    assert list(modalities(df.drop(columns="modality"))) == inferred


@pytest.mark.parametrize("value, match", [
    ("video", "column 'modality' must be one of none, text, image"),
    ("none", "column 'modality' is 'none' at line 2, whose eval_noise is 'drop'"),
])
def test_a_damaged_modality_column_is_one_clear_error(tmp_path: Path, value: str,
                                                      match: str) -> None:
    df = image_results()
    df = pd.concat([df[df["eval_noise"] == "drop"].head(1), df]).reset_index(drop=True)
    df.loc[0, "modality"] = value
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    with pytest.raises(AnbenchError, match=match) as info:
        read_results(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    clean = image_results()
    clean.loc[0, "modality"] = "image"  # a clean row that claims a perturbed image
    clean.to_csv(path, index=False)
    with pytest.raises(AnbenchError, match="whose eval_noise is 'clean'"):
        read_results(path)


def test_categories_follow_imagenet_c_and_registered_levels() -> None:
    cats = categories(["fog", "jpeg-compression", "drop", "char-swap", "unknown-thing"])
    assert cats == {"fog": "weather", "jpeg-compression": "digital", "drop": "word",
                    "char-swap": "char", "unknown-thing": ""}
    assert [n for n, _ in order_by_category(["fog", "gaussian-noise", "contrast",
                                             "motion-blur", "shot-noise"])] == [
        "gaussian-noise", "shot-noise", "motion-blur", "fog", "contrast"]


# ------------------------------------------------------------------ Table: transposed, reference

def _stat(mean: float, reps: list[float]) -> Stat:
    return Stat(mean, 0.0, 2, min(reps), max(reps), replicates=np.array(reps))


def test_row_mode_bolds_the_best_of_each_row_and_tests_against_it() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(size=400)
    table = Table("t", "t", ["Perturbation"], [Column("a", "a", 2, "max"),
                                                Column("b", "b", 2, "max"),
                                                Column("c", "c", 2, "max")],
                  [Row(["x"], [_stat(-1.0, list(-1 + 0.1 * noise)),
                               _stat(-5.0, list(-5 + 0.1 * noise)),
                               _stat(-1.01, list(-1.01 + 0.1 * noise + 0.05 * noise[::-1]))])],
                  compare="row")
    assert table.bold() == {(0, 0)}
    p = table.p_values()
    assert p[(0, 1)] < 0.05 and p[(0, 2)] >= 0.05 and (0, 0) not in p
    assert "n.s.: not significantly different from the bold value of its row" in \
        table.to_markdown()


def test_reference_row_marks_what_does_not_differ_from_it() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(size=400)
    rows = [Row(["zeroshot"], [_stat(100.0, [100.0] * 400)]),
            Row(["coop"], [_stat(80.0, list(80 + noise))]),
            Row(["dapt"], [_stat(99.9, list(99.9 + noise))])]
    table = Table("t", "t", ["Method"], [Column("mce", "mCE", 2, "min")], rows, reference=0)
    assert table.bold() == {(1, 0)}
    p = table.p_values()
    assert set(p) == {(1, 0), (2, 0)} and p[(1, 0)] < 0.05 and p[(2, 0)] >= 0.05
    assert table.not_significant() == {(2, 0)}
    assert "not significantly different from zeroshot in its column" in table.to_markdown()


# ------------------------------------------------------------------ intervals from the cells

N_IMAGES, N_CLASSES, SUBSAMPLE = 200, 4, 120
CORRUPTIONS = (("gaussian-noise", 1.0), ("gaussian-noise", 2.0), ("fog", 1.0), ("fog", 2.0))
# method -> (clean accuracy, share of right images a corruption makes wrong at severity 1)
CELL_METHODS = {"zeroshot": (0.70, 0.30), "twin": (0.70, 0.30), "coop": (0.85, 0.10)}


def _logits(labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
    out = np.zeros((len(labels), N_CLASSES), dtype=np.float32)
    out[np.arange(len(labels)), np.where(correct, labels, (labels + 1) % N_CLASSES)] = 1.0
    return out


def write_image_suite(root: Path) -> None:
    """Cells whose arrays hold text and image conditions (the runner's layout), rows computed
    from them with `anbench.metrics`; 'twin' has exactly zero-shot's arrays."""
    from anbench import metrics
    from anbench.store import CellKey, SuiteStore

    store = SuiteStore(root)
    index = np.arange(0, N_IMAGES, N_IMAGES // SUBSAMPLE)[:SUBSAMPLE]  # the same every seed
    for method, (accuracy, flip) in CELL_METHODS.items():
        for seed in SEEDS:
            rng = np.random.default_rng(seed * 10 + (0 if method == "twin" else
                                                     list(CELL_METHODS).index(method)))
            key = CellKey("mini", "toy", method, "none", 0 if method == "zeroshot" else 16,
                          seed)
            base = dict(suite=root.name, dataset="toy", backbone="mini", method=method,
                        train_noise="none", shots=key.shots, seed=seed)
            arrays: dict[str, np.ndarray] = {}
            rows: list[dict[str, object]] = []
            for split in SPLITS:
                labels = np.arange(N_IMAGES) % N_CLASSES
                correct = rng.random(N_IMAGES) < accuracy
                clean = _logits(labels, correct)
                arrays |= {f"{split}/labels": labels, f"{split}/logits/clean": clean,
                           f"{split}/text/clean": rng.normal(size=(N_CLASSES, 8)),
                           f"{split}/image_index": index}
                rows.append(base | dict(split=split, eval_noise="clean", severity=math.nan,
                                        alpha=math.nan, modality="none", metric="acc",
                                        value=metrics.accuracy(clean, labels)))
                for noise, severity in CORRUPTIONS:
                    cond = f"{noise}@{severity:g}"
                    draws = [_logits(labels[index], correct[index]
                                     & (rng.random(SUBSAMPLE) >= flip * severity))
                             for _ in range(2)]
                    arrays[f"{split}/image_logits/{cond}"] = np.stack(draws)
                    arrays[f"{split}/image_ifs/{cond}"] = rng.random((2, SUBSAMPLE)) * 0.1
                    values = {
                        "acc": [metrics.accuracy(d, labels[index]) for d in draws],
                        "as": [metrics.accuracy_shift(clean[index], d, labels[index])
                               for d in draws],
                        "lpr": [metrics.logit_preservation_rate(clean[index], d) for d in draws],
                        "ifs": list(arrays[f"{split}/image_ifs/{cond}"].mean(axis=1))}
                    for metric, per_draw in values.items():
                        rows.append(base | dict(split=split, eval_noise=noise,
                                                severity=severity, alpha=math.nan,
                                                modality="image", metric=metric,
                                                value=float(np.mean(per_draw))))
            store.write_cell(key, "fp", pd.DataFrame(rows), arrays, None, {"seconds": 0.0})
    store.write_results()


@pytest.fixture(scope="module")
def with_cells(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    root = tmp_path_factory.mktemp("cells") / "img"
    write_image_suite(root)
    return build_report_info(root / "results.csv", root / "report", "md,csv", strict=True,
                             resamples=400)


def test_image_cells_get_intervals_and_tests_against_zeroshot(with_cells: BuildResult) -> None:
    table = with_cells.outcome("corruption-summary").result.tables[0]
    zs, twin, coop = (table.cell([m, "2"], "mce") for m in ("zeroshot", "twin", "coop"))
    assert all(c.has_interval for c in (zs, twin, coop))
    # zero-shot against itself: 100 in every resample; its twin has the same arrays
    assert (zs.lo, zs.mean, zs.hi) == (pytest.approx(100.0),) * 3
    assert (twin.lo, twin.mean, twin.hi) == (pytest.approx(100.0),) * 3
    assert coop.lo <= coop.mean <= coop.hi < 100.0  # far fewer errors than zero-shot
    p = table.p_values()
    rows = [r.labels[0] for r in table.rows]
    assert p[(rows.index("coop"), 0)] < 0.05 and p[(rows.index("twin"), 0)] == 1.0
    assert table.not_significant() >= {(rows.index("twin"), 0)}
    error = table.cell(["coop", "2"], "mean_error")
    assert error.has_interval and error.lo <= error.mean <= error.hi
    text = (with_cells.index.parent / "tables" / "corruption-summary.md").read_text()
    assert "not significantly different from zeroshot in its column" in text
    assert f"base (image conditions) {SUBSAMPLE}" in text  # n of the image subsample
    heatmap = with_cells.outcome("perturbation-heatmap").result.tables[0]
    cell = heatmap.cell(["image · noise", "gaussian-noise"], "coop")
    assert cell.has_interval and cell.lo <= cell.mean <= cell.hi and cell.draw_std > 0


def test_image_intervals_leave_the_numbers_unchanged(with_cells: BuildResult,
                                                     tmp_path: Path) -> None:
    plain = tmp_path / "results.csv"  # the same results without the cells
    plain.write_bytes((with_cells.index.parent.parent / "results.csv").read_bytes())
    without = build_report_info(plain, tmp_path / "report", "md", strict=True)
    for name in ("corruption-summary", "perturbation-heatmap"):
        for a, b in zip(with_cells.outcome(name).result.tables,
                        without.outcome(name).result.tables, strict=True):
            for ra, rb in zip(a.rows, b.rows, strict=True):
                for ca, cb in zip(ra.cells, rb.cells, strict=True):
                    if ca is None:
                        assert cb is None
                        continue
                    assert (ca.mean, ca.n) == (pytest.approx(cb.mean, abs=1e-9), cb.n)
                    assert not cb.has_interval


# ------------------------------------------------------------------ the HTML report's heatmaps

def test_html_heatmaps_keep_text_and_image_apart(tmp_path: Path) -> None:
    from anbench.reporting.html import heatmaps

    path = tmp_path / "results.csv"
    image_results().to_csv(path, index=False)
    maps = heatmaps(read_results(path))
    assert [m["id"] for m in maps] == ["heatmap-as", "heatmap-lpr", "heatmap-ts",
                                       "heatmap-image-as", "heatmap-image-lpr",
                                       "heatmap-image-ifs"]
    image_as = maps[3]
    assert image_as["title"].startswith("Image perturbations: AS")
    assert image_as["columns"] == ["gaussian-noise", "fog", "mix"]  # severities averaged
    coop = next(r for r in image_as["rows"] if r["label"] == "coop")
    assert [c["text"] for c in coop["cells"]] == ["-14.50", "-8.00", "-2.50"]
    assert maps[0]["title"].startswith("Text perturbations: ") and maps[0]["columns"] == [
        "drop"]
    image_results(image=False, modality=False).to_csv(path, index=False)
    old = heatmaps(read_results(path))  # results from before the column: as they were
    assert [(m["id"], m["title"]) for m in old] == [
        ("heatmap-as", "AS (pp) ↑"), ("heatmap-lpr", "LPR (%) ↑"), ("heatmap-ts", "TS ↓")]


def test_resamples_without_a_ratio_are_dropped_only_when_few() -> None:
    """A resample where zero-shot made no error has no ratio: up to 5% of them are left out of
    the interval (the same ones for every method), more cost the interval."""
    from anbench.reporting.corruption import MAX_UNDEFINED, _Ratios
    from anbench.reporting.uncertainty import Uncertainty
    from anbench.stats import Estimate

    frame = pd.DataFrame({"eval_noise": ["fog", "fog"], "dataset": ["toy", "toy"],
                          "split": ["base", "base"], "seed": [1, 2], "value": [50.0, 60.0]})
    reps = np.linspace(45.0, 65.0, 200)
    for lost, kept in ((int(MAX_UNDEFINED * 200), True), (int(MAX_UNDEFINED * 200) + 1, False)):
        values = reps.copy()
        values[:lost] = np.nan
        ratios = _Ratios(frame, {("fog", "toy", "base"): Estimate(55.0, values)}, [])
        undefined: dict[str, tuple[int, int]] = {}
        # only `is None` matters here: the replicates are given
        stat = ratios.stat(object.__new__(Uncertainty), undefined, "mCE")
        assert stat.mean == pytest.approx(55.0) and undefined == {"mCE": (lost, 200)}
        assert stat.has_interval is kept
        if kept:
            assert len(stat.replicates) == 200 - lost
            assert stat.lo == pytest.approx(np.percentile(reps[lost:], 2.5))
