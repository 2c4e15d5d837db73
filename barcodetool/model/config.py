"""Model shapes: the BarcodeMAE settings a checkpoint carries, and the named presets.

Apart from the network (model.py) so that reading a model card, naming a model and running an exported encoder
(onnx_encoder.py) need no PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ModelError
from .tokenizer import NUM_SPECIAL


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
        if self.encoder_width % self.encoder_heads or self.decoder_width % self.decoder_heads:
            raise ModelError("encoder/decoder width must be divisible by its number of heads")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ModelError(f"mask_ratio must be strictly between 0 and 1, got {self.mask_ratio}")
        if self.max_tokens < 1 or self.encoder_layers < 1:
            raise ModelError("max_tokens and encoder_layers must be at least 1")
        if self.embedding_width < 0:
            raise ModelError(f"embedding_width must be 0 (the encoder width) or positive, got {self.embedding_width}")

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

    @classmethod
    def from_dict(cls, data: dict) -> BarcodeMAEConfig:
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
