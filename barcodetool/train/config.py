"""Training settings: the run's hyper-parameters (TrainConfig, validated once), where and how a run writes
(RunOutput), and the names of the files a run folder holds.

A checkpoint carries its TrainConfig (`training_state.json`'s "config", and the model card's "training"), so a
run can be read back with `TrainConfig.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UsageError
from ..model.config import PRESETS
from ..model.runtime import is_device_name

# A run folder: the model (model.safetensors, barcodetool.json), metrics.jsonl, and CHECKPOINT_DIR holding the
# model of the last checkpoint with optimizer.safetensors and training_state.json.
CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"
METRICS_FILE = "metrics.jsonl"

# the ranks fine-tuning learns, where the corpus has labels for them
FINETUNE_RANKS = ("species", "genus", "family", "bin")


@dataclass
class TrainConfig:
    """Hyper-parameters of pretraining, fine-tuning, supervised contrastive fine-tuning and distillation.
    Checked when built (UsageError), with the command line's ranges, so that every run starts from settings
    that make sense."""

    preset: str = "small"
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    max_minutes: float | None = None  # safety stop of this run (a resumed run has its own); it still saves
    batch_size: int = 256  # per process
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # default: 5% of the steps, at most 1000
    weight_decay: float = 0.05
    grad_clip: float = 1.0  # 0 or less: no clipping
    mask_ratio: float = 0.5
    val_fraction: float = 0.02
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    compile: bool = False
    device: str = "auto"
    offset_augmentation: bool = True
    # fine-tuning only
    rank_weights: dict = field(default_factory=lambda: {"species": 1.0, "genus": 1.0, "family": 0.5, "bin": 1.0})
    mae_weight: float = 0.25
    cosine_scale: float = 16.0
    cosine_margin: float = 0.1
    # supervised contrastive fine-tuning only (train.supcon): batches of genera x barcodes
    genera_per_batch: int = 48
    barcodes_per_genus: int = 4
    # supcon and identity: the softmax temperature of the embedding's cosines (None: the objective's own,
    # supcon.SUPCON_TEMPERATURE or identity_teacher.IDENTITY_TEMPERATURE; the run's card records the one used)
    temperature: float | None = None
    # identity-teacher fine-tuning only (train.identity_teacher): anchors x (1 + neighbours) barcodes a batch; the
    # student's softmax temperature is `temperature`
    anchors_per_batch: int = 64
    neighbours_per_anchor: int = 3
    teacher_temperature: float = 0.01
    label_weight: float = 0.0
    beyond_weight: float = 1.0   # the same ranking with each query's own species hidden (a new species' view)

    def __post_init__(self):
        problems = []

        def require(condition: bool, setting: str, rule: str) -> None:
            if not condition:
                problems.append(f"{setting} must be {rule}, got {getattr(self, setting)!r}")

        numbers = [f.name for f in fields(self) if isinstance(getattr(self, f.name), float)]
        for name in numbers:      # inf or NaN passes every comparison below one way or the other
            require(math.isfinite(getattr(self, name)), name, "a finite number")
        require(self.preset in PRESETS, "preset", f"one of {', '.join(PRESETS)}")
        require(is_device_name(self.device), "device", "auto, cpu, cuda or cuda:N")
        require(self.epochs > 0, "epochs", "positive")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", "at least 1 (or None)")
        require(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "positive (or None)")
        require(self.batch_size >= 1, "batch_size", "at least 1")
        require(self.lr > 0, "lr", "positive")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "between 0 and 1")
        require(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "0 or more (or None)")
        require(self.weight_decay >= 0, "weight_decay", "0 or more")
        require(0 < self.mask_ratio < 1, "mask_ratio", "strictly between 0 and 1")
        require(0 <= self.val_fraction <= 0.5, "val_fraction", "between 0 and 0.5")
        require(self.checkpoint_every >= 1, "checkpoint_every", "at least 1")
        require(self.log_every >= 1, "log_every", "at least 1")
        require(all(weight >= 0 for weight in self.rank_weights.values()), "rank_weights", "0 or more for every rank")
        require(self.mae_weight >= 0, "mae_weight", "0 or more")
        require(self.cosine_scale > 0, "cosine_scale", "positive")
        require(self.cosine_margin >= 0, "cosine_margin", "0 or more")
        require(self.genera_per_batch >= 2, "genera_per_batch", "at least 2")
        require(self.barcodes_per_genus >= 2, "barcodes_per_genus", "at least 2")
        require(self.temperature is None or self.temperature > 0, "temperature", "positive (or None)")
        require(self.anchors_per_batch >= 2, "anchors_per_batch", "at least 2")
        require(self.neighbours_per_anchor >= 1, "neighbours_per_anchor", "at least 1")
        require(self.teacher_temperature > 0, "teacher_temperature", "positive")
        require(self.label_weight >= 0, "label_weight", "0 or more")
        require(self.beyond_weight >= 0, "beyond_weight", "0 or more")
        if problems:
            raise UsageError("training settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunOutput:
    """Where and how a run writes: its folder, the model's name on its card (default: the folder's name), a
    callback for log lines and one for every logged step (step, total steps, the metrics.jsonl entry)."""

    folder: Path
    name: str | None = None
    log: Callable[[str], None] | None = None
    progress: Callable[[int, int, dict], None] | None = None

    def __post_init__(self):
        self.folder = Path(self.folder)
        self.name = self.name or self.folder.name
