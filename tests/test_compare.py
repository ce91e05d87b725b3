"""`anbench compare`: paired differences on a hand-made suite, and through the CLI on a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anbench.compare import compare, format_comparison
from anbench.registry import AnbenchError
from tests.synthetic_cells import write_suite
from tests.test_runner import REPO, anbench, tiny_run


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs") / "toy"
    write_suite(root, extra=[("anprompt", "wsp", 1), ("anprompt", "drop", 1),
                             ("lonely", "none", 3)])
    return root


def row(frame: pd.DataFrame, split: str, condition: str, metric: str) -> pd.Series:
    hit = frame[(frame["split"] == split) & (frame["condition"] == condition)
                & (frame["metric"] == metric)]
    assert len(hit) == 1, (split, condition, metric)
    return hit.iloc[0]


def test_a_real_difference_is_significant(suite: Path) -> None:
    frame, a, b, notes = compare(suite, "good", "bad", resamples=500)
    assert (str(a), str(b), notes) == ("good:none", "bad:none", [])
    acc = row(frame, "base", "clean", "acc")
    # seeds 1 and 2 get 86% / 87% (good) and 71% / 72% (bad) of the 400 images right
    assert (acc["a"], acc["b"], acc["diff"]) == (pytest.approx(86.5), pytest.approx(71.5),
                                                 pytest.approx(15.0))
    assert acc["ci_low"] <= 15.0 <= acc["ci_high"] and acc["ci_low"] > 5
    assert acc["p"] < 0.01 and acc["significant"]
    assert (acc["units"], acc["unit"], acc["seeds"], acc["draws"]) == (400, "images", 2, "1")
    lpr = row(frame, "base", "drop@0.3", "lpr")  # bad loses 20% of its right images, good 5%
    assert lpr["diff"] > 0 and lpr["significant"] and lpr["draws"] == "5"
    ts = row(frame, "new", "drop@0.3", "ts")
    assert (ts["units"], ts["unit"]) == (4, "classes")
    hm = row(frame, "base-new", "clean", "hm")
    assert hm["units"] == "400+400" and hm["significant"]
    assert set(frame["metric"]) == {"acc", "hm", "as", "lpr", "ts"}


def test_identical_methods_are_not_flagged(suite: Path) -> None:
    frame, *_ = compare(suite, "good", "twin", resamples=500)
    assert np.allclose(frame["diff"], 0.0) and np.allclose(frame["ci_low"], 0.0)
    assert (frame["p"] == 1.0).all() and not frame["significant"].any()


def test_swapping_a_and_b_negates_the_difference(suite: Path) -> None:
    ab, *_ = compare(suite, "good", "bad", metrics=["acc"], resamples=300)
    ba, *_ = compare(suite, "bad", "good", metrics=["acc"], resamples=300)
    np.testing.assert_allclose(ab["diff"], -ba["diff"])
    np.testing.assert_allclose(ab["ci_low"], -ba["ci_high"])
    np.testing.assert_allclose(ab["p"], ba["p"])


def test_filters_and_training_noise(suite: Path) -> None:
    frame, a, _, _ = compare(suite, "anprompt", "good", metrics=["acc", "lpr"], resamples=200)
    assert str(a) == "anprompt:wsp"  # several training noises: the default one
    assert set(frame["metric"]) == {"acc", "lpr"} and set(frame["seeds"]) == {1}
    frame, a, _, _ = compare(suite, "anprompt:drop", "good", datasets=["toy"], resamples=200)
    assert str(a) == "anprompt:drop"
    text = format_comparison(frame, a, a, 200)
    assert "95% paired bootstrap" in text and "400 img, 1 seed, 5 draws" in text


@pytest.mark.parametrize(("a", "b", "extra", "message"), [
    ("nosuch", "good", {}, "method 'nosuch' has no results in suite 'toy'; it holds: "),
    ("good:wsp", "bad", {}, "good was not trained with noise 'wsp'"),
    ("good", "good", {}, "A and B are both good:none"),
    ("lonely", "good", {}, "share no dataset and seed"),
    ("good", "bad", {"metrics": ["accuracy"]}, "unknown metric(s) accuracy"),
    ("good", "bad", {"datasets": ["imagenet"]}, "dataset(s) imagenet not in suite"),
    ("good", "bad", {"resamples": 1}, "resamples must be a whole number"),
])
def test_bad_requests_are_one_line_errors(suite: Path, a: str, b: str, extra: dict,
                                          message: str) -> None:
    with pytest.raises(AnbenchError) as info:
        compare(suite, a, b, **extra)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_ambiguous_training_noise_asks_for_one(tmp_path: Path) -> None:
    write_suite(tmp_path / "s", seeds=(1,), methods={"good": (0.8, 0.1)},
                extra=[("anprompt", "drop", 1), ("anprompt", "mask", 1)])
    with pytest.raises(AnbenchError, match=r"several noises \(drop, mask\); name one"):
        compare(tmp_path / "s", "anprompt", "good")


def test_a_damaged_cell_is_named(tmp_path: Path) -> None:
    store = write_suite(tmp_path / "s", seeds=(1,), methods={"good": (0.8, 0.1),
                                                              "bad": (0.6, 0.1)})
    arrays = store.cells_dir / "mini/toy/bad/none/shots16-seed1/arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    with pytest.raises(AnbenchError, match="bad/none/shots16-seed1 cannot be used: arrays.npz"):
        compare(tmp_path / "s", "good", "bad")


# ----------------------------------------------------------------------------------------------
# through the command line

def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`anbench ARGS` in this process (main() turns errors into exit statuses)."""
    from anbench import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["anbench", *args])
        with pytest.raises(SystemExit) as done:
            cli.main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_cli_on_a_hand_made_suite_and_its_errors(suite: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = suite.parent
    code, stdout, _ = run_cli(capsys, "compare", "good", "bad", "--suite", "toy", "--out",
                              str(out), "--metric", "acc,hm", "--resamples", "200", "--csv",
                              str(out / "diff.csv"))
    assert code == 0 and "A = good:none, B = bad:none" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("toy")]
    assert len(lines) == 5 and all(line.endswith("yes") for line in lines)
    table = pd.read_csv(out / "diff.csv")  # acc clean and under drop per split, then HM
    assert list(table["metric"]) == ["acc"] * 4 + ["hm"]
    assert list(table["condition"]) == ["clean", "drop@0.3"] * 2 + ["clean"]
    for args, message in ((["nosuch", "bad", "--suite", "toy"], "method 'nosuch' has no results"),
                          (["good", "bad", "--suite", "toy", "--resamples", "0"],
                           "resamples must be"),
                          (["good", "bad", "--suite", "missing"], "no results at")):
        code, _, stderr = run_cli(capsys, "compare", *args, "--out", str(out))
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], stderr


def test_cli_on_the_tiny_suite(tmp_path: Path) -> None:
    anbench(*tiny_run(tmp_path, methods="coop,dapt", noise="drop"), cwd=REPO)
    proc = anbench("compare", "dapt", "coop", "--out", str(tmp_path), "--resamples", "300",
                   "--csv", str(tmp_path / "diff.csv"), cwd=REPO)
    assert "A = dapt:none, B = coop:none" in proc.stdout
    diff = pd.read_csv(tmp_path / "diff.csv")
    results = pd.read_csv(tmp_path / "default" / "results.csv")
    # A and B are the results table's numbers; the difference lies in its interval
    for r in diff.itertuples():
        if r.metric == "hm":
            continue
        for arm, method in (("a", "dapt"), ("b", "coop")):
            eval_noise = "clean" if r.condition == "clean" else "drop"
            value = results[(results.method == method) & (results.split == r.split)
                            & (results.eval_noise == eval_noise) & (results.metric == r.metric)
                            ]["value"].iloc[0]
            assert getattr(r, arm) == pytest.approx(value, abs=1e-4)
        assert r.ci_low - 1e-9 <= r.diff <= r.ci_high + 1e-9 or r.p < 0.05
    assert {"base", "new", "base-new"} == set(diff["split"])
