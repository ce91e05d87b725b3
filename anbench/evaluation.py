"""Evaluate one trained method on one label space: clean, then under every perturbation.

Image features are computed once per trained model; each text perturbation and severity costs
one text pass over the class sentences and a matrix product. Each image perturbation and
severity encodes the corrupted images of a fixed subsample (`anbench.image_eval`) and scores
them against the clean class text features.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anbench import metrics
from anbench.method import Method
from anbench.perturbation import Perturbation, apply, make_context, mix_features

if TYPE_CHECKING:
    from anbench.image_eval import ImageEval

#: Metrics of each perturbed condition, by the modality of its perturbation.
TEXT_METRICS = ("acc", "ts", "lpr", "as")
IMAGE_METRICS = ("acc", "as", "lpr", "ifs")


@dataclass
class EvalNoise:
    """One evaluation condition: a perturbation at one severity."""

    perturbation: Perturbation  # or an `anbench.image_perturbation.ImagePerturbation`
    severity: float

    @property
    def name(self) -> str:
        return self.perturbation.name

    @property
    def modality(self) -> str:
        """"text" or "image": what the perturbation acts on (the results' `modality` column)."""
        return str(getattr(self.perturbation, "modality", "text") or "text")

    @property
    def alpha(self) -> float:
        return float(self.perturbation.alpha)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.severity:g}"


@dataclass
class SplitResult:
    """One split's evaluation. Perturbed entries are stacked over noise draws: sentences
    `[K][C]`, logits `[K, N, C]`, text features `[K, C, d]`. Image conditions are evaluated on
    the test images at `image_positions` (n of the N): logits `[K, n, C]` and the per-image
    feature shift `1 - cos(f, f~)` `[K, n]`."""

    split: str
    labels: np.ndarray
    sentences: list[str]
    clean_logits: np.ndarray
    clean_text: np.ndarray
    noisy_sentences: dict[str, list[list[str]]] = field(default_factory=dict)
    noisy_logits: dict[str, np.ndarray] = field(default_factory=dict)
    noisy_text: dict[str, np.ndarray] = field(default_factory=dict)
    image_positions: np.ndarray | None = None
    image_logits: dict[str, np.ndarray] = field(default_factory=dict)
    image_shift: dict[str, np.ndarray] = field(default_factory=dict)

    def accuracy(self, key: str | None = None) -> float:
        """Clean accuracy, or the mean over draws of the accuracy under condition `key`."""
        if key is None:
            return metrics.accuracy(self.clean_logits, self.labels)
        return float(np.mean(self.draw_values(key, "acc")))

    def draw_values(self, key: str, metric: str) -> np.ndarray:
        """The metric under condition `key`, one value per noise draw."""
        if key in self.image_logits:
            return self._image_draw_values(key, metric)
        values = []
        for logits, text in zip(self.noisy_logits[key], self.noisy_text[key], strict=True):
            if metric == "acc":
                values.append(metrics.accuracy(logits, self.labels))
            elif metric == "ts":
                values.append(metrics.text_shift(self.clean_text, text))
            elif metric == "lpr":
                values.append(metrics.logit_preservation_rate(self.clean_logits, logits))
            elif metric == "as":
                values.append(metrics.accuracy_shift(self.clean_logits, logits, self.labels))
            else:
                raise ValueError(f"unknown per-draw metric '{metric}'")
        return np.asarray(values, dtype=np.float64)

    def _image_draw_values(self, key: str, metric: str) -> np.ndarray:
        """An image condition's metric per draw, over its image subsample: AS and LPR against
        the clean logits of the same images."""
        positions = self.image_positions if self.image_positions is not None else slice(None)
        labels, clean = self.labels[positions], self.clean_logits[positions]
        values = []
        for logits, shift in zip(self.image_logits[key], self.image_shift[key], strict=True):
            if metric == "acc":
                values.append(metrics.accuracy(logits, labels))
            elif metric == "lpr":
                values.append(metrics.logit_preservation_rate(clean, logits))
            elif metric == "as":
                values.append(metrics.accuracy_shift(clean, logits, labels))
            elif metric == "ifs":
                values.append(float(np.mean(shift)) if len(shift) else math.nan)
            else:
                raise ValueError(f"unknown per-draw metric '{metric}' of an image condition")
        return np.asarray(values, dtype=np.float64)


