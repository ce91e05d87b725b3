"""The image perturbation contract: the second perturbation kind, beside text.

An image perturbation acts at one (or both) of two points:

- pixels: `corrupt(image, rng, severity)` maps a uint8 image `[H, W]`, `[H, W, 1]` or
  `[H, W, 3]` to one of the same shape and dtype (ImageNet-C corruptions);
- image features: `mix(features, rng, severity)` maps a method's image features (a tensor
  `[N, d]` or a dict of them, as `Method.encode_images` returns) to perturbed ones (the weak
  feature mixing that ANPrompt can train with).

Both default to the identity. All randomness comes from the numpy Generator handed in, derived
from (run seed, perturbation name, severity, image id, draw) by `anbench.perturbation.derive_rng`,
so the same image gets the same corruption in any order, batch or process. Severity 0 is the
identity for every image perturbation, built-in or plugin.

A class declares its `category` (ImageNet-C's "noise", "blur", "weather", "digital", or
"feature"): it places the perturbation in `anbench list perturbations` and in the `--noise`
groups of that name. `can_train = True` lets a method take it as its training noise (image
corruptions are evaluation-only); `stochastic = False` says a corruption draws nothing (extra
noise draws then reuse the first).

Writing one (see perturbations/image_corruptions.py)::

    @IMAGE_PERTURBATIONS.register("invert", description="...")
    class Invert(ImagePerturbation):
        category = "digital"
        stochastic = False

        def corrupt(self, image, rng, severity):
            return (255 - image).astype(np.uint8)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pydantic
from pydantic import ConfigDict, Field, field_validator

from anbench.hashing import json_digest
from anbench.noise_groups import register_kind
from anbench.registry import IMAGE_PERTURBATIONS, AnbenchError

if TYPE_CHECKING:  # torch is imported lazily: listing perturbations should not pay for it
    pass

#: ImageNet-C's four corruption families, then feature-level noise; `anbench list` shows them in
#: this order.
CATEGORIES: tuple[str, ...] = ("noise", "blur", "weather", "digital", "feature")


class ImagePerturbationParams(pydantic.BaseModel):
    """Parameters every image perturbation has: the severities it is evaluated at (a list; YAML
    may give one number). Subclasses add fields and change defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Upper bound checked on each severity; None = unbounded.
    max_severity: ClassVar[float | None] = None
    #: Whether severities must be whole numbers (ImageNet-C's levels 1..5).
    integer_severity: ClassVar[bool] = False

    severity: list[float] = Field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 5.0])

    @field_validator("severity", mode="before")
    @classmethod
    def _wrap_scalar(cls, v: Any) -> Any:
        return [v] if isinstance(v, int | float | str) and not isinstance(v, bool) else v

    @field_validator("severity")
    @classmethod
    def _check_severity(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("severity needs at least one value")
        for s in v:
            if not math.isfinite(s) or s < 0:
                raise ValueError(f"severity {s} must be finite and >= 0")
            if cls.max_severity is not None and s > cls.max_severity:
                raise ValueError(f"severity {s} is above the maximum {cls.max_severity:g}")
            if cls.integer_severity and s != int(s):
                raise ValueError(f"severity {s} must be a whole number")
        if len({float(s) for s in v}) != len(v):
            raise ValueError(f"a severity is listed twice: {v}")
        return v


class ImagePerturbation:
    """Base class: subclasses set `Params`, `category`, and override `corrupt` and/or `mix`."""

    Params: ClassVar[type[ImagePerturbationParams]] = ImagePerturbationParams
    #: Bump when a perturbation's output for the same inputs changes; stored with results.
    version: ClassVar[str] = "1"
    registry_name: ClassVar[str]
    modality: ClassVar[str] = "image"
    category: ClassVar[str] = "digital"
    #: The `--noise` group a perturbation joins besides `all` and `image` (its category).
    level: ClassVar[str | None] = None
    #: Whether a method may train with it (`--train-noise`); corruptions are evaluation-only.
    can_train: ClassVar[bool] = False
    #: False: the output does not depend on the rng (a blur), so noise draws repeat draw 0.
    stochastic: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.level = cls.category  # categories are the image kind's groups, as levels are text's

    def __init__(self, params: ImagePerturbationParams | None = None):
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} needs {self.Params.__name__}, "
                            f"got {type(params).__name__}")
        self.params = params

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__.lower())

    @property
    def severities(self) -> list[float]:
        return list(self.params.severity)

    @property
    def alpha(self) -> float:
        """The feature mixing weight of the results table: NaN for pixel corruptions."""
        return float(getattr(self.params, "alpha", math.nan))

    @property
    def acts_on_pixels(self) -> bool:
        """Whether `corrupt` is overridden: evaluation then encodes corrupted images; otherwise
        it reuses the clean image features and applies `mix` only."""
        return type(self).corrupt is not ImagePerturbation.corrupt

    def corrupt(self, image: np.ndarray, rng: np.random.Generator, severity: float
                ) -> np.ndarray:
        """The corrupted image (same shape, uint8); all randomness from `rng`."""
        return image

    def mix(self, features: Any, rng: np.random.Generator, severity: float) -> Any:
        """Perturbed image features (same structure); all randomness from `rng`."""
        return features

    def describe(self, seed: int, severity: float | None = None) -> dict[str, Any]:
        """Frozen, JSON-serialisable description stored with every result."""
        desc: dict[str, Any] = {
            "name": self.name,
            "modality": self.modality,
            "version": self.version,
            "params": self.params.model_dump(mode="json"),
            "seed": int(seed),
        }
        if severity is not None:
            desc["severity"] = float(severity)
        return desc

    def report(self, seed: int, severity: float | None = None) -> dict[str, Any]:
        """What a cell's meta.json records (the description: nothing is filtered or retried)."""
        return self.describe(seed, severity)

    def fingerprint(self, seed: int, severity: float | None = None) -> str:
        return json_digest(self.describe(seed, severity))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def apply_corruption(p: ImagePerturbation, image: np.ndarray, seed: int, severity: float,
                     item_id: str, draw: int = 0) -> np.ndarray:
    """`p.corrupt` with the image's own rng (derived from seed, name, severity, `item_id`, draw);
    severity 0 and non-pixel perturbations return the image unchanged. Checks the contract."""
    from anbench.perturbation import derive_rng

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"image perturbation '{p.name}': expected a uint8 [H, W], [H, W, 1] or "
                         f"[H, W, 3] image, got {image.dtype} {tuple(image.shape)}")
    if severity == 0 or not p.acts_on_pixels:
        return image
    out = p.corrupt(image, derive_rng(seed, p.name, severity, item_id, draw), severity)
    out = np.asarray(out)
    if out.shape != image.shape or out.dtype != np.uint8:
        raise TypeError(f"image perturbation '{p.name}' returned {out.dtype} "
                        f"{tuple(out.shape)} for a uint8 {tuple(image.shape)} image")
    return out


