"""Layered, validated configuration: defaults -> bench.yaml -> --config FILE -> --set key=value.

The schema below fixes the top-level keys. Plugin sections (`methods`, `perturbations`,
`backbones`, `datasets`) are validated against each plugin's own `Params` model once plugins are
loaded, so a method added by a user gets typed, validated parameters like the built-ins.
Every error names the dotted path of the offending key.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from anbench.registry import REGISTRIES, AnbenchError, load_plugin

SECTION_REGISTRY = {
    "methods": "methods",
    "perturbations": "perturbations",
    "backbones": "backbones",
    "datasets": "datasets",
}


class ConfigError(AnbenchError):
    pass


# A suite name is one folder under `out`: no separators, no `..`, no hidden or empty names.
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# numpy's and torch's seed ranges meet at 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(Strict):
    """What `anbench run` does when called without flags."""

    suite: str = "default"
    out: str = "runs"
    methods: list[str] = Field(default_factory=lambda: ["anprompt", "dapt"])
    noise: list[str] = Field(default_factory=lambda: ["paper"])  # the paper's strategies
    train_noise: list[str] | None = None
    eval_noise: list[str] | None = None
    datasets: list[str] = Field(default_factory=lambda: ["fashion-mnist", "digits"])
    seeds: list[int] = Field(default_factory=lambda: [1])
    shots: PositiveInt = 16
    protocol: Literal["base-to-new", "all-classes", "cross-dataset"] = "base-to-new"
    # cross-dataset: train on this dataset (all classes), evaluate on it and on `datasets`
    source_dataset: str | None = None
    backbone: str = "mini"
    # where cells run: this process, worker processes here, or Slurm jobs (`launcher:` below)
    launcher: Literal["local", "processes", "slurm"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str | None = None
    data_root: str | None = None  # root of the CoOp datasets, for datasets that read one
    quiet: bool = False
    tensorboard: bool = False  # also log each cell's loss terms and lr as TensorBoard events
    augment: bool = False  # train on pre-drawn augmented views (random resized crop + flip)
    augment_views: PositiveInt = 4  # views per training image; epoch e trains on view e % V
    # Independent noise draws per (class, perturbation, severity): rows report the mean over
    # draws and its std, so one lucky or unlucky sentence cannot make a robustness number.
    noise_draws: PositiveInt = Field(10, le=1000)
    # Image perturbations (corruptions) are evaluated on this many test images per split, a
    # fixed seeded subsample that every method, seed and run shares (0 or null: all), ...
    image_eval_images: StrictInt | None = Field(50, ge=0)
    # ... each drawn this many times (corrupting and encoding images is costly; with one draw
    # the `_std` rows are empty: a spread over one draw is not known).
    image_noise_draws: StrictInt = Field(1, ge=1, le=1000)
    # torch intra-op threads on CPU (None: torch's default, one per core).
    threads: PositiveInt | None = 1
    prefix_cache_disk: bool = False  # also store frozen prefixes under <cache_dir>/prefix/
    prefix_cache_memory_gb: float = Field(2.0, ge=0)  # in-memory budget, least recently used out
    # Image decoding worker processes (None: one per core, at most 8; 0: in the main process).
    workers: int | None = Field(None, ge=0, le=256)
    # Frozen image features (zeroshot, coop) computed once per image list and backbone, kept
    # in memory and under <cache_dir>/features/ for later cells, methods and runs.
    feature_cache: bool = True
    # Cells of a fusable method (ANPrompt and its ablations) that share dataset, shots and
    # seed train and evaluate as one group over one frozen pass (anbench.cell_group; `local`
    # launcher only). auto: where the results equal the cells run alone (CPU, float32);
    # true: also on CUDA, where they do not (see README, Performance); false: one at a time.
    fuse_cells: Literal["auto"] | bool = "auto"

    @field_validator("methods", "noise", "train_noise", "eval_noise", "datasets", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("fuse_cells", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        words = {"auto": "auto", "true": True, "false": False, "yes": True, "no": False,
                 "on": True, "off": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise ValueError(f"must be auto, true or false, got {value!r}")

    @field_validator("suite")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not SUITE_NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"'{value}' is not a plain name (letters, digits, '-', '_', '.'; "
                             "no separators, no '..', not empty)")
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: list[int]) -> list[int]:
        for seed in value:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} is outside 0 .. {MAX_SEED}")
        if len(set(value)) != len(value):
            raise ValueError(f"a seed is listed twice: {value}")
        return value


class SlurmSection(Strict):
    """One Slurm job per cell, submitted as a job array (anbench.launchers.slurm)."""

    partition: str | None = None
    time_min: PositiveInt = 60  # time limit of each job
    gpus_per_job: int = Field(0, ge=0)
    cpus_per_job: PositiveInt | None = None
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: PositiveInt = 64  # jobs of the array running at once
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra options
    setup: list[str] = Field(default_factory=list)  # shell lines run before each job
    log_dir: str | None = None  # default: <out>/<suite>/slurm
    poll_s: float = Field(10.0, gt=0)  # how often the waiting coordinator looks


class LauncherSection(Strict):
    """How `run.launcher` runs cells; the locks and retries apply to every launcher."""

    workers: PositiveInt | None = None  # processes launcher: default one per GPU, else 2
    gpus: list[int] = Field(default_factory=list)  # processes launcher: one worker per GPU
    retries: int = Field(1, ge=0, le=100)  # extra attempts for a failing cell, per run
    wait: bool = True  # slurm: wait for the jobs (False: submit and return)
    lock_timeout_s: float = Field(300.0, gt=0)  # a lock with an older heartbeat is taken over
    heartbeat_s: float = Field(30.0, gt=0)
    slurm: SlurmSection = Field(default_factory=SlurmSection)

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: list[int]) -> list[int]:
        if any(gpu < 0 for gpu in value) or len(set(value)) != len(value):
            raise ValueError(f"GPU indices must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _beats_within_timeout(self) -> LauncherSection:
        if self.heartbeat_s * 2 > self.lock_timeout_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of "
                             f"lock_timeout_s ({self.lock_timeout_s:g})")
        return self


class Overrides(Strict):
    """Per-backbone or per-dataset parameter overrides, by plugin section."""

    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    perturbations: dict[str, dict[str, Any]] = Field(default_factory=dict)


class BackboneOverrides(Overrides):
    """A backbone's block may also set run keys that belong to a setting (e.g. the paper's
    training augmentation for ViT-B/16)."""

    run: dict[str, Any] = Field(default_factory=dict)


class BenchConfig(Strict):
    run: RunSection = Field(default_factory=RunSection)
    plugins: list[str] = Field(default_factory=list)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    perturbations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    backbones: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    per_backbone: dict[str, BackboneOverrides] = Field(default_factory=dict)
    per_dataset: dict[str, Overrides] = Field(default_factory=dict)
    launcher: LauncherSection = Field(default_factory=LauncherSection)
    # Plugin parameters given on the command line (`--set methods.x.k=v`): they beat every file
    # layer, including the per_backbone / per_dataset blocks of bench.yaml.
    _cli: dict[str, Any] = PrivateAttr(default_factory=dict)

    def plugin_params(self, section: str, name: str, *, backbone: str | None = None,
                      dataset: str | None = None) -> Any:
        """The validated `Params` of plugin `name`, with per-backbone then per-dataset overrides."""
        cls = section_registry(section, name).get(name)
        raw = dict(getattr(self, section).get(name, {}))
        path = f"{section}.{name}"
        for scope, key in (("per_backbone", backbone), ("per_dataset", dataset)):
            overrides = getattr(self, scope).get(key) if key else None
            if overrides is not None and section in ("methods", "perturbations"):
                extra = getattr(overrides, section).get(name)
                if extra:
                    raw.update(extra)
                    path = f"{scope}.{key}.{section}.{name}"
        command_line = self._cli.get(section, {}).get(name)
        if isinstance(command_line, dict) and command_line:
            raw.update(command_line)
        return _validate_params(cls, raw, path)


def section_registry(section: str, name: str) -> Any:
    """The registry that entry `name` of a plugin section belongs to: the `perturbations`
    section configures both perturbation kinds, text and image (two registries)."""
    registry = REGISTRIES[SECTION_REGISTRY[section]]
    if section == "perturbations" and name not in registry:
        images = REGISTRIES["image_perturbations"]
        if name in images:
            return images
    return registry


def _known(section: str) -> str:
    names = REGISTRIES[SECTION_REGISTRY[section]].names()
    if section == "perturbations":
        names = names + REGISTRIES["image_perturbations"].names()
    return ", ".join(names)


def _validate_params(cls: Any, raw: dict[str, Any], path: str) -> Any:
    params_cls = getattr(cls, "Params", None)
    if params_cls is None:
        if raw:
            raise ConfigError(f"{path}: takes no parameters, got {', '.join(raw)}")
        return None
    try:
        return params_cls(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, path)) from None


def _format_validation(exc: ValidationError, prefix: str = "") -> str:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    where = ".".join(part for part in (prefix, loc) if part)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"config error at '{where}': {message}"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (binary file?)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_set(assignment: str) -> dict[str, Any]:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is read as YAML (`[1,2]`, `inf`)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    parts = [part for part in key.strip().split(".") if part]
    if not parts:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.lower() in ("inf", "+inf"):
        value = math.inf
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def default_bench_yaml() -> Path | None:
    """The suite file used when no other is named: $ANBENCH_BENCH_YAML, ./bench.yaml, or the
    repository's own bench.yaml next to the installed sources."""
    env = os.environ.get("ANBENCH_BENCH_YAML")
    if env:
        return Path(env)
    repo_copy = Path(__file__).resolve().parents[1] / "bench.yaml"
    for candidate in (Path.cwd() / "bench.yaml", repo_copy):
        if candidate.is_file():
            return candidate
    return None