def draw_std(values: np.ndarray) -> float:
    """Spread over noise draws (sample std; 0 for a single draw)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def class_sentences(method: Method, classnames: list[str], template: str) -> list[str]:
    """The natural-language sentence of each class that the method reads (and noise perturbs)."""
    if getattr(method.params, "class_sentence", "template") == "name":
        return [f"{name}." for name in classnames]
    return [template.format(name) for name in classnames]


@torch.no_grad()
def encode_images(method: Method, images: torch.Tensor | Iterable[torch.Tensor],
                  batch_size: int = 256) -> dict[str, torch.Tensor]:
    """`method.encode_images` over a decoded tensor (in slices of `batch_size`) or over a stream
    of image batches (`anbench.data.loader.ImageSet.batches`); only features are kept."""
    parts: list[dict[str, torch.Tensor]] = []
    device = method.adapter.device
    if isinstance(images, torch.Tensor):
        tensor = images
        images = (tensor[start:start + batch_size] for start in range(0, len(tensor), batch_size))
    with method.adapter.autocast():
        for batch in images:
            batch = batch.to(device, non_blocking=True)
            parts.append({k: v.float() for k, v in method.encode_images(batch).items()})
    if not parts:
        return {}
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


@torch.no_grad()
def evaluate_split(method: Method, split: str,
                   images: torch.Tensor | Mapping[str, torch.Tensor] | Iterable[torch.Tensor],
                   labels: torch.Tensor,
                   classnames: list[str], template: str, templates: list[str],
                   descriptions: dict[str, list[str]], noises: list[EvalNoise], seed: int,
                   dataset: str, all_classnames: list[str] | None = None, draws: int = 1,
                   image_eval: ImageEval | None = None) -> SplitResult:
    """Clean, then each condition `draws` times with independent noise (draw k keys the rng).
    Image conditions (perturbations of modality "image") need `image_eval`: their subsample,
    corrupted features and draws (`anbench.image_eval.make_image_eval`).

    `all_classnames`: every class name of the dataset (base and new), none of which a
    perturbation may write into a sentence; default this split's. `images`: a decoded tensor,
    a stream of image batches, or the method's image features already computed (a mapping, as
    `encode_images` returns; `anbench.feature_cache.image_features`)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    method.eval()
    features = (dict(images) if isinstance(images, Mapping)
                else encode_images(method, images))
    sentences = class_sentences(method, classnames, template)
    with method.adapter.autocast():
        clean_text = method.class_features(sentences).float()
        conditional = method.conditional_logits(features, sentences, split)
        clean_logits = (method.logits(features, clean_text, split) if conditional is None
                        else conditional).float()
    result = SplitResult(split, labels.numpy(), sentences, clean_logits.cpu().numpy(),
                         clean_text.cpu().numpy())
    mask_token = method.adapter.mask_token
    contexts = [make_context(sentence, name, index, descriptions=descriptions.get(name, []),
                             templates=templates, mask_token=mask_token,
                             class_names=all_classnames or classnames)
                for index, (sentence, name) in enumerate(zip(sentences, classnames, strict=True))]
    # Item ids name the class, not the split or method: every method sees the same noisy text.
    item_ids = [f"{dataset}/{name}" for name in classnames]
    for noise in noises:
        if noise.modality == "image":
            continue
        sentences_k, text_k, logits_k = [], [], []
        for draw in range(draws):
            noisy = apply(noise.perturbation, sentences, contexts, item_ids, seed,
                          noise.severity, draw)
            with method.adapter.autocast():
                noisy_text = mix_features(clean_text, method.class_features(noisy).float(),
                                          noise.alpha)
                conditional = method.conditional_logits(features, noisy, split, sentences,
                                                        noise.alpha)
                noisy_logits = (method.logits(features, noisy_text, split) if conditional is None
                                else conditional).float()
            sentences_k.append(noisy)
            text_k.append(noisy_text.cpu().numpy())
            logits_k.append(noisy_logits.cpu().numpy())
        result.noisy_sentences[noise.key] = sentences_k
        result.noisy_logits[noise.key] = np.stack(logits_k)
        result.noisy_text[noise.key] = np.stack(text_k)
    image_noises = [noise for noise in noises if noise.modality == "image"]
    if image_noises:
        if image_eval is None:
            raise ValueError("image perturbations need image_eval (anbench.image_eval)")
        _evaluate_images(method, split, features, clean_text, sentences, image_noises, seed,
                         image_eval, result)
    return result


