"""Tiny open_clip models with random weights: a causal CLIP and a CLIP with a BERT-style HF tower.

They are real open_clip classes (`CLIP`, `CustomTextCLIP` + `HFTextEncoder`), only small, so tests
exercise exactly the code paths real checkpoints use.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anbench.backbones.base import LoadedBackbone, freeze, hash_state_dict

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "x",
    "cat",
    "dog",
    "tabby",
    "with",
    "dark",
    "stripes",
    "small",
    "large",
    "bird",
    "car",
    "plane",
    "red",
    "blue",
    "green",
    "shirt",
    "shoe",
    "bag",
    "digit",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
]


def _vision_cfg():
    from open_clip.model import CLIPVisionCfg

    return CLIPVisionCfg(image_size=16, patch_size=4, width=32, layers=3, head_width=8)


def _identity_pre(image):
    return image


def tiny_clip(seed: int = 0) -> LoadedBackbone:
    import open_clip
    from open_clip.model import CLIPTextCfg

    torch.manual_seed(seed)
    text_cfg = CLIPTextCfg(context_length=20, vocab_size=49408, width=32, heads=4, layers=3)
    model = freeze(open_clip.CLIP(embed_dim=24, vision_cfg=_vision_cfg(), text_cfg=text_cfg))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=20)
    return LoadedBackbone(
        "tiny-clip",
        model,
        tokenizer,
        _identity_pre,
        _identity_pre,
        hash_state_dict(model),
        "tiny causal CLIP (random weights)",
    )


def write_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A 3-layer BERT with its WordPiece vocabulary, saved like a hub checkpoint."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    return directory


def tiny_hf_clip(directory: Path, seed: int = 0) -> LoadedBackbone:
    import open_clip
    from open_clip.model import CLIPTextCfg

    write_tiny_bert(directory, seed)
    torch.manual_seed(seed)
    text_cfg = CLIPTextCfg(
        context_length=20,
        hf_model_name=str(directory),
        hf_model_pretrained=True,
        hf_pooler_type="mean_pooler",
        hf_proj_type="linear",
    )
    model = freeze(
        open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=_vision_cfg(), text_cfg=text_cfg)
    )
    tokenizer = open_clip.tokenizer.HFTokenizer(str(directory), context_length=20)
    return LoadedBackbone(
        "tiny-hf",
        model,
        tokenizer,
        _identity_pre,
        _identity_pre,
        hash_state_dict(model),
        "tiny BERT-style CLIP (random weights)",
    )
