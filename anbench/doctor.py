"""`anbench doctor`: what is present, what is missing, and the exact command that fixes it."""

from __future__ import annotations

import platform

import typer

from anbench.backbones.loading import backbone_source, config_cache_dir
from anbench.config import BenchConfig
from anbench.registry import BACKBONES, DATASETS, AnbenchError


def _line(ok: bool, what: str, detail: str) -> None:
    mark = typer.style("ok     ", fg="green") if ok else typer.style("missing", fg="yellow")
    typer.echo(f"  {mark}  {what}: {detail}")


def run_doctor(config: BenchConfig) -> bool:
    """Print every check; True when everything the configured default run needs is present."""
    import torch

    needed_ok = True
    cache = config_cache_dir(config)
    typer.echo("system:")
    _line(True, "python", platform.python_version())
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "no CUDA device (training runs on CPU)"
    _line(True, "torch", f"{torch.__version__}; {device}")
    _line(True, "cache", str(cache))

    typer.echo("backbones:")
    for name in BACKBONES.names():
        # Not built yet is fine for one that builds itself on first use (mini: `anbench run`
        # builds it); an error (it cannot be built here) is not.
        buildable = BACKBONES.get(name).builds_on_first_use
        try:
            ok, detail = backbone_source(config, name).status(cache)
        except AnbenchError as exc:
            ok, detail, buildable = False, str(exc), False
        _line(ok, name, detail)
        if name == config.run.backbone and not ok and not buildable:
            needed_ok = False

    typer.echo("NLTK data (synonym perturbation):")
    from anbench.nltk_data import nltk_status

    for what, ok, detail in nltk_status():
        _line(ok, what, detail)
        needed_ok = needed_ok and ok

    typer.echo("image corruptions (image perturbations; not needed by text-only runs):")
    from anbench.imagecorruptions_compat import status as corruption_status

    ok, detail = corruption_status()
    _line(ok, "imagecorruptions", detail)

    typer.echo("datasets:")
    from anbench.data.loading import dataset_source

    for name in DATASETS.names():
        try:
            ok, detail = dataset_source(config, name).status()
        except AnbenchError as exc:
            ok, detail = False, str(exc)
        _line(ok, name, detail)
        if name in config.run.datasets and not ok:
            needed_ok = False
    typer.echo("everything the default run needs is present" if needed_ok
               else "some things the default run needs are missing (see above)")
    return needed_ok