def load_config(config_file: Path | None = None, sets: list[str] | None = None,
                bench_yaml: Path | None = None, extra_plugins: list[str] | None = None,
                ) -> BenchConfig:
    """Resolve the layered config, load plugins, and validate every plugin section."""
    raw: dict[str, Any] = {}
    base = bench_yaml if bench_yaml is not None else default_bench_yaml()
    if base is not None:
        raw = deep_merge(raw, read_yaml(base))
    if config_file is not None:
        raw = deep_merge(raw, read_yaml(config_file))
    command_line: dict[str, Any] = {}
    for assignment in sets or []:
        update = parse_set(assignment)
        (top, value), = update.items()
        if top in BenchConfig.model_fields and top != "plugins" and not isinstance(value, dict):
            # A scalar here would be silently replaced by any later `--set top.key=...`.
            raise ConfigError(f"config error at '{top}': a section of keys, not a value "
                              f"(use --set {top}.KEY=VALUE)")
        command_line = deep_merge(command_line, update)
    raw = deep_merge(raw, command_line)
    raw = _apply_backbone_run_block(raw, command_line)
    try:
        config = BenchConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc)) from None
    config._cli = {section: value for section, value in command_line.items()
                   if section in SECTION_REGISTRY and isinstance(value, dict)}
    for plugin in [*config.plugins, *(extra_plugins or [])]:
        load_plugin(plugin)
    validate_plugin_sections(config)
    return config


