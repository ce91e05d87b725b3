"""`anbench run`: the grid of datasets x methods x training noise x seeds.

The runner owns the grid, the store, locks and progress; what one cell does lives in
`anbench.cell`. Every input is checked before anything is written. Complete, intact, current
cells are skipped on a re-run; a damaged cell or one whose settings changed is redone; cells of
other settings stay on disk but out of results.csv (listed as stale, removed by `prune`).
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from anbench import interrupts
from anbench.backbones.loading import backbone_source, config_cache_dir
from anbench.cell import (
    CellEnvironment,
    CellSpec,
    eval_conditions,
    perturbation_for,
    resolve_cell,
    run_cell,
    training_steps,
)
from anbench.config import BenchConfig, dump_config
from anbench.data.loading import dataset_source
from anbench.device import resolve_device
from anbench.files import atomic_write_json, atomic_write_text
from anbench.registry import BACKBONES, DATASETS, METHODS, PERTURBATIONS, AnbenchError
from anbench.store import CellKey, StoredCell, SuiteStore

RUN_PROTOCOLS = ("base-to-new", "all-classes")


@dataclass
class Plan:
    backbone: str
    datasets: list[str]
    methods: list[str]
    train_noise: list[str]
    eval_noise: list[str]
    seeds: list[int]
    shots: int
    cells: list[CellKey] = field(default_factory=list)


def _expand(values: list[str], registry: Any, what: str) -> list[str]:
    if values == ["all"]:
        return registry.names()
    if values in ([], ["none"]):
        return []
    for value in values:
        registry.get(value)  # raises with the known names
    if len(set(values)) != len(values):
        raise AnbenchError(f"{what} lists a name twice: {', '.join(values)}")
    return list(values)


def make_plan(config: BenchConfig) -> Plan:
    """Resolve names and the grid; every unknown name fails here, before any training."""
    run = config.run
    if run.protocol not in RUN_PROTOCOLS:
        raise AnbenchError(f"run.protocol '{run.protocol}' is not supported by `run` yet; use "
                           f"{' or '.join(RUN_PROTOCOLS)}")
    methods = _expand(run.methods, METHODS, "--methods")
    if not methods:
        raise AnbenchError(f"no methods selected; known: {', '.join(METHODS.names())}")
    noise = _expand(run.noise, PERTURBATIONS, "--noise")
    train_noise = noise if run.train_noise is None else _expand(
        run.train_noise, PERTURBATIONS, "--train-noise")
    eval_noise = noise if run.eval_noise is None else _expand(
        run.eval_noise, PERTURBATIONS, "--eval-noise")
    datasets = _expand(run.datasets, DATASETS, "--datasets")
    if not datasets:
        raise AnbenchError(f"no datasets selected; known: {', '.join(DATASETS.names())}")
    BACKBONES.get(run.backbone)
    if not run.seeds:
        raise AnbenchError("no seeds selected")
    plan = Plan(run.backbone, datasets, methods, train_noise, eval_noise, list(run.seeds),
                run.shots)
    for dataset in datasets:
        for method in methods:
            cls = METHODS.get(method)
            # The default training noise is the method's own, declared once on its class.
            noises = ((train_noise or [cls.default_train_noise]) if cls.takes_train_noise
                      else ["none"])
            for noise_name in noises:
                for seed in plan.seeds:
                    plan.cells.append(CellKey(run.backbone, dataset, method, noise_name,
                                              run.shots, seed))
    return plan


def check_inputs(config: BenchConfig, plan: Plan) -> None:
    """Fail fast, before anything is written, on bad output paths, missing data, weights and
    devices, shots beyond the data and bad perturbation parameters (one line each)."""
    check_output(Path(config.run.out), config.run.suite)
    resolve_device(config.run.device)
    for name in plan.datasets:
        source = dataset_source(config, name)
        ok, detail = source.status()
        if not ok:
            raise AnbenchError(f"dataset {name}: {detail}")
        check_shots(name, source.load(config_cache_dir(config)), plan.shots)
    backbone = backbone_source(config, plan.backbone)
    ok, detail = backbone.status(config_cache_dir(config))
    if not ok and not backbone.builds_on_first_use:  # e.g. mini: `load` builds it in the run
        raise AnbenchError(f"backbone {plan.backbone}: {detail}")
    for name in plan.eval_noise + plan.train_noise:
        perturbation_for(config, name)  # validates its parameters


def check_output(out: Path, suite: str) -> None:
    for path in (out, out / suite):
        if path.exists() and not path.is_dir():
            raise AnbenchError(f"--out: {path} exists and is not a folder")


def check_shots(dataset: str, loaded: Any, shots: int) -> None:
    """Shots are sampled per class from the train split: asking for more than the smallest
    class holds would silently train on fewer (and label results with the wrong K)."""
    from anbench.data.base import split_labels

    counts = np.bincount(split_labels(loaded.train), minlength=loaded.num_classes).tolist()
    smallest = min(counts) if counts else 0
    if shots > smallest:
        name = loaded.classnames[counts.index(smallest)] if counts else "?"
        raise AnbenchError(f"--shots {shots}: dataset {dataset} has only {smallest} training "
                           f"images in its smallest class ('{name}'); use --shots {smallest} "
                           "or fewer")


def run_suite(config: BenchConfig, dry_run: bool = False) -> Path | None:
    plan = make_plan(config)
    check_inputs(config, plan)
    store = SuiteStore(Path(config.run.out) / config.run.suite)
    if dry_run:
        print_dry_run(config, plan, store)
        return None
    return Runner(config, plan, store).run()


def current_cells(config: BenchConfig, plan: Plan, weights: Callable[[StoredCell], str | None]
                  ) -> Callable[[StoredCell], bool]:
    """A predicate: does a stored cell's fingerprint match what the current config gives for
    its key? `weights` says which weights hash to judge it with."""

    def keep(cell: StoredCell) -> bool:
        try:
            spec = resolve_cell(config, cell.key, plan.eval_noise, weights(cell) or "")
        except AnbenchError:  # a method, dataset or noise that is no longer registered
            return False
        return spec.fingerprint == cell.fingerprint

    return keep


def print_dry_run(config: BenchConfig, plan: Plan, store: SuiteStore) -> None:
    """The grid with each cell's state and its parameters that differ from the method's
    defaults. Without loading the backbone, fingerprints use each stored cell's own weights
    hash, so a change of weights shows only when the run loads them."""
    print(f"suite '{config.run.suite}' -> {store.root}")
    print(f"backbone {plan.backbone}; datasets {', '.join(plan.datasets)}; seeds "
          f"{plan.seeds}; shots {plan.shots}; eval noise {', '.join(plan.eval_noise) or 'none'}")
    total_steps = 0
    planned = set(plan.cells)
    for key in plan.cells:
        stored = store.inspect(key)
        spec = resolve_cell(config, key, plan.eval_noise,
                            stored.weights_hash or "" if stored is not None else "")
        steps = 0
        if spec.trains:
            steps = training_steps(spec.method_params, _train_classes(config, key.dataset)
                                   * plan.shots)
        total_steps += steps
        if stored is None:
            state = "to run"
        elif not stored.intact:
            state = "damaged"
        elif stored.fingerprint == spec.fingerprint:
            state = "complete"
        else:
            state = "changed"
        changed = spec.changed_params()
        detail = " ".join(f"{k}={v}" for k, v in changed.items())
        print(f"  {state:<8}  {key.label():<48} {steps:>6} steps  {detail}".rstrip())
        if stored is not None and stored.problem:
            print(f"            ({stored.problem}; it will be redone)")
    keep = current_cells(config, plan, lambda cell: cell.weights_hash)
    stale = [c for c in store.stored_cells()
             if c.intact and c.key not in planned and not keep(c)]
    for cell in stale:
        print(f"  stale     {cell.key.label()} (other settings; kept on disk, left out of "
              "results; `anbench prune` removes it)")
    evals = len(eval_conditions(config, plan.eval_noise))
    print(f"{len(plan.cells)} cells, {total_steps} training steps, {evals} evaluation "
          f"conditions per split besides clean" + (f"; {len(stale)} stale" if stale else ""))


def _train_classes(config: BenchConfig, dataset: str) -> int:
    loaded = dataset_source(config, dataset).load(config_cache_dir(config))
    if config.run.protocol == "base-to-new":
        return math.ceil(loaded.num_classes / 2)
    return loaded.num_classes


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("anbench", "torch", "open_clip_torch", "transformers", "nlpaug", "nltk",
                    "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class Runner:
    def __init__(self, config: BenchConfig, plan: Plan, store: SuiteStore):
        self.config = config
        self.plan = plan
        self.store = store
        self.quiet = config.run.quiet
        self._run_files_written = False

    def log(self, message: str) -> None:
        tqdm.write(message)

    def run(self) -> Path:
        started = time.time()
        self.env = CellEnvironment.load(self.config, progress=not self.quiet)
        weights_hash = self.env.backbone.weights_hash
        self.keep = current_cells(
            self.config, self.plan,
            lambda cell: weights_hash if cell.key.backbone == self.plan.backbone
            else cell.weights_hash)
        done = skipped = busy = 0
        bar = tqdm(self.plan.cells, desc="cells", unit="cell", disable=self.quiet,
                   dynamic_ncols=True)
        try:
            for key in bar:
                interrupts.check()
                bar.set_postfix_str(key.label())
                spec = resolve_cell(self.config, key, self.plan.eval_noise, weights_hash)
                if self.store.is_complete(key, spec.fingerprint):
                    skipped += 1
                    self._backfill_log(key)
                    continue
                with self.store.claim(key) as mine:
                    if not mine:  # another run of this suite is on it
                        busy += 1
                        continue
                    stored = self.store.inspect(key)
                    if stored is not None and stored.intact \
                            and stored.fingerprint == spec.fingerprint:
                        skipped += 1
                        self._backfill_log(key)
                        continue
                    if stored is not None and stored.problem:
                        self.log(f"{key.label()}: damaged ({stored.problem}); redoing it")
                    self._run_and_store(spec)
                    done += 1
                self.store.write_results(self.keep)
        except KeyboardInterrupt:
            self.store.write_results(self.keep)
            self.log(f"interrupted: {done} cells finished in this run are kept; re-run the "
                     "same command to resume")
            raise
        finally:
            bar.close()
        before = _signature(self.store.results_path)
        results = self.store.write_results(self.keep)
        stale = self.store.stale_cells()
        self.log(f"{done} cells run, {skipped} already complete, {busy} held by another run; "
                 f"{time.time() - started:.0f} s; results: {results}")
        if stale:
            self.log(f"{len(stale)} stale cells (other settings) are left out of results.csv; "
                     f"`anbench prune --suite {self.config.run.suite}` removes them")
        report_index = self.store.root / "report" / "index.md"
        if done or _signature(results) != before or not report_index.is_file():
            self._report(results)
        return results

    def _run_and_store(self, spec: CellSpec) -> None:
        self._write_run_files()
        bar = tqdm(total=0, desc="train", unit="step", leave=False, disable=self.quiet,
                   dynamic_ncols=True)

        from anbench.tensorboard_log import CellLog, clear

        clear(self.store.cell_dir(spec.key))  # an old TensorBoard log would mix two runs
        # with run.tensorboard, a fresh log written as training goes
        events = CellLog(self.store.cell_dir(spec.key)) if self.config.run.tensorboard else None

        def progress(step: int, total: int, terms: dict[str, float]) -> None:
            bar.total = total
            bar.update(1)
            if terms:
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(terms.items())[:3]})
            if events is not None:
                events.record(step, terms)

        self.store.mark_running(spec.key)
        try:
            result = run_cell(spec, self.env, progress=progress)
        finally:
            bar.close()
            if events is not None:
                events.close()
        self.store.write_cell(spec.key, spec.fingerprint, result.rows, result.arrays,
                              result.prompts, result.meta, weights_hash=spec.weights_hash)
        self.log(f"{spec.key.label()}: {result.summary()} ({result.meta['seconds']:.0f} s)")

    def _backfill_log(self, key: CellKey) -> None:
        """With `run.tensorboard`, a complete cell computed without it gets its log from the
        history in its meta.json (event files are not part of the COMPLETE marker)."""
        if self.config.run.tensorboard:
            from anbench.tensorboard_log import backfill

            backfill(self.store.cell_dir(key))

    def _report(self, results: Path) -> None:
        from anbench.reporting import build_report

        index = build_report(results, self.store.root / "report", ["md", "tex", "csv"])
        self.log(f"report: {index}")

    def _write_run_files(self) -> None:
        """config.yaml and manifest.json describe the latest run that trained a cell."""
        if self._run_files_written:
            return
        backbone = self.env.backbone
        device = self.env.device
        with self.store.suite_lock():
            atomic_write_text(self.store.root / "config.yaml", dump_config(self.config))
            atomic_write_json(self.store.root / "manifest.json", {
                "versions": _versions(), "git_commit": _git_commit(),
                "python": platform.python_version(), "platform": platform.platform(),
                "device": str(device),
                "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                "backbone": {"name": backbone.name, "label": backbone.label,
                             "weights_hash": backbone.weights_hash, **backbone.info},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
        self._run_files_written = True


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
