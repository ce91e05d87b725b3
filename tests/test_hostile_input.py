"""Bad, damaged and stale input through the CLI: one-line errors, nothing written, nothing merged.

Every case runs `anbench` as a user would (a subprocess) on the tiny backbone and dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.test_runner import REPO, anbench, tiny_run

CELL = Path("cells/tiny-clip/tiny-shapes")
COOP = CELL / "coop/none/shots16-seed1"


def one_error(proc: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    return lines[0]


def coop_run(out: Path, *extra: str) -> list[str]:
    return tiny_run(out, *extra, methods="zeroshot,coop", noise="drop")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    anbench(*coop_run(out), cwd=REPO)
    return out


# ---------------------------------------------------------------- refused before writing
@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "1180591620717411303424"], "seed 1180591620717411303424 is outside"),
    (["--seeds", "1,1"], "a seed is listed twice"),
    (["--suite", "../../escape"], "'../../escape' is not a plain name"),
    (["--suite", "/abs/path"], "'/abs/path' is not a plain name"),
    (["--suite", ""], "is not a plain name"),
    (["--suite", ".hidden"], "is not a plain name"),
    (["--set", "run=5"], "config error at 'run'"),
    (["--set", "per_dataset.digitz.methods.coop.epochs=1"],
     "'per_dataset.digitz': no dataset is called 'digitz'"),
    (["--set", "per_backbone.minii.methods.coop.epochs=1"],
     "'per_backbone.minii': no backbone is called 'minii'"),
    (["--shots", "100000"], "--shots 100000: dataset tiny-shapes has only 16 training images"),
    (["--set", "run.protocol=cross-dataset"], "cross-dataset needs run.source_dataset"),
])
def test_refused_before_writing(tmp_path: Path, args: list[str], message: str):
    proc = anbench(*coop_run(tmp_path / "out"), *args, cwd=REPO, check=False)
    one_error(proc, message)
    assert not (tmp_path / "out").exists(), "nothing may be written for bad input"
    assert not (tmp_path / "escape").exists()


def test_binary_config_and_descriptions_file(tmp_path: Path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    proc = anbench(*coop_run(tmp_path / "out"), "--config", str(binary), cwd=REPO, check=False)
    one_error(proc, "is not UTF-8 text")
    proc = anbench("run", "--datasets", "digits", "--methods", "zeroshot", "--noise", "none",
                   "--out", str(tmp_path / "out"), "--dry-run", "--set",
                   f"datasets.digits.descriptions_file={binary}", cwd=REPO, check=False)
    one_error(proc, "is not UTF-8 text")


def test_out_naming_a_file(tmp_path: Path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    proc = anbench(*coop_run(target), cwd=REPO, check=False)
    one_error(proc, "exists and is not a folder")
    assert target.read_text() == "not a folder"


def test_report_suite_must_be_a_plain_name(suite: Path):
    proc = anbench("report", "--suite", "../default", "--out", str(suite / "default"), cwd=REPO,
                   check=False)
    one_error(proc, "'--suite': '../default' is not a plain name")


# ---------------------------------------------------------------- layering
def test_command_line_beats_per_dataset_and_per_backbone(tmp_path: Path):
    config = tmp_path / "extra.yaml"
    config.write_text("per_dataset: {tiny-shapes: {methods: {coop: {epochs: 7, lr: 0.5}}}}\n"
                      "per_backbone: {tiny-clip: {methods: {coop: {batch_size: 3}}}}\n")
    proc = anbench(*coop_run(tmp_path), "--config", str(config), "--dry-run", cwd=REPO)
    coop_line = next(line for line in proc.stdout.splitlines() if "coop on" in line)
    # FAST sets epochs=2 on the command line: it beats the per_dataset block's 7.
    assert "epochs=2" in coop_line and "lr=0.5" in coop_line and "batch_size=3" in coop_line


def test_per_backbone_run_block_sits_below_the_command_line():
    from anbench.config import load_config

    assert load_config(None, ["run.backbone=vit-b-16"]).run.augment is True  # bench.yaml block
    assert load_config(None, ["run.backbone=vit-b-16", "run.augment=false"]).run.augment is False
    assert load_config(None, []).run.augment is False  # mini's default


# ---------------------------------------------------------------- damaged cells
def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "default" / "results.csv")


@pytest.mark.parametrize("damage", ["truncate-rows", "empty-rows", "truncate-arrays",
                                    "delete-meta", "delete-prompts", "garbage-marker"])
def test_damaged_cell_is_redone_never_merged(tmp_path: Path, damage: str):
    anbench(*coop_run(tmp_path), cwd=REPO)
    before = _table(tmp_path)
    cell = tmp_path / "default" / COOP
    if damage == "truncate-rows":
        data = (cell / "rows.csv").read_bytes()
        (cell / "rows.csv").write_bytes(data[: len(data) // 2])
    elif damage == "empty-rows":
        (cell / "rows.csv").write_bytes(b"")
    elif damage == "truncate-arrays":
        data = (cell / "arrays.npz").read_bytes()
        (cell / "arrays.npz").write_bytes(data[: len(data) // 2])
    elif damage == "delete-meta":
        (cell / "meta.json").unlink()
    elif damage == "delete-prompts":
        (cell / "prompts.pt").unlink()
    else:
        (cell / "COMPLETE").write_bytes(b"\x00\xff garbage")
    dry = anbench(*coop_run(tmp_path), "--dry-run", cwd=REPO)
    assert any("damaged" in line and "coop" in line for line in dry.stdout.splitlines())
    proc = anbench(*coop_run(tmp_path), cwd=REPO)
    assert "1 cells run, 1 already complete" in proc.stdout + proc.stderr
    if damage != "garbage-marker":
        assert "damaged" in proc.stdout + proc.stderr
    after = _table(tmp_path)
    assert after.shape == before.shape
    assert after.shots.dtype.kind == "i" and after.seed.dtype.kind == "i"
    pd.testing.assert_frame_equal(after, before, check_exact=False, atol=1e-6)


def test_results_keep_integer_columns(suite: Path):
    text = (suite / "default" / "results.csv").read_text().splitlines()
    header = text[0].split(",")
    shots, seed = header.index("shots"), header.index("seed")
    assert all(line.split(",")[shots] == "16" and line.split(",")[seed] == "1"
               for line in text[1:])


def test_stray_temp_files_are_removed_on_the_next_run(suite: Path):
    cell = suite / "default" / COOP
    strays = [cell / ".arrays.npz.abc123.tmp", suite / "default" / ".results.csv.xyz.tmp"]
    for stray in strays:
        stray.write_bytes(b"half written")
    anbench(*coop_run(suite, "--set", "methods.coop.lr=0.003"), cwd=REPO)  # redoes coop
    assert not any(stray.exists() for stray in strays)


# ---------------------------------------------------------------- stale cells
def test_stale_cells_stay_out_of_results_and_can_be_pruned(tmp_path: Path):
    anbench(*coop_run(tmp_path, "--seeds", "3", "--set", "methods.coop.epochs=1"), cwd=REPO)
    anbench(*coop_run(tmp_path, "--seeds", "1,2"), cwd=REPO)
    table = _table(tmp_path)
    # The epochs=1 coop cell of seed 3 is stale; zeroshot's seed-3 cell had the same settings.
    assert set(table[table.method == "coop"].seed) == {1, 2}
    assert set(table[table.method == "zeroshot"].seed) == {1, 2, 3}
    stale_dir = tmp_path / "default" / CELL / "coop/none/shots16-seed3"
    assert (stale_dir / "COMPLETE").is_file()  # kept on disk
    dry = anbench(*coop_run(tmp_path, "--seeds", "1,2"), "--dry-run", cwd=REPO)
    assert any(line.strip().startswith("stale") and "coop" in line and "seed 3" in line
               for line in dry.stdout.splitlines())
    report = anbench("report", "--out", str(tmp_path), cwd=REPO)
    assert "stale: cells/tiny-clip/tiny-shapes/coop/none/shots16-seed3" in report.stderr
    assert (tmp_path / "default" / CELL / "zeroshot/none/shots16-seed3/COMPLETE").is_file()
    pruned = anbench("prune", "--out", str(tmp_path), cwd=REPO)
    assert "coop/none/shots16-seed3" in pruned.stdout and not stale_dir.exists()
    pd.testing.assert_frame_equal(_table(tmp_path), table)


# ---------------------------------------------------------------- full disk, read-only storage
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_is_one_line_and_exit_1(tmp_path: Path):
    with tmpfs(tmp_path / "small", "48k") as out:
        proc = anbench(*coop_run(out), cwd=REPO, check=False)
    one_error(proc, "no space left on the device", code=1)


def test_read_only_out(tmp_path: Path):
    with tmpfs(tmp_path / "ro", "64m") as out:
        anbench(*coop_run(out), cwd=REPO)
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        again = anbench(*coop_run(out), cwd=REPO, check=False)  # nothing needs writing
        assert again.returncode == 0, again.stderr
        assert "0 cells run, 2 already complete" in again.stdout + again.stderr
        more = anbench(*coop_run(out, "--seeds", "2"), cwd=REPO, check=False)
    one_error(more, "the file system is read-only", code=1)


def test_marker_lists_every_file_with_size_and_hash(suite: Path):
    marker = json.loads((suite / "default" / COOP / "COMPLETE").read_text())
    assert set(marker["files"]) == {"rows.csv", "arrays.npz", "meta.json", "prompts.pt"}
    for name, entry in marker["files"].items():
        assert entry["size"] == os.path.getsize(suite / "default" / COOP / name)
        assert len(entry["sha256"]) == 64
    assert not (suite / "default" / COOP / "RUNNING").exists()


# ---------------------------------------------------------------- Ctrl-C
def test_swallowed_interrupt_is_still_honoured():
    import signal

    from anbench import interrupts

    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        try:  # as a finaliser or C callback would: the exception is caught and dropped
            os.kill(os.getpid(), signal.SIGINT)
            import time

            for _ in range(1000):
                time.sleep(0.001)
        except KeyboardInterrupt:
            pass
        assert interrupts.received()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        interrupts.clear()  # later in-process runs of this test session must not see it
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_mid_cell_exits_130_and_keeps_finished_cells(tmp_path: Path):
    import signal
    import sys
    import time

    args = coop_run(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anbench.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    running = tmp_path / "default" / COOP / "RUNNING"
    deadline = time.time() + 300
    while not running.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert running.exists(), "the coop cell never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (tmp_path / "default" / COOP / "COMPLETE").exists()
    assert (tmp_path / "default" / CELL / "zeroshot/none/shots16-seed1/COMPLETE").is_file()
