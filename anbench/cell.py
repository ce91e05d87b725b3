"""One cell of the grid: a method trained on one dataset, seed and training noise, evaluated.

`resolve_cell` turns (config, key) into a `CellSpec` once: method parameters, training noise,
evaluation conditions and the fingerprint that decides whether a stored cell is still current.
`run_cell(spec, env)` trains and evaluates and returns a `CellResult`; it writes nothing. The
runner (and any launcher or benchmark script) decides where cells run and stores the results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from anbench import interrupts
from anbench.backbones.base import LoadedBackbone
from anbench.config import BenchConfig
from anbench.data.loading import dataset_source
from anbench.evaluation import EvalNoise
from anbench.registry import METHODS, AnbenchError
from anbench.store import CellKey, fingerprint

Progress = Callable[[int, int, dict[str, float]], None]
FEATURE_MEMORY_BYTES = 2 << 30  # in-memory budget of the frozen-feature cache
CORRUPTED_MEMORY_BYTES = 256 << 20  # in-memory budget of corrupted test images (uint8)


def perturbation_for(config: BenchConfig, name: str, dataset: str | None = None,
                     backbone: str | None = None):
    """The perturbation `name` with its configured parameters (per backbone and dataset)."""
    from anbench.perturbation import build_perturbation

    params = config.plugin_params("perturbations", name, backbone=backbone or config.run.backbone,
                                  dataset=dataset)
    return build_perturbation(name, params)


def eval_conditions(config: BenchConfig, names: list[str], dataset: str | None = None,
                    backbone: str | None = None) -> list[EvalNoise]:
    """Every (perturbation, severity) a cell is evaluated under, besides clean."""
    conditions = []
    for name in names:
        perturbation = perturbation_for(config, name, dataset, backbone)
        conditions += [EvalNoise(perturbation, severity) for severity in perturbation.severities]
    return conditions


def training_steps(params: Any, num_images: int) -> int:
    """Optimiser steps of a whole training run (the last batch of an epoch may be short)."""
    return params.epochs * math.ceil(num_images / params.batch_size)


@dataclass(frozen=True)
class CellSpec:
    """Everything a cell needs, resolved once from the config and the plan."""

    key: CellKey
    suite: str
    protocol: str
    method_params: Any
    train_noise: Any  # a Perturbation, or None
    eval_noises: tuple[EvalNoise, ...]
    augment_views: int | None  # pre-drawn augmented views per training image; None: no augment
    weights_hash: str
    noise_draws: int = 1  # independent draws of every evaluation perturbation
    # cross-dataset: the datasets evaluated besides the training (source) dataset
    eval_datasets: tuple[str, ...] = ()
    # image conditions: (test images per split, 0 = all; noise draws); None without any
    image_eval: tuple[int, int] | None = None

    @property
    def method_cls(self) -> Any:
        return METHODS.get(self.key.method)

    @property
    def trains(self) -> bool:
        return bool(getattr(self.method_cls, "trains", True))

    def identity(self) -> dict[str, Any]:
        """What the results depend on; speed-only method switches are left out."""
        params = self.method_params
        return {
            "method": params.model_dump(mode="json", exclude=set(params.speed_only)),
            "weights": self.weights_hash, "protocol": self.protocol,
            "augment": self.augment_views,
            "train_noise": (self.train_noise.describe(self.key.seed)
                            if self.train_noise is not None else None),
            "eval": [n.perturbation.describe(self.key.seed, n.severity)
                     for n in self.eval_noises],
            "noise_draws": self.noise_draws,
            # only where set, so the fingerprints of the other protocols stay as they were
            **({"eval_datasets": list(self.eval_datasets)} if self.eval_datasets else {}),
            **({"image_eval": list(self.image_eval)} if self.image_eval else {}),
        }

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity())

    def changed_params(self) -> dict[str, Any]:
        """Method parameters that differ from the method's own defaults."""
        defaults = type(self.method_params)().model_dump(mode="json")
        current = self.method_params.model_dump(mode="json")
        return {k: v for k, v in current.items() if defaults.get(k) != v}


