"""`anbench run`: the grid of datasets x methods x training noise x seeds.

The runner owns the grid, the store, locks and progress; what one cell does lives in
`anbench.cell`. Every input is checked before anything is written. Complete, intact, current
cells are skipped on a re-run; a damaged cell or one whose settings changed is redone; cells of
other settings stay on disk but out of results.csv (listed as stale, removed by `prune`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from anbench.backbones.loading import backbone_source, config_cache_dir
from anbench.cell import (
    CellEnvironment,
    eval_conditions,
    perturbation_for,
    resolve_cell,
    training_steps,
)
from anbench.config import BenchConfig
from anbench.data.loading import dataset_source
from anbench.device import resolve_device
from anbench.noise_groups import expand as expand_noise
from anbench.noise_groups import expand_training
from anbench.registry import BACKBONES, DATASETS, METHODS, AnbenchError
from anbench.store import CellKey, StoredCell, SuiteStore

if TYPE_CHECKING:
    from anbench.launchers.execute import CellOutcome

RUN_PROTOCOLS = ("base-to-new", "all-classes", "cross-dataset")


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
    eval_datasets: list[str] = field(default_factory=list)  # cross-dataset: evaluated only


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
    # perturbation names and groups (all, paper, text, char, word, ...): anbench.noise_groups
    noise = expand_noise(run.noise, "--noise")
    # Training noises: only perturbations that can train (text ones, image ones that declare
    # it); an image corruption named in --train-noise is an error (anbench.noise_groups).
    train_noise = (expand_training(run.noise, "--noise", explicit=False)
                   if run.train_noise is None else
                   expand_training(run.train_noise, "--train-noise", explicit=True))
    eval_noise = noise if run.eval_noise is None else expand_noise(
        run.eval_noise, "--eval-noise")
    datasets = _expand(run.datasets, DATASETS, "--datasets")
    if not datasets:
        raise AnbenchError(f"no datasets selected; known: {', '.join(DATASETS.names())}")
    eval_datasets: list[str] = []
    if run.protocol == "cross-dataset":  # train on the source only; evaluate on every dataset
        if not run.source_dataset:
            raise AnbenchError("run.protocol cross-dataset needs run.source_dataset (the "
                               "dataset trained on, e.g. --set run.source_dataset=imagenet)")
        DATASETS.get(run.source_dataset)
        eval_datasets = [name for name in datasets if name != run.source_dataset]
        if not eval_datasets:
            raise AnbenchError("run.protocol cross-dataset needs --datasets other than the "
                               f"source dataset '{run.source_dataset}' to evaluate on")
        datasets = [run.source_dataset]
    BACKBONES.get(run.backbone)
    if not run.seeds:
        raise AnbenchError("no seeds selected")
    plan = Plan(run.backbone, datasets, methods, train_noise, eval_noise, list(run.seeds),
                run.shots, eval_datasets=eval_datasets)
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
    for name in plan.eval_datasets:
        ok, detail = dataset_source(config, name).status()
        if not ok:
            raise AnbenchError(f"dataset {name}: {detail}")
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
    from anbench.launchers import check_launcher

    plan = make_plan(config)
    check_launcher(config)
    check_inputs(config, plan)
    store = SuiteStore(Path(config.run.out) / config.run.suite,
                       lock_timeout_s=config.launcher.lock_timeout_s,
                       heartbeat_s=config.launcher.heartbeat_s)
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
            spec = resolve_cell(config, cell.key, plan.eval_noise, weights(cell) or "",
                                plan.eval_datasets)
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
    pending: dict[CellKey, bool] = {}  # what a run would compute (and group, when fusing)
    for key in plan.cells:
        stored = store.inspect(key)
        spec = resolve_cell(config, key, plan.eval_noise,
                            stored.weights_hash or "" if stored is not None else "",
                            plan.eval_datasets)
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
        pending[key] = state != "complete"
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
    from anbench.cell_group import fusion_on

    if config.run.launcher == "local" and fusion_on(config, resolve_device(config.run.device)):
        print_groups(config, plan, [key for key in plan.cells if pending.get(key, True)])
    evals = len(eval_conditions(config, plan.eval_noise))
    print(f"{len(plan.cells)} cells, {total_steps} training steps, {evals} evaluation "
          f"conditions per split besides clean" + (f"; {len(stale)} stale" if stale else ""))


def print_groups(config: BenchConfig, plan: Plan, keys: list[CellKey]) -> None:
    """The fused groups the local launcher would run the pending cells in
    (`run.fuse_cells`)."""
    from anbench.cell_group import group_label, groups_summary, plan_groups

    groups = plan_groups([resolve_cell(config, key, plan.eval_noise, "", plan.eval_datasets)
                          for key in keys])
    fused = [group for group in groups if len(group) > 1]
    if fused:
        print("fused groups (run.fuse_cells; each cell is still stored on its own):")
    for number, group in enumerate(fused, 1):
        print(f"  group {number}, {len(group)} cells: {group_label(group)}")
    print(groups_summary(groups))


def _train_classes(config: BenchConfig, dataset: str) -> int:
    loaded = dataset_source(config, dataset).load(config_cache_dir(config))
    if config.run.protocol == "base-to-new":
        return math.ceil(loaded.num_classes / 2)
    return loaded.num_classes


class Runner:
    """The coordinator: finds the cells still to compute, hands them to the configured
    launcher (`anbench.launchers`: local, processes or slurm), then rebuilds results.csv and
    the report from the complete cells."""

    def __init__(self, config: BenchConfig, plan: Plan, store: SuiteStore):
        self.config = config
        self.plan = plan
        self.store = store
        self.quiet = config.run.quiet
        self.env: CellEnvironment | None = None

    def log(self, message: str) -> None:
        tqdm.write(message)

    def run(self) -> Path:
        from anbench.launchers import CellsFailed, Launch, launch
        from anbench.launchers.execute import RunContext
        from anbench.launchers.records import write_launch

        started = time.time()
        launcher = self.config.run.launcher
        weights_hash = self._weights_hash(launcher)
        self.keep = current_cells(
            self.config, self.plan,
            lambda cell: weights_hash if cell.key.backbone == self.plan.backbone
            else cell.weights_hash)
        ctx = RunContext.create(self.config, self.plan.eval_noise, self.plan.eval_datasets,
                                self.store.root)
        fingerprints = {key: ctx.resolve(key, weights_hash).fingerprint
                        for key in self.plan.cells}
        todo, skipped = [], 0
        for key in self.plan.cells:
            if self.store.is_complete(key, fingerprints[key]):
                skipped += 1
                self._backfill_log(key)
            else:
                todo.append(key)
        if todo:  # what `anbench status` reads
            write_launch(self.store, launcher, fingerprints)
        counts: Counter[str] = Counter()
        bar = tqdm(total=len(self.plan.cells), initial=skipped, desc="cells", unit="cell",
                   disable=self.quiet, dynamic_ncols=True)

        def finish(outcome: CellOutcome) -> None:
            counts[outcome.status] += 1
            job.outcomes.append(outcome)
            if outcome.status == "complete":
                self._backfill_log(outcome.key)
            bar.update(1)
            self.store.write_results(self.keep)

        job = Launch(ctx=ctx, store=self.store, todo=todo, fingerprints=fingerprints,
                     retries=self.config.launcher.retries, log=self.log, quiet=self.quiet,
                     finish=finish, label=bar.set_postfix_str,
                     wait=self.config.launcher.wait, env=self.env)
        try:
            launch(launcher, job)
        except KeyboardInterrupt:
            self.store.write_results(self.keep)
            self.log(f"interrupted: {counts['done']} cells finished in this run are kept; "
                     "re-run the same command to resume")
            raise
        finally:
            bar.close()
        done, failed, skipped = counts["done"], counts["failed"], skipped + counts["complete"]
        before = _signature(self.store.results_path)
        results = self.store.write_results(self.keep)
        stale = self.store.stale_cells()
        summary = f"{done} cells run, {skipped} already complete, {counts['busy']} held by " \
                  "another run"
        summary += f", {failed} failed" if failed else ""
        summary += f", {job.submitted} submitted to Slurm" if job.submitted else ""
        self.log(f"{summary}; {time.time() - started:.0f} s; results: {results}")
        suite = self.config.run.suite
        if stale:
            self.log(f"{len(stale)} stale cells (other settings) are left out of results.csv; "
                     f"`anbench prune --suite {suite}` removes them")
        if job.submitted:
            self.log(f"`anbench status --suite {suite}` shows their progress; the same "
                     "`anbench run` without --no-wait collects them and resubmits failures")
        report_index = self.store.root / "report" / "index.md"
        if done or _signature(results) != before or not report_index.is_file():
            self._report(results)
        if failed:
            raise CellsFailed(f"{failed} of {len(self.plan.cells)} cells failed (error and log "
                              f"in each cell folder; `anbench status --suite {suite}` lists "
                              "them); the other cells are stored; re-run to retry them")
        return results

    def _weights_hash(self, launcher: str) -> str:
        """The local loop loads the whole cell environment once; other launchers' cells load
        their own, so here the backbone is loaded on the CPU only for its weights hash (which
        also builds a first-use backbone such as mini once, before any worker needs it)."""
        if launcher == "local":
            self.env = CellEnvironment.load(self.config, progress=not self.quiet)
            return self.env.backbone.weights_hash
        from anbench.backbones.loading import load_backbone

        return load_backbone(self.config, self.plan.backbone, "cpu",
                             progress=not self.quiet).weights_hash

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


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