def _evaluate_images(method: Method, split: str, features: dict[str, torch.Tensor],
                     clean_text: torch.Tensor, sentences: list[str], noises: list[EvalNoise],
                     seed: int, image_eval: ImageEval, result: SplitResult) -> None:
    """Each image condition, `image_eval.draws` times: the corrupted subsample's features
    (then `mix`), scored against the clean class text features. A perturbation that draws
    nothing (`stochastic = False`) is computed once and its draws repeat it."""
    from anbench.image_perturbation import apply_mix

    positions = torch.as_tensor(image_eval.positions, dtype=torch.long)
    clean = {key: value[positions.to(value.device)] for key, value in features.items()}
    result.image_positions = np.asarray(image_eval.positions, dtype=np.int64)
    for noise in noises:
        p, severity = noise.perturbation, noise.severity
        logits_k, shift_k = [], []
        for draw in range(image_eval.draws):
            if draw and not p.stochastic:
                logits_k.append(logits_k[0])
                shift_k.append(shift_k[0])
                continue
            noisy = (image_eval.encode(p, severity, draw)
                     if p.acts_on_pixels and severity != 0 else clean)
            noisy = apply_mix(p, noisy, seed, severity, image_eval.set_id, draw)
            with method.adapter.autocast():
                conditional = method.conditional_logits(noisy, sentences, split)
                logits = (method.logits(noisy, clean_text, split) if conditional is None
                          else conditional).float()
            logits_k.append(logits.cpu().numpy())
            main = "clean" if "clean" in clean else next(iter(clean))  # f^c: the image feature
            shift_k.append(metrics.image_feature_shift_per_image(clean[main], noisy[main]))
        result.image_logits[noise.key] = np.stack(logits_k)
        result.image_shift[noise.key] = np.stack(shift_k)


def result_rows(results: list[SplitResult], noises: list[EvalNoise], base: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """Long-table rows: acc per split and condition; ts, lpr, as per text condition; as, lpr,
    ifs per image condition (over its image subsample); hm of base and new accuracy per
    condition when both splits were evaluated. Perturbed metrics are means over noise draws,
    each with `<metric>_std`, its std over draws (an image condition with one draw: NaN, not
    known). `modality` is "none" for clean rows, else the perturbation's ("text", "image")."""
    rows: list[dict[str, Any]] = []
    nan = float("nan")

    def add(split: str, eval_noise: str, severity: float, alpha: float, metric: str,
            value: float, modality: str = "none") -> None:
        rows.append({**base, "split": split, "eval_noise": eval_noise, "severity": severity,
                     "alpha": alpha, "modality": modality, "metric": metric, "value": value})

    def spread(noise: EvalNoise, values: np.ndarray) -> float:
        return nan if noise.modality == "image" and len(values) < 2 else draw_std(values)

    for res in results:
        add(res.split, "clean", nan, nan, "acc", res.accuracy())
        for noise in noises:
            for metric in IMAGE_METRICS if noise.modality == "image" else TEXT_METRICS:
                values = res.draw_values(noise.key, metric)
                add(res.split, noise.name, noise.severity, noise.alpha, metric,
                    float(np.mean(values)), noise.modality)
                add(res.split, noise.name, noise.severity, noise.alpha, f"{metric}_std",
                    spread(noise, values), noise.modality)
    by_split = {res.split: res for res in results}
    if "base" in by_split and "new" in by_split:
        base_res, new_res = by_split["base"], by_split["new"]
        add("base-new", "clean", nan, nan, "hm",
            metrics.harmonic_mean(base_res.accuracy(), new_res.accuracy()))
        for noise in noises:
            per_draw = np.asarray([metrics.harmonic_mean(b, n) for b, n in zip(
                base_res.draw_values(noise.key, "acc"), new_res.draw_values(noise.key, "acc"),
                strict=True)])
            add("base-new", noise.name, noise.severity, noise.alpha, "hm",
                float(np.mean(per_draw)), noise.modality)
            add("base-new", noise.name, noise.severity, noise.alpha, "hm_std",
                spread(noise, per_draw), noise.modality)
    return rows


def result_arrays(results: list[SplitResult]) -> dict[str, np.ndarray]:
    """Everything needed to recompute the metrics without a model. Image conditions are kept
    apart from the text ones (their logits cover a subsample): `<split>/image_index` (the
    subsample's positions in the test set), `<split>/image_logits/<condition>` `[K, n, C]` and
    `<split>/image_ifs/<condition>` (per-image feature shift) `[K, n]`."""
    arrays: dict[str, np.ndarray] = {}
    for res in results:
        arrays[f"{res.split}/labels"] = res.labels
        arrays[f"{res.split}/logits/clean"] = res.clean_logits
        arrays[f"{res.split}/text/clean"] = res.clean_text
        for key in res.noisy_logits:
            arrays[f"{res.split}/logits/{key}"] = res.noisy_logits[key]
            arrays[f"{res.split}/text/{key}"] = res.noisy_text[key]
        if res.image_logits:
            arrays[f"{res.split}/image_index"] = np.asarray(res.image_positions)
        for key in res.image_logits:
            arrays[f"{res.split}/image_logits/{key}"] = res.image_logits[key]
            arrays[f"{res.split}/image_ifs/{key}"] = res.image_shift[key]
    return arrays