def resolve_cell(config: BenchConfig, key: CellKey, eval_noise: list[str],
                 weights_hash: str, eval_datasets: list[str] | tuple[str, ...] = ()) -> CellSpec:
    run = config.run
    train_noise = (perturbation_for(config, key.train_noise, key.dataset, key.backbone)
                   if key.train_noise != "none" else None)
    eval_noises = tuple(eval_conditions(config, eval_noise, key.dataset, key.backbone))
    image_eval = ((run.image_eval_images or 0, run.image_noise_draws)
                  if any(n.modality == "image" for n in eval_noises) else None)
    return CellSpec(
        key=key, suite=run.suite, protocol=run.protocol,
        method_params=config.plugin_params("methods", key.method, backbone=key.backbone,
                                           dataset=key.dataset),
        train_noise=train_noise,
        eval_noises=eval_noises,
        augment_views=run.augment_views if run.augment else None,
        weights_hash=weights_hash, noise_draws=run.noise_draws,
        eval_datasets=tuple(eval_datasets) if run.protocol == "cross-dataset" else (),
        image_eval=image_eval)


@dataclass
class CellResult:
    rows: pd.DataFrame
    arrays: dict[str, Any]
    prompts: dict[str, Any] | None
    meta: dict[str, Any]
    accuracies: dict[str, float]

    def summary(self) -> str:
        from anbench.metrics import harmonic_mean

        text = " ".join(f"{split} {acc:5.1f}" for split, acc in self.accuracies.items())
        if "base" in self.accuracies and "new" in self.accuracies:
            text += f" HM {harmonic_mean(self.accuracies['base'], self.accuracies['new']):5.1f}"
        return text


@dataclass
class CellData:
    train_space: Any
    spaces: dict[str, Any]  # split name -> label space with its test set
    tensors: dict[str, Any]  # the decoded few-shot training set ("train", "train_views")
    images: dict[str, Any] = field(default_factory=dict)  # split name -> ImageSet (streamed)


@dataclass
class CellEnvironment:
    """What the cells of one backbone share in a process: the frozen backbone and its adapter,
    the device, caches, and the images of the dataset and seed used last."""

    config: BenchConfig
    backbone: LoadedBackbone
    adapter: Any
    device: torch.device
    cache_dir: Path
    prefix_cache: Any
    feature_cache: Any = None  # a PrefixCache of frozen image features, or None (off)
    _data: dict[tuple[Any, ...], CellData] = field(default_factory=dict)
    _corrupted: Any = None  # a PrefixCache of corrupted test images (anbench.image_eval)
    #: While a fused group evaluates: its `anbench.cell_group.SharedImageConditions`.
    shared_conditions: Any = None

    @classmethod
    def load(cls, config: BenchConfig, progress: bool = True) -> CellEnvironment:
        from anbench.backbones.adapter import BackboneAdapter
        from anbench.backbones.loading import config_cache_dir, load_backbone
        from anbench.device import resolve_device
        from anbench.prefix_cache import PrefixCache

        run = config.run
        device = resolve_device(run.device)
        cache_dir = config_cache_dir(config)
        backbone = load_backbone(config, run.backbone, str(device), progress=progress)
        if device.type == "cpu" and run.threads:
            # Prompt tuning's tensors are small: a second intra-op thread gains little alone
            # and loses up to 50x when another process competes for the cores.
            torch.set_num_threads(run.threads)
        adapter = BackboneAdapter(backbone).to(device)
        prefix_cache = PrefixCache(
            max_bytes=int(run.prefix_cache_memory_gb * 2**30),
            directory=cache_dir / "prefix" if run.prefix_cache_disk else None)
        feature_cache = (PrefixCache(max_bytes=FEATURE_MEMORY_BYTES,
                                     directory=cache_dir / "features")
                         if run.feature_cache else None)
        return cls(config, backbone, adapter, device, cache_dir, prefix_cache, feature_cache)

    def data(self, dataset: str, seed: int, shots: int,
             eval_datasets: tuple[str, ...] = ()) -> CellData:
        key = (dataset, seed, shots, tuple(eval_datasets))
        if key not in self._data:
            self._data = {}  # one at a time: free the previous one before loading
            self._data = {key: self._load_data(dataset, seed, shots, tuple(eval_datasets))}
        return self._data[key]

    def image_features(self, method: Any, images: Any) -> dict[str, torch.Tensor]:
        """A test set's image features for `method`, streamed (frozen ones from the cache)."""
        from anbench.feature_cache import image_features

        return image_features(method, images, weights_hash=self.backbone.weights_hash,
                              cache=self.feature_cache, workers=self.config.run.workers)

    def image_eval(self, method: Any, space: Any, images: Any, seed: int,
                   settings: tuple[int, int]) -> Any:
        """The image conditions of one split (`anbench.image_eval.ImageEval`): its subsample
        of `settings[0]` images (0: all) and `settings[1]` draws; corrupted images are cached
        in memory and under <cache_dir>/corrupted/."""
        from anbench.image_eval import make_image_eval
        from anbench.prefix_cache import PrefixCache

        if self._corrupted is None:
            self._corrupted = PrefixCache(max_bytes=CORRUPTED_MEMORY_BYTES,
                                          directory=self.cache_dir / "corrupted")
        limit, draws = settings
        return make_image_eval(method, images, dataset=space.dataset, split=space.split,
                               seed=seed, limit=limit, draws=draws,
                               features=self.image_features, cache=self._corrupted,
                               shared=self.shared_conditions)

    def _load_data(self, dataset: str, seed: int, shots: int,
                   eval_datasets: tuple[str, ...] = ()) -> CellData:
        from anbench.data.loader import ImageSet
        from anbench.data.protocols import all_classes, base_to_new, cross_dataset

        config = self.config
        loaded = dataset_source(config, dataset).load(self.cache_dir)
        if config.run.protocol == "base-to-new":
            base, new = base_to_new(loaded, shots, seed, self.cache_dir)
            spaces, train_space = {"base": base, "new": new}, base
        elif config.run.protocol == "all-classes":
            train_space = all_classes(loaded, shots, seed, self.cache_dir)
            spaces = {"all": train_space}
        elif config.run.protocol == "cross-dataset":
            targets = [dataset_source(config, name).load(self.cache_dir)
                       for name in eval_datasets if name != dataset]
            train_space, evals = cross_dataset(loaded, targets, shots, seed, self.cache_dir)
            spaces = {dataset: train_space, **evals}  # keyed by dataset; each split "all"
        else:
            raise AnbenchError(f"protocol '{config.run.protocol}' is not supported by `run`")
        transform = self.backbone.preprocess_eval
        tensors = {"train": _to_tensor(train_space, train_space.train, transform,
                                       config.run.workers)}
        if config.run.augment:
            from anbench.view_bank import augmented_views

            subset = train_space.train
            tensors["train_views"] = augmented_views(
                [train_space.load_image(item) for item, _ in subset],
                self.backbone.preprocess_train, config.run.augment_views, seed,
                ids=[f"{dataset}/{index}" for index in subset.indices])
        # Test sets are streamed at evaluation, never decoded whole.
        images = {split: ImageSet(space, space.test, transform) for split, space in spaces.items()}
        return CellData(train_space, spaces, tensors, images)