def _apply_backbone_run_block(raw: dict[str, Any], command_line: dict[str, Any]
                              ) -> dict[str, Any]:
    """`per_backbone.<backbone>.run` keys apply to the run section, below the command line."""
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    backbone = run.get("backbone", RunSection.model_fields["backbone"].default)
    blocks = raw.get("per_backbone")
    block = blocks.get(backbone) if isinstance(blocks, dict) else None
    extra = block.get("run") if isinstance(block, dict) else None
    if not isinstance(extra, dict) or not extra:
        return raw
    from_cli = command_line.get("run", {}) if isinstance(command_line.get("run"), dict) else {}
    merged = copy.deepcopy(raw)
    merged["run"] = {**run, **{k: v for k, v in extra.items() if k not in from_cli}}
    return merged


def validate_plugin_sections(config: BenchConfig) -> None:
    for section, registry_key in SECTION_REGISTRY.items():
        registry = REGISTRIES[registry_key]
        for name in getattr(config, section):
            if name not in section_registry(section, name):
                raise ConfigError(f"config error at '{section}.{name}': unknown "
                                  f"{registry.kind}; known: {_known(section)}")
            config.plugin_params(section, name)
    for scope, kind in (("per_backbone", "backbones"), ("per_dataset", "datasets")):
        for key, overrides in getattr(config, scope).items():
            if key not in REGISTRIES[kind]:
                raise ConfigError(
                    f"config error at '{scope}.{key}': no {REGISTRIES[kind].kind} is called "
                    f"'{key}', so this override can never apply; known: "
                    f"{', '.join(REGISTRIES[kind].names())}")
            for section in ("methods", "perturbations"):
                registry = REGISTRIES[section]
                for name in getattr(overrides, section):
                    if name not in section_registry(section, name):
                        raise ConfigError(
                            f"config error at '{scope}.{key}.{section}.{name}': unknown "
                            f"{registry.kind}; known: {_known(section)}")
                    kwargs = {"backbone": key} if scope == "per_backbone" else {"dataset": key}
                    config.plugin_params(section, name, **kwargs)


def dump_config(config: BenchConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
