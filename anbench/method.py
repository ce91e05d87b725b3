"""The method contract: what a prompt-tuning method declares and how the runner drives it.

A method is an `nn.Module` over a frozen `BackboneAdapter`. The runner (and only the runner)
owns the loop: it calls `setup` once with the training label space, trains
`trainable_parameters()` on the sum of the named terms `loss()` returns, then evaluates with
`encode_images` (once per trained model), `class_features` (once per set of class sentences:
clean, and each perturbation) and `logits`.

Class sentences. Every method consumes one natural-language sentence per class (by default the
dataset's template filled with the class name); evaluation perturbations act on exactly these
sentences, so every method is measured on the same text. Methods with learned context put it in
front of the sentence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from anbench.backbones.adapter import BackboneAdapter


class MethodParams(BaseModel):
    """Optimisation settings every method has; methods subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    # Fields that change only speed or memory, never what is computed: a cell's fingerprint
    # leaves them out, so toggling one does not redo finished cells.
    speed_only: ClassVar[frozenset[str]] = frozenset()

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5  # Dassl's WARMUP_CONS_LR (constant) / WARMUP_MIN_LR (linear)
    warmup_type: Literal["constant", "linear"] = "constant"  # Dassl's WARMUP_TYPE
    # The sentence each class is written as: the dataset template ("a photo of a {}.") or the
    # bare class name ("{}." as in CoOp/DAPT's official prompt).
    class_sentence: Literal["template", "name"] = "template"


@dataclass
class TaskContext:
    """What a method may know while it trains: the training label space only."""

    dataset: str
    classnames: list[str]
    sentences: list[str]  # one clean sentence per training class (see class_sentence)
    descriptions: dict[str, list[str]]  # class name -> hand-written descriptions
    templates: list[str]
    seed: int
    device: torch.device
    train_noise: Any = None  # a Perturbation instance, or None
    train_noise_name: str = "none"
    # None: the perturbation's own first default severity (wsp: 1.0). Note 0 means no noise.
    train_noise_severity: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set `Params`, and usually override every method below."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    takes_train_noise: ClassVar[bool] = False  # True: trained once per noise strategy
    default_train_noise: ClassVar[str] = "wsp"  # used when a run names no noise strategy
    trains: ClassVar[bool] = True  # False for zero-shot
    # Buffers that are part of the trained prompts (e.g. ANPrompt's noise centroids N): saved
    # and reloaded with the parameters; class-dependent buffers are never listed here.
    prompt_buffers: ClassVar[tuple[str, ...]] = ()
    # True: `encode_images` is the frozen, un-prompted encoder's {"clean": n(E_I(x))}, the same
    # for every method that declares it, so evaluation shares one cached copy per image list
    # (`anbench.feature_cache`). Read from the class's own body only, never inherited: a
    # subclass that prompts the image path must not silently reuse those features.
    frozen_image_features: ClassVar[bool] = False
    # True: cells of this method that share images and seed train together as one group
    # (`anbench.cell_group`), which needs `fusion_key(params)` (equal keys may share a group),
    # `fused_loss(members, inputs, labels)` (each member's terms from one pass) and, for a
    # shared test-image pass, `frozen_image_inputs(batch)` / `encode_from_frozen(frozen)`.
    # Read from the class's own body only, never inherited (like `frozen_image_features`).
    fusable: ClassVar[bool] = False

    def __init__(self, params: MethodParams, adapter: BackboneAdapter):
        super().__init__()
        self.params = params
        self.adapter = adapter

    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        """Build what depends on the training data (prototypes, noise prompts) before training.
        `train_images` are preprocessed (eval pipeline) few-shot training images."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def training_inputs(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """What `loss` receives for the whole training set, computed once before training and
        sliced along dim 0 per batch by the trainer (default: the images themselves). Methods
        with a frozen prefix return its cached outputs here; `loss` must accept both forms."""
        return images

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms for one batch; the trainer sums them."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image features the method predicts from (e.g. {"clean": f^c, "nrvpp": f^r})."""
        raise NotImplementedError

    def class_features(self, sentences: list[str]) -> torch.Tensor:
        """Normalised prompted text features [C, d], one per class sentence."""
        raise NotImplementedError

    def logits(self, image_features: dict[str, torch.Tensor], text_features: torch.Tensor,
               split: Literal["base", "new", "all"]) -> torch.Tensor:
        """Prediction logits [N, C] (the prediction rule may depend on the split)."""
        raise NotImplementedError

    def conditional_logits(self, image_features: dict[str, torch.Tensor], sentences: list[str],
                           split: Literal["base", "new", "all"],
                           clean_sentences: list[str] | None = None,
                           alpha: float = float("inf")) -> torch.Tensor | None:
        """Logits [N, C] for methods whose class text depends on each image (CoCoOp), where
        `logits(image_features, class_features(...))` cannot express them: the text of
        `sentences`, mixed per image with that of `clean_sentences` at weight `alpha` as
        evaluation mixes features. None (the default): the text does not depend on the image."""
        return None

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called by the trainer after the last step of each epoch (0-based `epoch` of
        `epochs`), e.g. to aggregate prompts over epochs (PromptSRC)."""

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """Trained prompt parameters (and `prompt_buffers`), without class-dependent buffers
        (reloadable for another label space)."""
        state = {name: p.detach().cpu().clone() for name, p in self.named_parameters()
                 if p.requires_grad}
        buffers = dict(self.named_buffers())
        for name in self.prompt_buffers:
            state[name] = buffers[name].detach().cpu().clone()
        return state

    def load_prompt_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {name: p for name, p in self.named_parameters() if p.requires_grad}
        buffers = dict(self.named_buffers())
        own.update({name: buffers[name] for name in self.prompt_buffers})
        unknown = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        if unknown or missing:
            raise KeyError(f"prompt state does not fit {type(self).__name__}: "
                           f"unknown {unknown}, missing {missing}")
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"prompt state '{name}' has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(own[name].shape)}")
            own[name].data.copy_(tensor.to(own[name].device))
