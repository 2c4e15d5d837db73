"""Model shapes: the BarcodeMAE settings a checkpoint carries, and the named presets.

Apart from the network (model.py) so that reading a model card, naming a model and running an exported encoder
(onnx_encoder.py) need no PyTorch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ModelError
from .tokenizer import NUM_SPECIAL


INTEGER_FIELDS = ("k", "max_tokens", "encoder_layers", "encoder_heads", "encoder_width", "decoder_layers",
                  "decoder_heads", "decoder_width", "embedding_width")
REAL_FIELDS = ("mlp_ratio", "mask_ratio", "dropout")
# Bounds far above any useful model (base: 6 layers of 768), low enough that no setting alone asks for terabytes.
MAX_LAYERS, MAX_WIDTH, MAX_TOKENS, MAX_MLP_RATIO = 256, 16384, 65536, 64.0
INTEGER_RANGES = {"k": (1, 8), "max_tokens": (1, MAX_TOKENS), "encoder_layers": (1, MAX_LAYERS),
                  "decoder_layers": (0, MAX_LAYERS), "encoder_heads": (1, MAX_WIDTH), "decoder_heads": (1, MAX_WIDTH),
                  "encoder_width": (1, MAX_WIDTH), "decoder_width": (1, MAX_WIDTH), "embedding_width": (0, MAX_WIDTH)}


def _show(value) -> str:
    """A short one-line repr of an untrusted value for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class BarcodeMAEConfig:
    k: int = 6
    max_tokens: int = 110
    encoder_layers: int = 6
    encoder_heads: int = 6
    encoder_width: int = 768
    decoder_layers: int = 6
    decoder_heads: int = 6
    decoder_width: int = 768
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.5
    dropout: float = 0.0
    embedding_width: int = 0   # 0: the embedding is the pooled encoder state; else a linear map of it to this width

    def __post_init__(self):
        """Every field checked before anything is built from it: the settings may come from an untrusted model
        card, so types, ranges and finiteness are checked here, and a crafted card cannot ask for a huge
        network (the loader also checks `parameter_count` against the weight file)."""
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ModelError(f"{name} must be an integer, got {_show(value)}")
        for name in REAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ModelError(f"{name} must be a finite number, got {_show(value)}")
        for name, (low, high) in INTEGER_RANGES.items():
            if not low <= getattr(self, name) <= high:
                raise ModelError(f"{name} must be between {low} and {high}, got {getattr(self, name)}")
        if self.encoder_width % self.encoder_heads or self.decoder_width % self.decoder_heads:
            raise ModelError("encoder/decoder width must be divisible by its number of heads")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ModelError(f"mask_ratio must be strictly between 0 and 1, got {self.mask_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout must be at least 0 and below 1, got {self.dropout}")
        if not 0.0 < self.mlp_ratio <= MAX_MLP_RATIO or min(self.encoder_width, self.decoder_width) * \
                self.mlp_ratio < 1:
            raise ModelError(f"mlp_ratio must be above 0 (at least one hidden unit) and at most {MAX_MLP_RATIO}, "
                             f"got {self.mlp_ratio}")

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + 4 ** self.k

    @property
    def embedding_dim(self) -> int:
        return self.embedding_width or self.encoder_width

    def visible_capacity(self, mask_ratio: float | None = None) -> int:
        """Encoder slots needed for the longest barcode: round((1 - ratio) * max_tokens), at least 1."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        return max(1, math.floor((1.0 - ratio) * self.max_tokens + 0.5))

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.embedding_width:   # cards of models without the projection stay readable by older versions
            del data["embedding_width"]
        return data

    def parameter_count(self, include_decoder: bool = True) -> int:
        """Values in the network's state dict (BarcodeMAE(self, include_decoder)), computed without building it:
        what a weight file of these settings must hold."""
        def block(width: int) -> int:
            hidden = int(width * self.mlp_ratio)
            return 4 * width + (width * 3 * width + 3 * width) + (width * width + width) \
                + (width * hidden + hidden) + (hidden * width + width)

        e, d = self.encoder_width, self.decoder_width
        count = self.vocab_size * e + self.max_tokens * e + self.encoder_layers * block(e) + 2 * e
        if self.embedding_width:
            count += e * self.embedding_width + self.embedding_width
        if include_decoder:
            count += (e * d + d) + d + self.max_tokens * d + self.decoder_layers * block(d) + 2 * d \
                + (d * self.vocab_size + self.vocab_size)
        return count

    @classmethod
    def from_dict(cls, data: dict) -> BarcodeMAEConfig:
        if not isinstance(data, dict):
            raise ModelError(f"model settings must be a JSON object, got {_show(data)}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)


PRESETS: dict[str, BarcodeMAEConfig] = {
    # The paper's shape.
    "base": BarcodeMAEConfig(),
    # A mid-size encoder for CPU users who want more than `fast`.
    "small": BarcodeMAEConfig(encoder_layers=4, encoder_heads=6, encoder_width=384,
                              decoder_layers=2, decoder_heads=6, decoder_width=384),
    # The CPU default: ~400 barcodes/s on two cores in fp32.
    "fast": BarcodeMAEConfig(encoder_layers=4, encoder_heads=4, encoder_width=128,
                             decoder_layers=2, decoder_heads=4, decoder_width=128),
    # Half the depth of `fast`, distilled from it (train.distill): the CPU default for classify.
    "mini": BarcodeMAEConfig(encoder_layers=2, encoder_heads=4, encoder_width=128,
                             decoder_layers=2, decoder_heads=4, decoder_width=128),
    # Half the width of `mini` (2.6x faster to embed on CPU), its pooled state mapped to fast's 128 dimensions so
    # that it can learn fast's embedding directly (train.distill).
    "nano": BarcodeMAEConfig(encoder_layers=2, encoder_heads=2, encoder_width=64, embedding_width=128,
                             decoder_layers=1, decoder_heads=2, decoder_width=64),
    # For tests and dry runs.
    "tiny": BarcodeMAEConfig(encoder_layers=2, encoder_heads=2, encoder_width=32,
                             decoder_layers=1, decoder_heads=2, decoder_width=32),
}


def preset(name: str, **overrides) -> BarcodeMAEConfig:
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
