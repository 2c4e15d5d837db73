"""Token parts: k-mer token embeddings that share what their sub-k-mers share, while training.

A k-mer token's embedding is one row of a 4^k table, so two tokens that differ by one base (a synonymous third
codon position) start unrelated and learn apart, each from its own occurrences. With `TrainConfig.token_parts`
(say (1, 3)) training adds to each token's row the sum of learned vectors of its parts: each base at each of the
k positions (part size 1) and each 3-mer at each of the k - 2 offsets (size 3; read in the COI-5P phase two of
them are the codons). Tokens that share parts then move together, and the table learns sub-k-mer structure from
every token's occurrences:

    token_embedding.weight [V, D] = own [V, D] + parts [V, P] @ basis [P, D]        (P: the number of parts)

`parts` is a fixed 0/1 matrix (no part for the special tokens); `basis` starts at zero, so training starts from the
base model's function. The sum is a torch parametrization of the token table: a saved model (checkpoint or
final) holds the summed table as an ordinary `token_embedding.weight` (BarcodeMAE.plain_state_dict), so models
trained with parts load, embed and export as any other; a checkpoint keeps `basis` beside the optimizer state,
and resuming recovers `own` as the saved table less parts @ basis.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UsageError
from ..model.tokenizer import NUM_SPECIAL, TokenizerConfig

CHECKPOINT_KEY = "token_parts.basis"   # the basis's name among a checkpoint's extra tensors


def part_matrix(k: int, sizes: tuple[int, ...]) -> np.ndarray:
    """float32 [NUM_SPECIAL + 4^k, P]: 1 where the token (row) holds the part (column). Columns: for each size s in
    `sizes`, each offset 0..k-s, each of the 4^s s-mers (base codes A=0, C=1, G=2, T=3, as the tokenizer counts)."""
    if not sizes or any(not 1 <= s < k for s in sizes) or len(set(sizes)) != len(sizes):
        raise UsageError(f"token parts must be distinct sizes between 1 and {k - 1} (the k-mer's k is {k}), "
                         f"got {list(sizes)}")
    index = np.arange(4 ** k)
    bases = np.stack([(index // 4 ** (k - 1 - q)) % 4 for q in range(k)], axis=1)      # [4^k, k]
    columns = []
    for size in sizes:
        weights = 4 ** np.arange(size - 1, -1, -1)
        for offset in range(k - size + 1):
            code = bases[:, offset:offset + size] @ weights                               # [4^k]
            block = np.zeros((4 ** k, 4 ** size), dtype=np.float32)
            block[index, code] = 1.0
            columns.append(block)
    out = np.zeros((NUM_SPECIAL + 4 ** k, sum(c.shape[1] for c in columns)), dtype=np.float32)
    out[NUM_SPECIAL:] = np.concatenate(columns, axis=1)
    return out


class TokenParts(nn.Module):
    """The parametrization of the token table: own + parts @ basis."""

    def __init__(self, parts: np.ndarray, width: int):
        super().__init__()
        self.register_buffer("parts", torch.from_numpy(parts), persistent=False)   # [V, P]
        self.basis = nn.Parameter(torch.zeros(parts.shape[1], width))               # [P, D]

    def forward(self, own: torch.Tensor) -> torch.Tensor:
        return own + (self.parts @ self.basis).to(own.dtype)

    def shared(self) -> torch.Tensor:
        """[V, D]: what the parts add to each token's own row."""
        return (self.parts @ self.basis).detach()


def attach_token_parts(model: nn.Module, tokenizer_config: TokenizerConfig, sizes) -> TokenParts:
    """Parametrize `model.token_embedding.weight` with TokenParts of `sizes`; returns the parametrization (its
    `basis` is then a parameter of the model, for the optimizer)."""
    embedding = model.token_embedding
    if parametrize.is_parametrized(embedding):
        raise UsageError("the token table already has parts")
    parts = part_matrix(tokenizer_config.k, tuple(int(s) for s in sizes))
    if parts.shape[0] != embedding.weight.shape[0]:
        raise UsageError(f"token parts for a vocabulary of {parts.shape[0]}, but the model's has "
                         f"{embedding.weight.shape[0]} tokens")
    module = TokenParts(parts, embedding.weight.shape[1]).to(embedding.weight.device)
    parametrize.register_parametrization(embedding, "weight", module)
    return module


def token_parts_of(model: nn.Module) -> TokenParts | None:
    embedding = model.token_embedding
    if not parametrize.is_parametrized(embedding, "weight"):
        return None
    return next(m for m in embedding.parametrizations.weight if isinstance(m, TokenParts))


def load_summed(model: nn.Module, state: dict[str, torch.Tensor], basis: torch.Tensor) -> None:
    """Load a saved (summed) state into a model with token parts: `basis` as saved beside it, the own rows as the
    saved table less parts @ basis."""
    module = token_parts_of(model)
    if module is None:
        raise UsageError("the model has no token parts to load")
    state = dict(state)
    summed = state.pop("token_embedding.weight")
    with torch.no_grad():
        module.basis.copy_(basis.to(module.basis))
        own = summed.to(module.basis) - module.shared()
        model.token_embedding.parametrizations.weight.original.copy_(own)
    missing = [k for k in model.state_dict() if not k.startswith("token_embedding.parametrizations.")
               and k not in state]
    unexpected = [k for k in state if k not in model.state_dict()]
    if missing or unexpected:
        raise RuntimeError(f"state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=False)
