"""The command line as a user calls it: help, list, doctor, perturb, plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugins" / "typo_noise.py"


def anbench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_verbs():
    proc = anbench("--help")
    assert proc.returncode == 0
    for verb in ("run", "list", "report", "perturb", "doctor", "backbone"):
        assert verb in proc.stdout


def test_list_shows_every_registry_with_descriptions():
    proc = anbench("list")
    assert proc.returncode == 0, proc.stderr
    for heading in ("methods:", "perturbations:", "datasets:", "backbones:", "reports:"):
        assert heading in proc.stdout
    for name in ("anprompt", "dapt", "wsp", "synonym", "fashion-mnist", "digits", "mini",
                 "vit-b-16", "base-to-new"):
        assert f"  {name} " in proc.stdout
    methods = anbench("list", "methods").stdout.splitlines()
    assert all(len(line.split(maxsplit=1)) == 2 for line in methods)  # name + description


def test_doctor_reports_each_area():
    proc = anbench("doctor")
    assert proc.returncode in (0, 1), proc.stderr
    for section in ("backbones:", "NLTK data", "datasets:", "torch"):
        assert section in proc.stdout
    assert "data root" in proc.stdout  # the CoOp datasets say what they need


def test_readme_example_plugin_through_the_cli(tmp_path: Path):
    # A copy outside the repository, as a user's own file would be.
    plugin = tmp_path / "my_noise.py"
    shutil.copy(EXAMPLE, plugin)
    listed = anbench("list", "perturbations", "--plugin", str(plugin), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "typo" in listed.stdout and "[plugin]" in listed.stdout
    shown = anbench("perturb", "a photo of a tabby cat with dark stripes.", "--noise", "all",
                    "--seed", "1", "--plugin", str(plugin), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    names = [line.split()[0] for line in shown.stdout.splitlines()]
    # every built-in (one line per severity), then the plugin: it joined `all`
    assert names[-1] == "typo" and {"drop", "mask", "shuffle", "synonym", "wsp"} < set(names)
    assert all("cat" in line for line in shown.stdout.splitlines())  # class name protected


def test_plugin_named_in_bench_yaml(tmp_path: Path):
    shutil.copy(EXAMPLE, tmp_path / "typo_noise_mod.py")
    (tmp_path / "bench.yaml").write_text("plugins: [typo_noise_mod]\n")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_path}"
    try:
        proc = anbench("list", "perturbations", cwd=tmp_path)
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert proc.returncode == 0, proc.stderr
    assert "typo" in proc.stdout


def test_perturb_is_deterministic_and_rejects_unknown_names():
    first = anbench("perturb", "a small red bird.", "--seed", "3")
    second = anbench("perturb", "a small red bird.", "--seed", "3")
    assert first.returncode == 0 and first.stdout == second.stdout
    bad = anbench("perturb", "a bird.", "--noise", "nosuch")
    assert bad.returncode == 2
    message = bad.stderr.strip()  # one line naming every perturbation and group
    assert message.startswith("error: unknown perturbation 'nosuch'; known: ")
    assert "\n" not in message and "synonym" in message and "paper (group)" in message


def test_malformed_bench_yaml_names_the_key(tmp_path: Path):
    (tmp_path / "bench.yaml").write_text("run:\n  seeds: [1]\n  shotz: 4\n")
    proc = anbench("list", "methods", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config error at 'run.shotz': unknown key"
