"""The one place that touches open_clip internals.

`BackboneAdapter` runs an open_clip model block by block so that methods can

- splice learnable context vectors into the text input (CoOp / DAPT),
- insert deep prompt tokens after [SOS]/[CLS] at a chosen first layer and overwrite those slots at
  later layers (ANPrompt), in both encoders,
- insert shallow visual prompts after [CLS] (DAPT = deep prompts at layer 0, one layer long),
- read the prompt tokens' final outputs (NRVPP),
- run any range of blocks on given hidden states (so frozen prefixes can be computed once),
- skip the last vision block's patch outputs when only [CLS] and prompt tokens are read
  (`head_only`, exact where the tower pools its [CLS] token), and reuse the first prompted
  block's frozen-token query/key/value projections (`image_qkv`, `frozen_qkv`).

With no prompts it reproduces `model.encode_text` / `model.encode_image` exactly. It handles the
two text-tower layouts open_clip has: CLIP's causal tower pooled at a token position (EOT), either
flattened into `CLIP` or as `CustomTextCLIP.text` (`TextTransformer`), and an HF BERT-style tower
(`HFTextEncoder`) fed through `inputs_embeds`, with its padding mask and pooler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from anbench.backbones.base import LoadedBackbone

Prompts = Sequence[torch.Tensor]  # one tensor per injected layer: [K, width] or [B, K, width]


@dataclass
class TextState:
    """Hidden states of a text batch between blocks.

    `x` is [B, T, width]; `valid` marks real tokens (padding False; inserted prompts True);
    `pooled` marks the tokens the pooler reads for each sentence (prompts never): a one-hot row
    for causal towers (the EOT), the sentence's own non-padding tokens for mean-pooled HF towers.
    """

    x: torch.Tensor
    valid: torch.Tensor
    pooled: torch.Tensor
    n_prompts: int = 0


@dataclass
class ImageState:
    """Hidden states of an image batch between blocks: [B, 1 + K + patches, width]."""

    x: torch.Tensor
    n_prompts: int = 0


@dataclass
class ImageOutput:
    features: torch.Tensor  # [B, embed_dim], projected, not normalised (like encode_image)
    prompt_tokens: torch.Tensor | None  # [B, K, width] after the final norm, before projection


def _expand(prompt: torch.Tensor, batch: int) -> torch.Tensor:
    if prompt.dim() == 2:
        return prompt.unsqueeze(0).expand(batch, -1, -1)
    if prompt.dim() == 3 and prompt.shape[0] in (1, batch):
        return prompt.expand(batch, -1, -1)
    raise ValueError(f"prompt must be [K, width] or [B, K, width], got {tuple(prompt.shape)}")


def _plain_attention(block: nn.Module) -> nn.MultiheadAttention | None:
    """The attention of an open_clip ResidualAttentionBlock whose forward `_block_pieces` may
    re-run piece by piece (self-attention, packed in-projection, batch first), else None."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    if (type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv")
            or not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first
            or attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn):
        return None
    return attn