def _to_tensor(space: Any, subset: Any, transform: Any, workers: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A (small) subset decoded whole: images `[N, C, H, W]` and labels."""
    from anbench.data.loader import ImageSet

    images = ImageSet(space, subset, transform)
    return images.decode(workers), images.labels


@dataclass
class FittedMethod:
    """A cell's method set up and trained outside `run_cell` (a fused group,
    `anbench.cell_group`), with what that cost this cell and, per split, its test-image
    features when they were computed together with the other members'."""

    method: Any
    history: list[dict[str, Any]]
    timing: dict[str, float]  # this cell's share: "load", "train", "evaluate" (shared part)
    image_features: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"fused": {...}} for meta.json


def setup_method(spec: CellSpec, env: CellEnvironment, data: CellData) -> Any:
    """The cell's method, built (seeded by the cell's seed) and `setup` on its training label
    space: the same for a cell run alone and for a member of a fused group."""
    from anbench.evaluation import class_sentences
    from anbench.method import TaskContext
    from anbench.prefix_cache import preprocessing_tag

    key = spec.key
    train_space = data.train_space
    params = spec.method_params
    torch.manual_seed(key.seed)
    method = spec.method_cls(params, env.adapter).to(env.device)
    noise = spec.train_noise
    augment = env.config.run.augment
    task = TaskContext(
        dataset=key.dataset, classnames=list(train_space.classnames),
        sentences=class_sentences(method, list(train_space.classnames), train_space.template),
        descriptions={n: list(train_space.descriptions.get(n, []))
                      for n in train_space.classnames},
        templates=list(train_space.templates), seed=key.seed, device=env.device,
        train_noise=noise, train_noise_name=key.train_noise,
        train_noise_severity=noise.severities[0] if noise is not None else 0.0,
        extra={"cache_dir": env.cache_dir, "weights_hash": env.backbone.weights_hash,
               "prefix_cache": env.prefix_cache,
               # DAPT's prototypes come from the training transform when views exist.
               "train_views": data.tensors.get("train_views"),
               "preprocessing": preprocessing_tag(
                   env.backbone.preprocess_train if augment else env.backbone.preprocess_eval)})
    train_images, train_labels = data.tensors["train"]
    method.setup(task, train_images, train_labels)
    return method


