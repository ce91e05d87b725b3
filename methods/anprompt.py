"""`anprompt` and its ablations: anti-noise prompt tuning, our reconstruction.

1. Weak-noise frozen text features t^wn_c = n(n(E_T(m_c)) + alpha n(E_T(m~_c))), S samples per
   class, m_c a class description (else the class sentence), m~_c = P(m_c) from the training
   noise strategy P (default `wsp`), over the training label space only.
2. Noise prompts N: k-means (fixed seed) of those features into K centroids.
3. Anti-noise prompts A = R + N, R learnable; per-layer linear maps to each encoder's width.
4. Injected into the last `depth` blocks of both encoders (inserted after [SOS]/[CLS] at the
   first, overwriting those slots later). The frozen blocks before them are run once per image
   (view) and per training sentence and cached (they see no prompt; `anbench.prefix_cache`).
5. NRVPP: the K prompt-token outputs of the last vision block after the final norm, averaged,
   projected by the frozen visual projection plus a trainable low-rank term: f^r.
6. Logits z^c = tau f^c T^T, z^r = tau f^r T^T, z^f = s z^c + (1-s) z^r, z^n = tau f^r T^wn^T.
7-9. Loss s CE(z^c) + (1-s) CE(z^r) + lambda L_sim + w_WA L_WA.
10. Prediction: base classes with z^f, new classes / other label spaces with z^c.

Ablations are the same class with other switch defaults: `anprompt-wo-nrvpp` (nrvpp: false),
`anprompt-wo-waloss` (wa_weight: 0), `anprompt-wo-noise` (noise_prompts: false, N = 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, create_model
from pydantic.fields import FieldInfo
from torch import nn

from anbench.backbones.adapter import BackboneAdapter, ImageState, TextState
from anbench.hashing import tensor_digest
from anbench.image_perturbation import TrainingImageNoise, split_training_noise
from anbench.method import Method, MethodParams, TaskContext
from anbench.perturbation import apply, build_perturbation, make_context, mix_features
from anbench.prefix_cache import (
    PrefixCache,
    cache_for,
    default_cache,
    precision_tag,
    prefix_key,
)
from anbench.registry import METHODS

from ._common import (
    frozen_text,
    generator,
    init_linear_,
    init_normal_,
    init_uniform_,
    is_images,
    scaled_logits,
    sim_loss,
    wa_loss,
)


class ANPromptParams(MethodParams):
    speed_only: ClassVar[frozenset[str]] = frozenset({"cache_prefix", "frozen_qkv"})
    # Optimiser of the authors' code: AdamW lr 1e-3, batch 4, 10 epochs, cosine, 1 warm-up epoch.
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    batch_size: PositiveInt = 4
    epochs: PositiveInt = 10
    n_prompts: PositiveInt = 4  # K: prompt tokens = k-means centroids
    depth: PositiveInt = 2  # prompted blocks at the end of each encoder
    noise_samples: PositiveInt = 8  # S weak-noise sentences per class
    main_sentence: Literal["description", "sentence"] = "description"  # what m_c is
    noise_prompts: bool = True  # False: N = 0, plain learnable deep prompts
    kmeans_n_init: PositiveInt = 10
    prompt_init_std: PositiveFloat = 0.02  # R ~ N(0, std^2)
    nrvpp: bool = True  # False: no f^r, no z^r (anprompt-wo-nrvpp)
    nrvpp_rank: PositiveInt = 16  # the authors' code uses 64
    fusion: float = Field(0.7, ge=0.0, le=1.0)  # s in z^f and in the CE weights
    sim_weight: NonNegativeFloat = 1.0  # lambda
    wa_weight: NonNegativeFloat = 1.0  # w_WA; 0 drops WALoss (anprompt-wo-waloss)
    # Reuse frozen work across steps (exact): the vision prefix and f^0 per training image view,
    # the text prefix per class sentence (memory ~ N * tokens * width). False recomputes all of
    # it at every step (the reference path the speed benchmark compares against).
    cache_prefix: bool = True
    # The first prompted vision block takes its frozen tokens' query/key/value projections from
    # the frozen inputs and projects only the prompt tokens (exact, ~40% less work in that
    # block; with cache_prefix the cache holds them: 4x the prefix memory).
    frozen_qkv: bool = True


@METHODS.register("anprompt", description="ANPrompt: anti-noise prompts from k-means of "
                                          "weak-noise text features, NRVPP, WALoss",
                  meta={"order": 3, "colour": 3})
class ANPrompt(Method):
    """Anti-noise deep prompts in both encoders, NRVPP, WALoss and sim loss (switchable)."""

    Params = ANPromptParams
    params: ANPromptParams
    takes_train_noise = True
    default_train_noise = "wsp"
    prompt_buffers = ("noise_centroids",)  # N is part of the trained prompt, not class data
    fusable = True  # cells with equal `fusion_key`s train as one group (`fused_loss`)

    def __init__(self, params: ANPromptParams, adapter: BackboneAdapter):
        super().__init__(params, adapter)
        depth, k, d = params.depth, params.n_prompts, adapter.embed_dim
        if depth > min(adapter.text_layers, adapter.vision_layers):
            raise ValueError(f"depth {depth} exceeds the encoders' layers "
                             f"({adapter.text_layers} text, {adapter.vision_layers} vision)")
        device = adapter.device
        self.text_first = adapter.text_layers - depth
        self.vision_first = adapter.vision_layers - depth
        self.anti_noise = nn.Parameter(torch.empty(k, d, device=device))  # R
        self.register_buffer("noise_centroids", torch.zeros(k, d, device=device))  # N
        self.text_proj = nn.ModuleList(
            nn.Linear(d, adapter.text_width, device=device) for _ in range(depth))
        self.vision_proj = nn.ModuleList(
            nn.Linear(d, adapter.vision_width, device=device) for _ in range(depth))
        if params.nrvpp:
            self.nrvpp_down = nn.Parameter(torch.empty(adapter.vision_width, params.nrvpp_rank,
                                                       device=device))
            self.nrvpp_up = nn.Parameter(torch.empty(params.nrvpp_rank, d, device=device))
        # Class-dependent (training label space): non-persistent, never in prompt_state.
        self.register_buffer("t_zero", torch.zeros(0, d, device=device), persistent=False)
        self.register_buffer("t_wn", torch.zeros(0, d, device=device), persistent=False)
        self._text_prefix: TextState | None = None
        self._text_tokens: torch.Tensor | None = None
        self._prefix_cache: PrefixCache | None = None  # None: the process default
        self._preprocessing = ""
        self.setup_info: dict[str, Any] = {}
        # Set by a fused group while it evaluates: class text features computed for all its
        # members at once (`anbench.cell_group.SharedClassText`).
        self.shared_text: Any = None
        self._scaled: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic init from `seed`, one stream per parameter group."""
        init_normal_(self.anti_noise, self.params.prompt_init_std, generator(seed, "R"))
        for layer, proj in enumerate(self.text_proj):
            init_linear_(proj, generator(seed, "text_proj", layer))
        for layer, proj in enumerate(self.vision_proj):
            init_linear_(proj, generator(seed, "vision_proj", layer))
        if self.params.nrvpp:
            # LoRA-style: the low-rank term starts at zero, so f^r starts as the frozen path.
            bound = 1 / math.sqrt(self.adapter.vision_width)
            init_uniform_(self.nrvpp_down, bound, generator(seed, "nrvpp_down"))
            with torch.no_grad():
                self.nrvpp_up.zero_()

    # ------------------------------------------------------------------ setup
    def setup(self, task: TaskContext, train_images: torch.Tensor,
              train_labels: torch.Tensor) -> None:
        adapter = self.adapter
        self.reset_parameters(task.seed)
        # An image training noise (image-feature-mix) mixes f^c / f^r in `loss`; the weak-noise
        # text features then use the default text noise (wsp).
        task, self._image_noise = split_training_noise(task)
        self._prefix_cache = cache_for(task.extra)
        self._preprocessing = str(task.extra.get("preprocessing", ""))
        with torch.no_grad(), adapter.autocast():
            tokens = adapter.trim(adapter.tokenize(task.sentences))
            self._text_tokens = tokens
            prefix = (self._cached_text_prefix(tokens) if self.params.cache_prefix
                      else self._compute_text_prefix(tokens))
            self._text_prefix = prefix
            full = adapter.text_blocks(prefix, self.text_first, None)
            self.t_zero = F.normalize(adapter.text_head(full).float(), dim=-1)
        features, info = self._weak_noise_features(task)  # [C, S, d]
        self.t_wn = F.normalize(features.mean(dim=1), dim=-1)
        if self.params.noise_prompts:
            centroids, inertia = _kmeans(features.reshape(-1, features.shape[-1]),
                                         self.params.n_prompts, task.seed,
                                         self.params.kmeans_n_init)
            self.noise_centroids.copy_(centroids.to(self.noise_centroids.device))
            info["kmeans_inertia"] = inertia
        else:
            self.noise_centroids.zero_()
        self.setup_info = info

    def _weak_noise_features(self, task: TaskContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """t^wn [C, S, d] from main sentences m_c and their noisy versions m~_c = P(m_c)."""
        noise = task.train_noise
        if noise is None:
            noise = build_perturbation(self.default_train_noise)
        severity = task.train_noise_severity
        if severity is None:
            severity = noise.severities[0]
        samples = self.params.noise_samples
        mains, contexts, ids = [], [], []
        for c, name in enumerate(task.classnames):
            descriptions = list(task.descriptions.get(name, []))  # this class's only
            for j in range(samples):
                if self.params.main_sentence == "description" and descriptions:
                    main = descriptions[j % len(descriptions)]
                else:
                    main = task.sentences[c]
                mains.append(main)
                contexts.append(make_context(main, name, c, descriptions, task.templates,
                                             self.adapter.mask_token, task.classnames))
                ids.append(f"{c}:{j}")
        noisy = apply(noise, mains, contexts, ids, task.seed, severity)
        clean_f = frozen_text(self.adapter, mains)
        noisy_f = frozen_text(self.adapter, noisy)
        mixed = mix_features(clean_f, noisy_f, noise.alpha)
        info = {"noise": noise.name, "severity": float(severity), "alpha": float(noise.alpha),
                "samples": samples, "changed": sum(a != b for a, b in zip(mains, noisy,
                                                                          strict=True)),
                "examples": list(zip(mains[:3], noisy[:3], strict=True))}
        return mixed.reshape(len(task.classnames), samples, -1), info

    # ------------------------------------------------------------------ prompts and encoders
    def _anti_noise_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        a = self.anti_noise + self.noise_centroids  # A = R + N (N = 0 without noise prompts)
        return [proj(a) for proj in self.text_proj], [proj(a) for proj in self.vision_proj]

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._prefix_cache if self._prefix_cache is not None else default_cache()

    def _cache_key(self, tower: str, end_layer: int, digest: str) -> str:
        backbone = self.adapter.backbone
        vision = tower == "vision"
        return prefix_key(weights=f"{backbone.name}:{backbone.weights_hash}",
                          preprocessing=self._preprocessing if vision else "",
                          tower=tower, end_layer=end_layer, input_digest=digest,
                          precision=precision_tag(self.adapter),
                          extra="f0+qkv" if vision and self.params.frozen_qkv else "")

    def _compute_text_prefix(self, tokens: torch.Tensor) -> TextState:
        adapter = self.adapter
        return adapter.text_blocks(adapter.text_input(tokens), 0, self.text_first)

    def _cached_text_prefix(self, tokens: torch.Tensor) -> TextState:
        def compute() -> dict[str, torch.Tensor]:
            state = self._compute_text_prefix(tokens)
            return {"x": state.x, "valid": state.valid, "pooled": state.pooled}

        key = self._cache_key("text", self.text_first, tensor_digest(tokens))
        entry = self.prefix_cache.get_or_compute(key, compute, self.adapter.device)
        return TextState(entry["x"], entry["valid"], entry["pooled"])

    def _image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        adapter = self.adapter
        state = adapter.image_input(images.to(adapter.device))
        return adapter.image_blocks(state, 0, self.vision_first).x

    def _image_from_prefix(self, prefix: torch.Tensor, prompts: list[torch.Tensor],
                           qkv: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n(f^c), n(f^r) or None) from the hidden states entering the first prompted block
        (and, optionally, that block's frozen-token projections)."""
        adapter = self.adapter
        state = adapter.image_blocks(ImageState(prefix), self.vision_first, None, prompts,
                                     self.vision_first, head_only=True, frozen_qkv=qkv)
        out = adapter.image_head(state)
        clean = F.normalize(out.features.float(), dim=-1)
        if not self.params.nrvpp:
            return clean, None
        return clean, F.normalize(self._nrvpp(out.prompt_tokens), dim=-1)

    def _nrvpp(self, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """Average the K prompt-token outputs; frozen projection + trainable low-rank term."""
        mean = prompt_tokens.float().mean(dim=1)
        projection = self.adapter.visual_projection
        frozen = mean if projection is None else mean @ projection.float()
        return frozen + (mean @ self.nrvpp_down) @ self.nrvpp_up

    @torch.no_grad()
    def _frozen_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What an image batch gives before any prompt: the vision prefix, f^0 and (frozen_qkv)
        the first prompted block's frozen-token projections."""
        adapter = self.adapter
        parts: dict[str, list[torch.Tensor]] = {"prefix": [], "f0": [], "qkv": []}
        with adapter.autocast():
            for start in range(0, len(images), 256):
                prefix = self._image_prefix(images[start:start + 256])
                rest = adapter.image_blocks(ImageState(prefix), self.vision_first, None,
                                            head_only=True)
                parts["f0"].append(F.normalize(adapter.image_head(rest).features.float(), dim=-1))
                parts["prefix"].append(prefix)
                qkv = (adapter.image_qkv(ImageState(prefix), self.vision_first)
                       if self.params.frozen_qkv else None)
                if qkv is not None:
                    parts["qkv"].append(qkv)
        return {name: torch.cat(values) for name, values in parts.items() if values}

    @torch.no_grad()
    def training_inputs(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """With cache_prefix: the frozen vision prefix and f^0 of every training image (view),
        from the prefix cache; without: the images (each step recomputes them)."""
        if not self.params.cache_prefix:
            return images
        key = self._cache_key("vision", self.vision_first, tensor_digest(images))
        entry = self.prefix_cache.get_or_compute(key, lambda: self._frozen_inputs(images),
                                                 self.adapter.device)
        return dict(entry)  # a copy: callers may add keys without touching the cache

    # ------------------------------------------------------------------ contract
    def loss(self, images: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        return type(self).fused_loss([self], images, labels)[0]

    # ------------------------------------------------------------------ fused groups
    @classmethod
    def fusion_key(cls, params: ANPromptParams) -> tuple[Any, ...]:
        """Cells whose keys are equal (and that share images and seed) train as one group
        (`anbench.cell_group`): same prompted depth and token count (prompts stack along the
        batch), same frozen inputs (speed switches, class sentences) and same steps (epochs,
        batch size: one shuffled order for all). Ablations and training noises may differ."""
        return ("anprompt", params.depth, params.n_prompts, params.frozen_qkv,
                params.cache_prefix, params.class_sentence, params.epochs, params.batch_size)

    @classmethod
    def fused_loss(cls, members: Sequence[ANPrompt],
                   images: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor
                   ) -> list[dict[str, torch.Tensor]]:
        """Each member's loss terms for one batch, from one pass through the prompted blocks:
        member m's prompts fill rows [m*C, (m+1)*C) of the class sentences (and, off the CPU,
        rows [m*B, (m+1)*B) of the image batch), the frozen inputs are shared. Frozen blocks act
        on each row alone and the members' parameters are disjoint, so member m's terms (and
        gradients) are those of its own `loss`; with one member this is `loss`."""
        lead = members[0]
        if any(m._text_prefix is None for m in members):
            raise RuntimeError("ANPrompt.setup() must run before loss()")
        adapter = lead.adapter
        # Raw images (cache off, or a direct call): all frozen work for this batch, now, once.
        inputs = lead._frozen_inputs(images) if is_images(images) else images
        labels = labels.to(adapter.device)
        count, batch = len(members), len(labels)
        prompts = [m._anti_noise_prompts() for m in members]
        text_prefix = lead._text_prefix
        if not lead.params.cache_prefix and lead._text_tokens is not None:
            with torch.no_grad():
                text_prefix = lead._compute_text_prefix(lead._text_tokens)
        classes = text_prefix.x.shape[0]
        # Images: stacked on accelerators (the width they idle at batch 4). On a CPU each
        # member's rows run as alone: there the stacked attention backward rounds differently
        # once the batch grows (measured at 8 x 4 images), and the image blocks are cheap.
        groups = [list(range(count))] if adapter.device.type != "cpu" else [[m] for m in
                                                                           range(count)]
        clean: list[torch.Tensor] = []
        tokens: list[torch.Tensor] = []
        for group in groups:
            state = adapter.image_blocks(
                ImageState(_repeat(inputs["prefix"], len(group))), lead.vision_first, None,
                _stack([prompts[m][1] for m in group], batch), lead.vision_first,
                head_only=True, frozen_qkv=_repeat(inputs.get("qkv"), len(group)))
            out = adapter.image_head(state)
            clean += F.normalize(out.features.float(), dim=-1).chunk(len(group))
            tokens += out.prompt_tokens.chunk(len(group))
        text_state = adapter.text_blocks(
            TextState(_repeat(text_prefix.x, count), _repeat(text_prefix.valid, count),
                      _repeat(text_prefix.pooled, count)),
            lead.text_first, None, _stack([text for text, _ in prompts], classes),
            lead.text_first)
        text = F.normalize(adapter.text_head(text_state).float(), dim=-1).chunk(count)
        terms = []
        for m, f_c, prompt_tokens, t in zip(members, clean, tokens, text, strict=True):
            f_r = F.normalize(m._nrvpp(prompt_tokens), dim=-1) if m.params.nrvpp else None
            f_c, f_r = _mix_image_noise(getattr(m, "_image_noise", None), f_c, f_r)
            terms.append(m._loss_terms(f_c, f_r, t, inputs["f0"], labels))
        return terms

    def _loss_terms(self, f_c: torch.Tensor, f_r: torch.Tensor | None, text: torch.Tensor,
                    f_zero: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p, tau = self.params, self.adapter.logit_scale
        z_c = scaled_logits(f_c, text, tau)
        terms: dict[str, torch.Tensor] = {}
        if f_r is not None:
            z_r = scaled_logits(f_r, text, tau)
            terms["ce_clean"] = p.fusion * F.cross_entropy(z_c, labels)
            terms["ce_nrvpp"] = (1 - p.fusion) * F.cross_entropy(z_r, labels)
        else:
            terms["ce_clean"] = F.cross_entropy(z_c, labels)
        if p.sim_weight:
            terms["sim"] = p.sim_weight * sim_loss(f_c, f_zero, text, self.t_zero)
        if p.wa_weight:
            z_n = scaled_logits(f_r if f_r is not None else f_c, self.t_wn, tau)
            terms["wa"] = p.wa_weight * wa_loss(z_c, z_n)
        return terms

    @torch.no_grad()
    def frozen_image_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a test-image batch gives before any prompt: the hidden states entering the
        first prompted block and (frozen_qkv) that block's frozen-token projections. The
        members of a fused group compute it once per batch (`encode_from_frozen`)."""
        prefix = self._image_prefix(images)
        qkv = (self.adapter.image_qkv(ImageState(prefix), self.vision_first)
               if self.params.frozen_qkv else None)
        return {"prefix": prefix} if qkv is None else {"prefix": prefix, "qkv": qkv}

    @torch.no_grad()
    def encode_from_frozen(self, frozen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`encode_images` from `frozen_image_inputs` (under the adapter's autocast)."""
        _, vision_prompts = self._anti_noise_prompts()
        f_c, f_r = self._image_from_prefix(frozen["prefix"], vision_prompts, frozen.get("qkv"))
        return {"clean": f_c} if f_r is None else {"clean": f_c, "nrvpp": f_r}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.adapter.autocast():
            return self.encode_from_frozen(self.frozen_image_inputs(images))

    @torch.no_grad()
    def class_features(self, sentences: list[str]) -> torch.Tensor:
        if self.shared_text is not None:  # a fused group's members, computed together
            return self.shared_text.features(self, sentences)
        return type(self).fused_class_features([self], sentences)[0]

    @classmethod
    @torch.no_grad()
    def fused_class_features(cls, members: Sequence[ANPrompt], sentences: list[str]
                             ) -> list[torch.Tensor]:
        """Each member's `class_features(sentences)` from one pass: the sentences tokenised
        and their frozen text prefix computed once, then the prompted blocks run on the
        members' prompts stacked along the batch (member m's rows at [m*C, (m+1)*C)). Rows do
        not interact, so each member gets what it computes alone."""
        lead = members[0]
        adapter, count = lead.adapter, len(members)
        parts: list[list[torch.Tensor]] = [[] for _ in members]
        with adapter.autocast():
            prompts = [m._anti_noise_prompts()[0] for m in members]
            for start in range(0, len(sentences), 256):
                tokens = adapter.trim(adapter.tokenize(sentences[start:start + 256]))
                prefix = lead._compute_text_prefix(tokens)
                state = adapter.text_blocks(
                    TextState(_repeat(prefix.x, count), _repeat(prefix.valid, count),
                              _repeat(prefix.pooled, count)),
                    lead.text_first, None, _stack(prompts, len(tokens)), lead.text_first)
                features = F.normalize(adapter.text_head(state), dim=-1).float()
                for part, chunk in zip(parts, features.chunk(count), strict=True):
                    part.append(chunk)
        return [torch.cat(part) for part in parts]

    def logits(self, image_features: dict[str, torch.Tensor], text_features: torch.Tensor,
               split: Literal["base", "new", "all"]) -> torch.Tensor:
        tau = self.adapter.logit_scale
        text = F.normalize(text_features, dim=-1)
        z_c = self._scaled_images(image_features["clean"], tau) @ text.T
        if split != "base" or "nrvpp" not in image_features:
            return z_c  # new classes and other label spaces: z^c
        z_r = self._scaled_images(image_features["nrvpp"], tau) @ text.T
        return self.params.fusion * z_c + (1 - self.params.fusion) * z_r  # z^f

    def _scaled_images(self, features: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """`tau * n(features)`, the image side of `scaled_logits` (same operations, so the
        same logits), kept for the last few feature tensors: evaluation reuses one split's
        features for every condition and draw, and renormalising thousands of images each
        time cost more than the rest of the logits."""
        key = (id(features), float(tau))
        kept = self._scaled.get(key)
        if kept is not None and kept[0] is features:
            return kept[1]
        scaled = tau * F.normalize(features, dim=-1)
        if len(self._scaled) >= 4:
            self._scaled.pop(next(iter(self._scaled)))
        self._scaled[key] = (features, scaled)
        return scaled


def _repeat(tensor: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """`count` copies of `tensor` along dim 0 (one per fused member)."""
    if tensor is None or count == 1:
        return tensor
    return tensor.repeat(count, *([1] * (tensor.dim() - 1)))


def _stack(per_member: list[list[torch.Tensor]], rows: int) -> list[torch.Tensor]:
    """Per injected layer: each member's prompt [K, width] repeated for its `rows` rows, the
    members one after another: [members * rows, K, width]."""
    return [torch.cat([layers[j].unsqueeze(0).expand(rows, -1, -1) for layers in per_member])
            for j in range(len(per_member[0]))]


def _mix_image_noise(noise: TrainingImageNoise | None, f_c: torch.Tensor,
                     f_r: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weak image training noise on one batch: f^c and f^r of each image mixed with those
    of another image of the batch (one seeded permutation per step); no noise: unchanged."""
    if noise is None:
        return f_c, f_r
    mixed = noise({"clean": f_c} if f_r is None else {"clean": f_c, "nrvpp": f_r})
    return mixed["clean"], mixed.get("nrvpp")


def _kmeans(points: torch.Tensor, k: int, seed: int, n_init: int) -> tuple[torch.Tensor, float]:
    """K centroids of `points` (sklearn KMeans, fixed random_state: deterministic)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least K={k} weak-noise features, got "
                         f"{points.shape[0]} (raise noise_samples or lower n_prompts)")
    data = points.detach().double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than K
        km = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed) % (2**32)).fit(data)
    return torch.from_numpy(km.cluster_centers_).float(), float(km.inertia_)


def _variant(name: str, description: str, doc: str, meta: dict[str, Any],
             **defaults: Any) -> type[ANPrompt]:
    """Register an ablation: ANPrompt with other switch defaults (still configurable)."""
    fields: dict[str, Any] = {}
    for key, value in defaults.items():  # keep each field's constraints, change its default
        info = FieldInfo.merge_field_infos(ANPromptParams.model_fields[key], default=value)
        fields[key] = (info.annotation, info)
    params = create_model(f"ANPrompt_{name.replace('-', '_')}_Params", __base__=ANPromptParams,
                          **fields)
    # `fusable` is read from a class's own body: each variant declares it (a plugin subclass
    # that changes the loss must not silently inherit `fused_loss`).
    cls = type(f"ANPrompt_{name.replace('-', '_')}", (ANPrompt,),
               {"Params": params, "__doc__": doc, "__module__": __name__, "fusable": True})
    return METHODS.register(name, description=description, meta=meta)(cls)


ANPromptWoNRVPP = _variant(
    "anprompt-wo-nrvpp", "ANPrompt without NRVPP (no prompt-token feature, z^c only)",
    "ANPrompt with nrvpp=False: no f^r, CE on z^c only, z^n from f^c, prediction z^c.",
    {"order": 4, "colour": 1}, nrvpp=False)
ANPromptWoWALoss = _variant(
    "anprompt-wo-waloss", "ANPrompt without WALoss (w_WA = 0)",
    "ANPrompt with wa_weight=0: no WALoss term.", {"order": 5, "colour": 2}, wa_weight=0.0)
ANPromptWoNoise = _variant(
    "anprompt-wo-noise", "ANPrompt without noise prompts (N = 0: plain learnable deep prompts)",
    "ANPrompt with noise_prompts=False: A = R.", {"order": 6, "colour": 9},
    noise_prompts=False)