def _block_pieces(block: nn.Module, x: torch.Tensor, keep: int | None = None,
                  frozen_qkv: torch.Tensor | None = None, n_new: int = 0) -> torch.Tensor:
    """`block(x)[:, :keep]` (all rows when keep is None) without computing what is not needed.

    `keep`: queries, the output projection and the MLP run on the first `keep` tokens only;
    keys and values on all. `frozen_qkv`: the in-projections of `ln_1` of x without its `n_new`
    tokens after [CLS], computed earlier (they depend on no prompt); only the new tokens' are
    computed here. Blocks that are not plain open_clip ones run whole and are sliced.
    """
    attn = _plain_attention(block)
    if attn is None:
        out = block(x)
        return out if keep is None else out[:, :keep]
    width = x.shape[-1]
    if frozen_qkv is not None:
        new = F.linear(block.ln_1(x[:, 1:1 + n_new]), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = torch.cat([frozen_qkv[:, :1], new.to(frozen_qkv.dtype), frozen_qkv[:, 1:]],
                            dim=1).chunk(3, dim=-1)
        q = q if keep is None else q[:, :keep]
    elif keep is None:
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    else:
        y = block.ln_1(x)
        w_q, w_kv = attn.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = (attn.in_proj_bias.split([width, 2 * width])
                     if attn.in_proj_bias is not None else (None, None))
        q = F.linear(y[:, :keep], w_q, b_q)
        k, v = F.linear(y, w_kv, b_kv).chunk(2, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2)
    out = F.linear(out.flatten(2), attn.out_proj.weight, attn.out_proj.bias)
    h = (x if keep is None else x[:, :keep]) + block.ls_1(out)
    return h + block.ls_2(block.mlp(block.ln_2(h)))


def _causal_mask(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Same construction as open_clip's build_causal_mask, so results match bit for bit.
    mask = torch.empty(size, size, device=device, dtype=dtype)
    mask.fill_(float("-inf"))
    mask.triu_(1)
    return mask


class BackboneAdapter(nn.Module):
    """Prompt-aware, block-by-block access to a frozen open_clip model."""

    def __init__(self, backbone: LoadedBackbone):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self._init_text()
        self._init_vision()

    # ------------------------------------------------------------------ layout discovery
    def _init_text(self) -> None:
        model = self.model
        text = getattr(model, "text", None)
        if text is not None and text.__class__.__name__ == "HFTextEncoder":
            from open_clip.hf_configs import arch_dict

            self.text_layout = "hf"
            self._hf = text
            names = arch_dict[text.config.model_type]["config_names"]
            hf_model = text.transformer
            # BERT's entry omits these names; BERT, RoBERTa and MiniLM all use these defaults.
            self._hf_embeddings = getattr(hf_model, names.get("token_embeddings_attr",
                                                              "embeddings"))
            encoder = getattr(hf_model, "encoder", hf_model)
            self._text_blocks = getattr(encoder, names.get("layer_attr", "layer"))
            self.text_width = getattr(text.config, names["width"])
            self.pad_token_id = text.config.pad_token_id
            self.text_pool = text.pooler.__class__.__name__
            if self.text_pool not in ("MeanPooler", "ClsPooler", "ClsLastHiddenStatePooler"):
                raise NotImplementedError(f"HF text pooler {self.text_pool} is not supported")
            return
        # Causal CLIP text tower: flattened into CLIP, or CustomTextCLIP.text (TextTransformer).
        tower = model if hasattr(model, "token_embedding") else text
        if tower is None or not hasattr(tower, "token_embedding"):
            raise NotImplementedError(f"unsupported text tower in {model.__class__.__name__}")
        if getattr(tower, "cls_emb", None) is not None:
            raise NotImplementedError("text towers with an appended class token are not supported")
        self.text_layout = "causal"
        self._tower = tower
        self._text_blocks = tower.transformer.resblocks
        self.text_width = tower.transformer.width
        self.text_pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        self.text_eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        if getattr(tower, "use_pad_mask", False):
            raise NotImplementedError("causal text towers with a padding mask are not supported")

    def _init_vision(self) -> None:
        visual = self.model.visual
        if visual.__class__.__name__ != "VisionTransformer":
            raise NotImplementedError(f"unsupported image tower {visual.__class__.__name__}")
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("vision towers with attentional pooling are not supported")
        self.visual = visual
        self._vision_blocks = visual.transformer.resblocks
        self.vision_width = visual.transformer.width

    # ------------------------------------------------------------------ properties
    @property
    def text_layers(self) -> int:
        return len(self._text_blocks)

    @property
    def vision_layers(self) -> int:
        return len(self._vision_blocks)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def embed_dim(self) -> int:
        proj = self.visual.proj
        return self.vision_width if proj is None else proj.shape[1]

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def visual_projection(self) -> torch.Tensor | None:
        return self.visual.proj

    @property
    def mask_token(self) -> str:
        """The tokenizer's own mask token where it has one; CLIP's BPE has none."""
        from anbench.perturbation import mask_token_for  # one rule, shared with the preview

        return mask_token_for(self.tokenizer)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, full precision elsewhere."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(self, mode: bool = True) -> BackboneAdapter:
        # The backbone is frozen and always in eval mode (no dropout), whatever methods do.
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------ tokens
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def context_tokens(self, n_ctx: int, texts: list[str], placeholder: str = "X") -> torch.Tensor:
        """Token ids of `"X X ... X {text}"`; the X slots are replaced by learnable context."""
        prefix = " ".join([placeholder] * n_ctx)
        return self.tokenize([f"{prefix} {text}" for text in texts])

    @torch.no_grad()
    def word_embeddings(self, text: str) -> torch.Tensor:
        """Input embeddings [n, width] of `text`'s own tokens (no [SOS]/[CLS], [EOT]/[SEP] or
        padding), in the space `text_input` splices context into: learned context initialised
        from words (CoCoOp's "a photo of a") starts as exactly those words."""
        tokens = self.tokenize([text])
        if self.text_layout == "hf":
            ids = tokens[0][tokens[0] != self.pad_token_id][1:-1]
            table = self._hf_embeddings.word_embeddings
        else:
            end = (int(self._pool_index(tokens)[0]) if self.text_pool in ("argmax", "eos")
                   else int((tokens[0] != 0).sum()) - 1)
            ids = tokens[0][1:end]
            table = self._tower.token_embedding
        return table(ids).detach().float()

    def trim(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop trailing token columns that no sentence's output depends on.

        Causal towers never let the pooled (EOT) token see later positions, and HF towers mask
        padding out of attention and pooling, so cutting after the last pooled / real token
        leaves every feature unchanged while running ~15 instead of 77 positions.
        """
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            return tokens
        if self.text_layout == "hf":
            valid = tokens != self.pad_token_id
            positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
            keep = int((valid.long() * positions).max())
        else:
            if self.text_pool == "last":  # pooled at the last column: nothing can be cut
                return tokens
            keep = int(self._pool_index(tokens).max()) + 1
        return tokens[:, :max(keep, 1)]

    # ------------------------------------------------------------------ text
    def text_input(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> TextState:
        """Embeddings of `tokens` (the input of block 0), with `context` ([n_ctx, width] shared or
        [B, n_ctx, width]) written over positions 1..n_ctx, right after [SOS]/[CLS]."""
        tokens = tokens.to(self.device)
        batch, length = tokens.shape
        if self.text_layout == "hf":
            valid = tokens != self.pad_token_id
            embeds = self._hf_embeddings.word_embeddings(tokens)
            if context is not None:
                embeds = self._splice(embeds, context)
            x = self._hf_embeddings(inputs_embeds=embeds)
            if self.text_pool == "MeanPooler":
                pooled = valid.clone()
            else:
                pooled = torch.zeros_like(valid)
                pooled[:, 0] = True
            return TextState(x, valid, pooled)
        tower = self._tower
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast)
        if context is not None:
            x = self._splice(x, context.to(cast))
        x = x + tower.positional_embedding[:length].to(cast)
        valid = torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        index = self._pool_index(tokens)
        pooled = F.one_hot(index, length).bool()
        return TextState(x, valid, pooled)

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text_pool == "argmax":
            return tokens.argmax(dim=-1)
        if self.text_pool == "eos":
            return (tokens == self.text_eos_id).int().argmax(dim=-1)
        if self.text_pool == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        if self.text_pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
        raise NotImplementedError(f"text pool type {self.text_pool} is not supported")

    @staticmethod
    def _splice(embeds: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = _expand(context.to(embeds.dtype), embeds.shape[0])
        n_ctx = context.shape[1]
        return torch.cat([embeds[:, :1], context, embeds[:, 1 + n_ctx:]], dim=1)

    def _text_attention(self, state: TextState) -> torch.Tensor | None:
        length = state.x.shape[1]
        if self.text_layout == "hf":
            from transformers.masking_utils import create_bidirectional_mask

            return create_bidirectional_mask(
                config=self._hf.transformer.config, inputs_embeds=state.x,
                attention_mask=state.valid.long())
        # Causal: padding after EOT is never seen by the pooled token, as in open_clip.
        return _causal_mask(length, state.x.device, state.x.dtype)

    def text_blocks(self, state: TextState, start: int = 0, end: int | None = None,
                    prompts: Prompts | None = None, first_layer: int = 0) -> TextState:
        """Run text blocks `start..end-1`; `prompts[j]` enters at block `first_layer + j`
        (inserted after [SOS]/[CLS] at the first, overwriting those slots later)."""
        end = self.text_layers if end is None else end
        mask = self._text_attention(state) if start < end else None
        for layer in range(start, end):
            prompt = self._prompt_at(prompts, first_layer, layer)
            if prompt is not None:
                inserted = state.n_prompts == 0
                state = self._with_text_prompt(state, prompt)
                if inserted:
                    mask = self._text_attention(state)
            block = self._text_blocks[layer]
            if self.text_layout == "hf":
                out = block(state.x, mask)
                x = out[0] if isinstance(out, tuple) else out
            else:
                x = block(state.x, attn_mask=mask)
            state = replace(state, x=x)
        return state

    @staticmethod
    def _prompt_at(prompts: Prompts | None, first_layer: int, layer: int) -> torch.Tensor | None:
        if not prompts or layer < first_layer or layer - first_layer >= len(prompts):
            return None
        return prompts[layer - first_layer]

    def _with_text_prompt(self, state: TextState, prompt: torch.Tensor) -> TextState:
        batch = state.x.shape[0]
        prompt = _expand(prompt.to(state.x.dtype), batch)
        k = prompt.shape[1]
        if state.n_prompts == 0:
            x = torch.cat([state.x[:, :1], prompt, state.x[:, 1:]], dim=1)
            ones = torch.ones(batch, k, dtype=torch.bool, device=state.x.device)
            valid = torch.cat([state.valid[:, :1], ones, state.valid[:, 1:]], dim=1)
            pooled = torch.cat([state.pooled[:, :1], ~ones, state.pooled[:, 1:]], dim=1)
            return TextState(x, valid, pooled, k)
        if k != state.n_prompts:
            raise ValueError(f"later-layer prompts must have {state.n_prompts} tokens, got {k}")
        x = torch.cat([state.x[:, :1], prompt, state.x[:, 1 + k:]], dim=1)
        return replace(state, x=x)

    def text_head(self, state: TextState) -> torch.Tensor:
        """Final norm, pooling and projection: [B, embed_dim], not normalised."""
        if self.text_layout == "hf":
            x = state.x
            if self.text_pool == "MeanPooler":
                weights = state.pooled.to(x.dtype).unsqueeze(-1)
                pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
            else:
                pooled = x[:, 0]
            return self._hf.proj(pooled)
        tower = self._tower
        x = tower.ln_final(state.x)
        pooled = x[state.pooled]
        projection = tower.text_projection
        if projection is None:
            return pooled
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection

    def encode_text(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                    prompts: Prompts | None = None, first_layer: int = 0,
                    normalize: bool = False) -> torch.Tensor:
        state = self.text_input(tokens, context)
        state = self.text_blocks(state, prompts=prompts, first_layer=first_layer)
        features = self.text_head(state)
        return F.normalize(features, dim=-1) if normalize else features

    # ------------------------------------------------------------------ images
    def image_input(self, images: torch.Tensor) -> ImageState:
        """Patch + [CLS] + positional embeddings and the pre-norm: the input of block 0."""
        return ImageState(self.visual._embeds(images.to(self.device)))

    def image_blocks(self, state: ImageState, start: int = 0, end: int | None = None,
                     prompts: Prompts | None = None, first_layer: int = 0,
                     head_only: bool = False,
                     frozen_qkv: torch.Tensor | None = None) -> ImageState:
        """Run vision blocks `start..end-1` (same features whichever options are used).

        `head_only`: the tower's last block computes only the tokens `image_head` reads ([CLS]
        and the prompt tokens; the state keeps just those) where the tower pools [CLS] (~1/6 of
        that block). `frozen_qkv`: `image_qkv(state, start)`, precomputed; prompts must enter
        at block `start`, which then projects only the prompt tokens (~40% less work there).
        """
        end = self.vision_layers if end is None else end
        for layer in range(start, end):
            prompt = self._prompt_at(prompts, first_layer, layer)
            inserted = prompt is not None and state.n_prompts == 0
            if prompt is not None:
                state = self._with_image_prompt(state, prompt)
            qkv = frozen_qkv if layer == start else None
            if qkv is not None and not inserted:
                raise ValueError("frozen_qkv needs prompts inserted at block `start`")
            last = layer == self.vision_layers - 1
            keep = (1 + state.n_prompts if head_only and last and self.visual.pool_type == "tok"
                    else None)
            block = self._vision_blocks[layer]
            if keep is None and qkv is None:
                x = block(state.x)
            else:
                x = _block_pieces(block, state.x, keep, qkv, state.n_prompts)
            state = replace(state, x=x)
        return state

    def image_qkv(self, state: ImageState, layer: int) -> torch.Tensor | None:
        """Query/key/value in-projections of block `layer` for the un-prompted `state` (the
        input of that block): pass them as `frozen_qkv` when prompts first enter there. None
        where the block is not a plain open_clip one (callers then run it whole)."""
        block = self._vision_blocks[layer]
        attn = _plain_attention(block)
        if attn is None or state.n_prompts:
            return None
        return F.linear(block.ln_1(state.x), attn.in_proj_weight, attn.in_proj_bias)

    def _with_image_prompt(self, state: ImageState, prompt: torch.Tensor) -> ImageState:
        prompt = _expand(prompt.to(state.x.dtype), state.x.shape[0])
        k = prompt.shape[1]
        if state.n_prompts == 0:
            return ImageState(torch.cat([state.x[:, :1], prompt, state.x[:, 1:]], dim=1), k)
        if k != state.n_prompts:
            raise ValueError(f"later-layer prompts must have {state.n_prompts} tokens, got {k}")
        return ImageState(torch.cat([state.x[:, :1], prompt, state.x[:, 1 + k:]], dim=1), k)

    def image_head(self, state: ImageState) -> ImageOutput:
        visual = self.visual
        k = state.n_prompts
        prompt_tokens = visual.ln_post(state.x[:, 1:1 + k]) if k else None
        x = torch.cat([state.x[:, :1], state.x[:, 1 + k:]], dim=1)  # what open_clip would see
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageOutput(pooled, prompt_tokens)

    def encode_image(self, images: torch.Tensor, prompts: Prompts | None = None,
                     first_layer: int = 0) -> ImageOutput:
        state = self.image_input(images)
        state = self.image_blocks(state, prompts=prompts, first_layer=first_layer)
        return self.image_head(state)

    # ------------------------------------------------------------------ convenience
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)