def apply_mix(p: ImagePerturbation, features: Any, seed: int, severity: float, set_id: str,
              draw: int = 0) -> Any:
    """`p.mix` with the rng of one image set (`set_id`, e.g. 'digits/base') or training step;
    severity 0 returns the features unchanged."""
    from anbench.perturbation import derive_rng

    if severity == 0:
        return features
    return p.mix(features, derive_rng(seed, p.name, severity, set_id, draw), severity)


class TrainingImageNoise:
    """An image perturbation used as a method's training noise (`--train-noise
    image-feature-mix`): called on a batch's image features at each optimiser step, it applies
    `mix` with the rng of (task seed, name, severity, 'step<k>'), k counting the calls."""

    def __init__(self, perturbation: ImagePerturbation, seed: int, severity: float):
        self.perturbation, self.seed, self.severity = perturbation, int(seed), float(severity)
        self.step = 0

    def __call__(self, features: Any) -> Any:
        out = apply_mix(self.perturbation, features, self.seed, self.severity,
                        f"step{self.step}")
        self.step += 1
        return out


def split_training_noise(task: Any) -> tuple[Any, TrainingImageNoise | None]:
    """(task, image noise) for a method's setup: when the task's training noise is an image
    perturbation, the task comes back with no training noise (the method's text side then uses
    its default, e.g. ANPrompt's `wsp`) and the image perturbation as a `TrainingImageNoise`;
    otherwise the task unchanged and None."""
    from dataclasses import replace

    noise = getattr(task, "train_noise", None)
    if not isinstance(noise, ImagePerturbation):
        return task, None
    severity = task.train_noise_severity
    severity = noise.severities[0] if severity is None else severity
    text_task = replace(task, train_noise=None, train_noise_severity=None)
    return text_task, TrainingImageNoise(noise, task.seed, severity)


def build_image_perturbation(name: str, params: dict[str, Any] | ImagePerturbationParams | None
                             = None) -> ImagePerturbation:
    """Instantiate a registered image perturbation with validated parameters."""
    cls = IMAGE_PERTURBATIONS.get(name)
    if isinstance(params, ImagePerturbationParams):
        return cls(params)
    try:
        validated = cls.Params.model_validate(params or {})
    except pydantic.ValidationError as exc:
        allowed = ", ".join(sorted(cls.Params.model_fields))
        msgs = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"]) or "(params)"
            msgs.append(f"unknown parameter '{key}' (allowed: {allowed})"
                        if err["type"] == "extra_forbidden" else f"parameter '{key}': {err['msg']}")
        raise AnbenchError(f"perturbation '{name}': " + "; ".join(msgs)) from None
    return cls(validated)


register_kind("image", IMAGE_PERTURBATIONS)
