"""BarcodeMAE: a masked autoencoder over non-overlapping k-mer tokens (arXiv 2502.18405).

Pretraining hides `mask_ratio` of each barcode's real tokens. The encoder sees ONLY the visible tokens (at their
original positions; no [MASK] token ever enters it). The decoder gets the encoder output with a learned mask token
put back at every hidden position and predicts the hidden k-mers; the loss is cross-entropy over hidden real
tokens only. After pretraining only the encoder is needed: a barcode's embedding is the mean of the encoder's
last-layer states over its real (non-pad) tokens, the whole sequence unmasked.

Shapes: B batch, L tokens (max_tokens, 110 for 660 nt and k = 6), V visible slots, D widths.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .config import PRESETS, BarcodeMAEConfig, preset  # noqa: F401 (re-exported)


class Block(nn.Module):
    """Pre-norm transformer block; attention through scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # x [B, L, D]; attn_mask [B, 1, 1, L] bool, True where the key is a real token (None: all real)
        B, L, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, L, D/H]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, L, D)))
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))
        return x


def key_mask(valid: torch.Tensor) -> torch.Tensor | None:
    """[B, L] bool (True = real token) -> SDPA boolean mask [B, 1, 1, L] broadcast over heads and queries."""
    return valid[:, None, None, :]