def run_cell(spec: CellSpec, env: CellEnvironment, progress: Progress | None = None,
             fitted: FittedMethod | None = None) -> CellResult:
    """Train the cell's method (unless it does not train, or `fitted` brings it trained) and
    evaluate every split."""
    from anbench.evaluation import evaluate_split, result_arrays, result_rows
    from anbench.training import train

    started = time.time()
    key = spec.key
    data = env.data(key.dataset, key.seed, key.shots, spec.eval_datasets)
    loaded = time.time()
    params = spec.method_params
    noise = spec.train_noise
    history: list[dict[str, Any]] = []
    features: dict[str, dict[str, torch.Tensor]] = {}
    if fitted is not None:
        method, history, features = fitted.method, fitted.history, fitted.image_features
    else:
        method = setup_method(spec, env, data)
    if fitted is None and spec.trains:
        train_images, train_labels = data.tensors["train"]
        fit_images = data.tensors.get("train_views", train_images)  # [N, V, C, H, W] augmented

        def step(done: int, total: int, terms: dict[str, float]) -> None:
            interrupts.check()
            if progress is not None:
                progress(done, total, terms)

        history = train(method, fit_images, train_labels, params, key.seed, progress=step)
    trained = time.time()
    results = []
    for split, space in data.spaces.items():
        interrupts.check()
        # No perturbation may write any class name of the dataset (a label change, not noise).
        all_classnames = [name for other in data.spaces.values()
                          if other.dataset == space.dataset for name in other.classnames]
        images = data.images[split]
        image_eval = (env.image_eval(method, space, images, key.seed, spec.image_eval)
                      if spec.image_eval else None)
        split_features = (features[split] if split in features  # computed by a fused group
                          else env.image_features(method, images))
        results.append(evaluate_split(
            method, space.split, split_features, images.labels,
            list(space.classnames), space.template, list(space.templates), space.descriptions,
            list(spec.eval_noises), key.seed, space.dataset, all_classnames=all_classnames,
            draws=spec.noise_draws, image_eval=image_eval))
    base = {"suite": spec.suite, "dataset": key.dataset, "backbone": key.backbone,
            "method": key.method, "train_noise": key.train_noise, "shots": key.shots,
            "seed": key.seed}
    if spec.eval_datasets:  # cross-dataset: one "all" split per dataset, rows under its name
        rows = pd.DataFrame([row for res, space in zip(results, data.spaces.values(), strict=True)
                             for row in result_rows([res], list(spec.eval_noises),
                                                    {**base, "dataset": space.dataset})])
    else:
        rows = pd.DataFrame(result_rows(results, list(spec.eval_noises), base))
    for res, split in zip(results, data.spaces, strict=True):
        res.split = split  # arrays, sentences and accuracies are keyed by the split's name
    timing = {"load": loaded - started, "train": trained - loaded,
              "evaluate": time.time() - trained}
    if fitted is not None:  # plus this cell's share of its group's setup, training, features
        timing = {name: value + fitted.timing.get(name, 0.0) for name, value in timing.items()}
    meta = {
        "seconds": round(sum(timing.values()), 2), "history": history,
        "timing": {name: round(value, 3) for name, value in timing.items()},
        **(fitted.meta if fitted is not None else {}),
        "method_params": params.model_dump(mode="json"),
        # report = describe + what the semantic filter did (draws, rejections), if it is on
        "train_noise": noise.report(key.seed) if noise is not None else None,
        "eval_noise": [n.perturbation.report(key.seed, n.severity) for n in spec.eval_noises],
        "noise_draws": spec.noise_draws,
        **({"image_eval": {"images_per_split": spec.image_eval[0],
                           "draws": spec.image_eval[1],
                           "evaluated": {r.split: len(r.image_positions) for r in results
                                         if r.image_positions is not None}}}
           if spec.image_eval else {}),
        "sentences": {r.split: {"clean": r.sentences, **r.noisy_sentences} for r in results},
        "classes": {split: list(space.classnames) for split, space in data.spaces.items()},
    }
    return CellResult(rows=rows, arrays=result_arrays(results),
                      prompts=method.prompt_state() if spec.trains else None, meta=meta,
                      accuracies={r.split: r.accuracy() for r in results})
