"""`anbench run`: the grid of datasets x methods x training noise x seeds.

Each cell samples shots, trains on the training label space, evaluates base and new test sets
clean and under every evaluation perturbation and severity, and writes its results atomically.
Complete cells are skipped on a re-run; a cell without its completion marker is redone.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from anbench.backbones.loading import backbone_source, config_cache_dir, load_backbone
from anbench.config import BenchConfig, dump_config
from anbench.data.loading import dataset_source
from anbench.device import resolve_device
from anbench.files import atomic_write_json, atomic_write_text
from anbench.registry import DATASETS, METHODS, PERTURBATIONS, AnbenchError
from anbench.store import CellKey, SuiteStore, fingerprint


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
    from anbench.registry import BACKBONES

    BACKBONES.get(run.backbone)
    if not run.seeds:
        raise AnbenchError("no seeds selected")
    plan = Plan(run.backbone, datasets, methods, train_noise, eval_noise, list(run.seeds),
                run.shots)
    for dataset in datasets:
        for method in methods:
            cls = METHODS.get(method)
            if getattr(cls, "takes_train_noise", False):
                noises = train_noise or [cls.default_train_noise]
            else:
                noises = ["none"]
            for noise_name in noises:
                for seed in plan.seeds:
                    plan.cells.append(CellKey(run.backbone, dataset, method, noise_name,
                                              run.shots, seed))
    return plan


def check_inputs(config: BenchConfig, plan: Plan) -> None:
    """Fail fast on missing data, weights and devices (one line each)."""
    resolve_device(config.run.device)
    for name in plan.datasets:
        ok, detail = dataset_source(config, name).status()
        if not ok:
            raise AnbenchError(f"dataset {name}: {detail}")
    backbone = backbone_source(config, plan.backbone)
    ok, detail = backbone.status(config_cache_dir(config))
    if not ok and not getattr(backbone, "builds_on_first_use", False):
        raise AnbenchError(f"backbone {plan.backbone}: {detail}")
    for name in plan.eval_noise + plan.train_noise:
        eval_perturbation(config, name)  # validates its parameters


def eval_perturbation(config: BenchConfig, name: str, dataset: str | None = None):
    from anbench.perturbation import build_perturbation

    params = config.plugin_params("perturbations", name, backbone=config.run.backbone,
                                  dataset=dataset)
    return build_perturbation(name, params)


def run_suite(config: BenchConfig, dry_run: bool = False) -> Path | None:
    plan = make_plan(config)
    check_inputs(config, plan)
    root = Path(config.run.out) / config.run.suite
    store = SuiteStore(root)
    if dry_run:
        _print_dry_run(config, plan, store)
        return None
    return Runner(config, plan, store).run()


def _print_dry_run(config: BenchConfig, plan: Plan, store: SuiteStore) -> None:
    print(f"suite '{config.run.suite}' -> {store.root}")
    print(f"backbone {plan.backbone}; datasets {', '.join(plan.datasets)}; seeds "
          f"{plan.seeds}; shots {plan.shots}; eval noise {', '.join(plan.eval_noise) or 'none'}")
    total_steps = 0
    for key in plan.cells:
        params = config.plugin_params("methods", key.method, backbone=key.backbone,
                                      dataset=key.dataset)
        cls = METHODS.get(key.method)
        classes = _train_classes(config, key.dataset)
        steps = 0
        if getattr(cls, "trains", True):
            steps = params.epochs * math.ceil(classes * plan.shots / params.batch_size)
        total_steps += steps
        done = store.completed_fingerprint(key) is not None
        print(f"  {'complete' if done else 'to run  '}  {key.label():<48} {steps:>6} steps")
    evals = sum(len(eval_perturbation(config, n).severities) for n in plan.eval_noise)
    print(f"{len(plan.cells)} cells, {total_steps} training steps, {evals} evaluation "
          f"conditions per split besides clean")


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
        self.cache_dir = config_cache_dir(config)
        self.device = resolve_device(config.run.device)
        self._tensors: dict[tuple[str, int], Any] = {}
        from anbench.prefix_cache import PrefixCache

        run = config.run
        self.prefix_cache = PrefixCache(
            max_bytes=int(run.prefix_cache_memory_gb * 2**30),
            directory=self.cache_dir / "prefix" if run.prefix_cache_disk else None)

    def log(self, message: str) -> None:
        tqdm.write(message)

    def run(self) -> Path:
        from anbench.backbones.adapter import BackboneAdapter

        started = time.time()
        self.backbone = load_backbone(self.config, self.plan.backbone, str(self.device),
                                      progress=not self.quiet)
        self.adapter = BackboneAdapter(self.backbone).to(self.device)
        self._write_run_files()
        done = skipped = busy = 0
        bar = tqdm(self.plan.cells, desc="cells", unit="cell", disable=self.quiet,
                   dynamic_ncols=True)
        try:
            for key in bar:
                bar.set_postfix_str(key.label())
                fp = self._fingerprint(key)
                if self.store.is_complete(key, fp):
                    skipped += 1
                    continue
                with self.store.claim(key) as mine:
                    if not mine:  # another run of this suite is on it
                        busy += 1
                        continue
                    if self.store.is_complete(key, fp):
                        skipped += 1
                        continue
                    self._run_cell(key, fp)
                    done += 1
                self.store.write_results()
        except KeyboardInterrupt:
            self.store.write_results()
            self.log(f"interrupted: {done} cells finished in this run are kept; re-run the "
                     "same command to resume")
            raise
        finally:
            bar.close()
        results = self.store.write_results()
        self.log(f"{done} cells run, {skipped} already complete, {busy} held by another run; "
                 f"{time.time() - started:.0f} s; results: {results}")
        self._report(results)
        return results

    def _report(self, results: Path) -> None:
        try:
            from anbench.reporting import build_report
        except ImportError:
            self.log(f"write the report with: anbench report --suite {self.config.run.suite} "
                     f"--out {self.config.run.out}")
            return
        index = build_report(results, self.store.root / "report", ["md", "tex", "csv"])
        self.log(f"report: {index}")

    def _write_run_files(self) -> None:
        atomic_write_text(self.store.root / "config.yaml", dump_config(self.config))
        atomic_write_json(self.store.root / "manifest.json", {
            "versions": _versions(), "git_commit": _git_commit(),
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(self.device),
            "cuda_device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else None,
            "backbone": {"name": self.backbone.name, "label": self.backbone.label,
                         "weights_hash": self.backbone.weights_hash, **self.backbone.info},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def _method_params(self, key: CellKey):
        return self.config.plugin_params("methods", key.method, backbone=key.backbone,
                                         dataset=key.dataset)

    def _noises(self, dataset: str):
        from anbench.evaluation import EvalNoise

        noises = []
        for name in self.plan.eval_noise:
            perturbation = eval_perturbation(self.config, name, dataset)
            noises += [EvalNoise(perturbation, sev) for sev in perturbation.severities]
        return noises

    def _fingerprint(self, key: CellKey) -> str:
        noises = self._noises(key.dataset)
        train = (eval_perturbation(self.config, key.train_noise, key.dataset).describe(key.seed)
                 if key.train_noise != "none" else None)
        params = self._method_params(key)
        return fingerprint({
            "method": params.model_dump(mode="json", exclude=set(params.speed_only)),
            "weights": self.backbone.weights_hash, "protocol": self.config.run.protocol,
            "augment": self.config.run.augment_views if self.config.run.augment else None,
            "train_noise": train,
            "eval": [n.perturbation.describe(key.seed, n.severity) for n in noises],
        })

    # ------------------------------------------------------------------ data
    def _spaces(self, dataset: str, seed: int):
        from anbench.data.protocols import all_classes, base_to_new

        cache_key = (dataset, seed)
        if cache_key not in self._tensors:
            loaded = dataset_source(self.config, dataset).load(self.cache_dir)
            if self.config.run.protocol == "base-to-new":
                base, new = base_to_new(loaded, self.plan.shots, seed, self.cache_dir)
                spaces = {"base": base, "new": new}
                train_space = base
            elif self.config.run.protocol == "all-classes":
                train_space = all_classes(loaded, self.plan.shots, seed, self.cache_dir)
                spaces = {"all": train_space}
            else:
                raise AnbenchError("protocol 'cross-dataset' is not wired into `run` yet; use "
                                   "base-to-new or all-classes")
            transform = self.backbone.preprocess_eval
            tensors = {"train": self._to_tensor(train_space, train_space.train, transform)}
            if self.config.run.augment:
                from anbench.view_bank import augmented_views

                subset = train_space.train
                tensors["train_views"] = augmented_views(
                    [train_space.load_image(item) for item, _ in subset],
                    self.backbone.preprocess_train, self.config.run.augment_views, seed,
                    ids=[f"{dataset}/{index}" for index in subset.indices])
            for split, space in spaces.items():
                tensors[split] = self._to_tensor(space, space.test, transform)
            self._tensors = {cache_key: (train_space, spaces, tensors)}  # one dataset at a time
        return self._tensors[cache_key]

    @staticmethod
    def _to_tensor(space: Any, subset: Any, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = [transform(space.load_image(item)) for item, _ in subset]
        labels = torch.as_tensor([int(label) for _, label in subset], dtype=torch.long)
        if not images:
            return torch.zeros(0), labels
        return torch.stack(images), labels

    # ------------------------------------------------------------------ one cell
    def _run_cell(self, key: CellKey, cell_fingerprint: str) -> None:
        from anbench.evaluation import class_sentences, evaluate_split, result_arrays, result_rows
        from anbench.method import TaskContext
        from anbench.prefix_cache import preprocessing_tag

        started = time.time()
        train_space, spaces, tensors = self._spaces(key.dataset, key.seed)
        params = self._method_params(key)
        cls = METHODS.get(key.method)
        torch.manual_seed(key.seed)
        method = cls(params, self.adapter).to(self.device)
        noise = (eval_perturbation(self.config, key.train_noise, key.dataset)
                 if key.train_noise != "none" else None)
        task = TaskContext(
            dataset=key.dataset, classnames=list(train_space.classnames),
            sentences=class_sentences(method, list(train_space.classnames),
                                      train_space.template),
            descriptions={n: list(train_space.descriptions.get(n, []))
                          for n in train_space.classnames},
            templates=list(train_space.templates), seed=key.seed, device=self.device,
            train_noise=noise, train_noise_name=key.train_noise,
            train_noise_severity=noise.severities[0] if noise is not None else 0.0,
            extra={"cache_dir": self.cache_dir, "weights_hash": self.backbone.weights_hash,
                   "prefix_cache": self.prefix_cache,
                   "preprocessing": preprocessing_tag(
                       self.backbone.preprocess_train if self.config.run.augment
                       else self.backbone.preprocess_eval)})
        train_images, train_labels = tensors["train"]
        method.setup(task, train_images, train_labels)
        trains = getattr(cls, "trains", True)
        fit_images = tensors.get("train_views", train_images)  # [N, V, C, H, W] with augment
        history = self._train(method, params, key, fit_images, train_labels) if trains else []
        noises = self._noises(key.dataset)
        results = []
        for split, space in spaces.items():
            images, labels = tensors[split]
            results.append(evaluate_split(
                method, split, images, labels, list(space.classnames), space.template,
                list(space.templates), space.descriptions, noises, key.seed, key.dataset))
        base = {"suite": self.config.run.suite, "dataset": key.dataset,
                "backbone": key.backbone, "method": key.method, "train_noise": key.train_noise,
                "shots": key.shots, "seed": key.seed}
        rows = pd.DataFrame(result_rows(results, noises, base))
        meta = {
            "seconds": round(time.time() - started, 2), "history": history,
            "method_params": params.model_dump(mode="json"),
            "train_noise": noise.describe(key.seed) if noise is not None else None,
            "eval_noise": [n.perturbation.describe(key.seed, n.severity) for n in noises],
            "sentences": {r.split: {"clean": r.sentences, **r.noisy_sentences} for r in results},
            "classes": {split: list(space.classnames) for split, space in spaces.items()},
        }
        prompts = method.prompt_state() if trains else None
        self.store.write_cell(key, cell_fingerprint, rows, result_arrays(results), prompts, meta)
        accs = {r.split: r.accuracy() for r in results}
        summary = " ".join(f"{split} {acc:5.1f}" for split, acc in accs.items())
        if "base" in accs and "new" in accs:
            from anbench.metrics import harmonic_mean

            summary += f" HM {harmonic_mean(accs['base'], accs['new']):5.1f}"
        self.log(f"{key.label()}: {summary} ({time.time() - started:.0f} s)")

    def _train(self, method: Any, params: Any, key: CellKey, images: torch.Tensor,
               labels: torch.Tensor) -> list[dict[str, float]]:
        from anbench.training import train

        steps = params.epochs * math.ceil(len(labels) / params.batch_size)
        bar = tqdm(total=steps, desc="train", unit="step", leave=False, disable=self.quiet,
                   dynamic_ncols=True)

        def progress(step: int, total: int, terms: dict[str, float]) -> None:
            bar.total = total
            bar.update(1)
            if terms:
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(terms.items())[:3]})

        try:
            return train(method, images, labels, params, key.seed, progress=progress)
        finally:
            bar.close()