def random_masking(lengths: torch.Tensor, num_tokens: int, mask_ratio: float,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Per-sequence MAE masking by argsort of uniform noise over the real tokens.

    lengths [B] real tokens per row (pads sit at positions >= length); noise [B, L] uniform in [0, 1), drawn
    here when not given (passing it keeps the step reproducible and free of RNG calls under torch.compile).
    Returns ids_shuffle [B, L] (real tokens first, in random order, pads last), ids_restore [B, L] (its inverse,
    the rank of each position) and n_visible [B] = round((1 - ratio) * length), at least 1 for a non-empty row.
    The visible tokens of row b are ids_shuffle[b, :n_visible[b]].
    """
    B, L = lengths.shape[0], num_tokens
    device = lengths.device
    if noise is None:
        noise = torch.rand(B, L, device=device, generator=generator)
    real = torch.arange(L, device=device)[None, :] < lengths[:, None]
    noise = torch.where(real, noise, noise + 2.0)  # pads sort after every real token
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    n_visible = torch.floor((1.0 - mask_ratio) * lengths.to(torch.float64) + 0.5).to(torch.long)
    n_visible = torch.minimum(torch.clamp(n_visible, min=1), lengths)
    return ids_shuffle, ids_restore, n_visible


class BarcodeMAE(nn.Module):
    def __init__(self, config: BarcodeMAEConfig, include_decoder: bool = True):
        super().__init__()
        self.config = config
        self.include_decoder = include_decoder
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.encoder_width)
        self.encoder_position = nn.Parameter(torch.zeros(1, c.max_tokens, c.encoder_width))
        self.encoder_blocks = nn.ModuleList(
            Block(c.encoder_width, c.encoder_heads, c.mlp_ratio, c.dropout) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.encoder_width)
        if c.embedding_width:
            self.embedding_projection = nn.Linear(c.encoder_width, c.embedding_width)
        if include_decoder:
            self.decoder_embed = nn.Linear(c.encoder_width, c.decoder_width)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
            self.decoder_position = nn.Parameter(torch.zeros(1, c.max_tokens, c.decoder_width))
            self.decoder_blocks = nn.ModuleList(
                Block(c.decoder_width, c.decoder_heads, c.mlp_ratio, c.dropout) for _ in range(c.decoder_layers))
            self.decoder_norm = nn.LayerNorm(c.decoder_width)
            self.decoder_head = nn.Linear(c.decoder_width, c.vocab_size)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.encoder_position, std=0.02)
        if include_decoder:
            nn.init.trunc_normal_(self.decoder_position, std=0.02)
            nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t for name, t in self.state_dict().items() if not name.startswith("decoder_")
                and name != "mask_token"}

    # ------------------------------------------------------------------ pretraining
    def forward_encoder(self, ids: torch.Tensor, lengths: torch.Tensor, mask_ratio: float,
                        noise: torch.Tensor | None = None):
        # ids [B, L] token ids (PAD beyond each length), lengths [B], noise [B, L] or None
        B, L = ids.shape
        ids_shuffle, ids_restore, n_visible = random_masking(lengths, L, mask_ratio, noise)
        capacity = min(self.config.visible_capacity(mask_ratio), L)  # a batch may be narrower than max_tokens
        x = self.token_embedding(ids) + self.encoder_position[:, :L]  # [B, L, D]
        keep = ids_shuffle[:, :capacity]  # [B, V]
        x = torch.gather(x, 1, keep[:, :, None].expand(-1, -1, x.shape[-1]))  # [B, V, D] visible only
        slot_valid = torch.arange(capacity, device=ids.device)[None, :] < n_visible[:, None]  # [B, V]
        attn_mask = key_mask(slot_valid)
        for block in self.encoder_blocks:
            x = block(x, attn_mask)
        latent = self.encoder_norm(x)  # [B, V, D]
        return latent, slot_valid, ids_restore, n_visible

    def forward_decoder(self, latent: torch.Tensor, slot_valid: torch.Tensor, ids_restore: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
        B, V, _ = latent.shape
        L = ids_restore.shape[1]
        y = self.decoder_embed(latent)  # [B, V, Dd]
        mask_tokens = self.mask_token.to(y.dtype)
        y = torch.where(slot_valid[:, :, None], y, mask_tokens)  # empty visible slots hold hidden tokens
        y = torch.cat([y, mask_tokens.expand(B, L - V, -1)], dim=1)  # [B, L, Dd] in shuffled order
        y = torch.gather(y, 1, ids_restore[:, :, None].expand(-1, -1, y.shape[-1]))  # original order
        y = y + self.decoder_position[:, :L]
        real = torch.arange(L, device=y.device)[None, :] < lengths[:, None]
        attn_mask = key_mask(real)
        for block in self.decoder_blocks:
            y = block(y, attn_mask)
        return self.decoder_head(self.decoder_norm(y))  # [B, L, vocab]

    @staticmethod
    def forward_loss(logits: torch.Tensor, ids: torch.Tensor, hidden: torch.Tensor):
        """Cross-entropy and accuracy over hidden real tokens only. hidden [B, L] bool."""
        targets = torch.where(hidden, ids, torch.full_like(ids, -100))
        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                   reduction="sum")
        count = hidden.sum()
        loss = loss_sum / count.clamp(min=1)
        correct = ((logits.argmax(-1) == ids) & hidden).sum()
        return loss, correct, count

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None):
        """MAE step. Returns (loss, correct hidden predictions, hidden token count)."""
        if not self.include_decoder:
            raise ModelError("this model holds only the encoder (embedding weights); it cannot be pretrained")
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, slot_valid, ids_restore, n_visible = self.forward_encoder(ids, lengths, ratio, noise)
        logits = self.forward_decoder(latent, slot_valid, ids_restore, lengths)
        L = ids.shape[1]
        real = torch.arange(L, device=ids.device)[None, :] < lengths[:, None]
        hidden = real & (ids_restore >= n_visible[:, None])
        return self.forward_loss(logits, ids, hidden)

    # ------------------------------------------------------------------ embeddings
    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Last-layer encoder states of whole, unmasked sequences: [B, L, D]."""
        B, L = ids.shape
        x = self.token_embedding(ids) + self.encoder_position[:, :L]
        real = torch.arange(L, device=ids.device)[None, :] < lengths[:, None]
        attn_mask = None if bool((lengths == L).all()) else key_mask(real)
        for block in self.encoder_blocks:
            x = block(x, attn_mask)
        return self.encoder_norm(x)

    def embed(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last layer over each barcode's real tokens (mapped to embedding_width where the config
        has one): [B, embedding_dim] float32."""
        states = self.encode(ids, lengths).float()
        L = ids.shape[1]
        real = (torch.arange(L, device=ids.device)[None, :] < lengths[:, None]).to(states.dtype)
        pooled = (states * real[:, :, None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1.0)  # [B, width]
        if self.config.embedding_width:   # linear: mapping the pooled state = pooling mapped states, at 1/L the work
            pooled = self.embedding_projection(pooled).float()   # [B, embedding_width]
        return pooled


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def training_flops_per_barcode(config: BarcodeMAEConfig, mask_ratio: float | None = None) -> float:
    """Matmul FLOPs of one MAE training step per barcode (forward + backward = 3x forward)."""
    c = config
    visible = c.visible_capacity(mask_ratio)

    def stack(width, layers, tokens):
        per_token = layers * (2 * (4 * width * width + 2 * width * int(width * c.mlp_ratio)))
        attention = layers * 2 * 2 * tokens * tokens * width
        return per_token * tokens + attention

    forward = (stack(c.encoder_width, c.encoder_layers, visible)
               + stack(c.decoder_width, c.decoder_layers, c.max_tokens)
               + 2 * visible * c.encoder_width * c.decoder_width
               + 2 * c.max_tokens * c.decoder_width * c.vocab_size)
    return 3.0 * forward


def embedding_flops_per_barcode(config: BarcodeMAEConfig, tokens: int | None = None) -> float:
    c = config
    L = tokens or c.max_tokens
    hidden = int(c.encoder_width * c.mlp_ratio)
    per_token = c.encoder_layers * 2 * (4 * c.encoder_width ** 2 + 2 * c.encoder_width * hidden)
    attention = c.encoder_layers * 4 * L * L * c.encoder_width
    return per_token * L + attention + 2 * c.encoder_width * c.embedding_width   # the last: the embedding map
