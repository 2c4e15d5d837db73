"""Training: masked-autoencoder pretraining, taxonomy fine-tuning, supervised contrastive fine-tuning (supcon),
identity-teacher fine-tuning (identity_teacher) and distillation, on one device or under torchrun.

The settings and file names (config), the data (data: Corpus, read_corpus), the objectives (tasks: MAETask,
FinetuneTask, DistillTask), torchrun's process group (distributed) and the loop with its checkpoints and entry
points (trainer: Trainer, pretrain, finetune, distill).
"""

from .config import CHECKPOINT_DIR, FINETUNE_RANKS, METRICS_FILE, OPTIMIZER_FILE, STATE_FILE, RunOutput, TrainConfig
from .data import Corpus, build_corpus, read_corpus, split_validation, tokenize_corpus
from .distributed import Distributed, init_distributed
from .identity_teacher import (IdentityTeacherTask, NeighbourSampler, NeighbourTable, identity_teach, identity_trainer,
                               neighbour_loss, neighbour_table)
from .supcon import SUPCON_RANKS, GroupSampler, SupConTask, supcon, supcon_loss, supcon_trainer, supcon_tokenizer
from .tasks import DistillTask, FinetuneTask, MAETask, TaxonomyHeads, student_from_teacher
from .trainer import (Trainer, TrainResult, checkpoint_folder, distill, distill_trainer, finetune, finetune_trainer,
                      lr_at, make_optimizer, pretrain, pretrain_trainer, read_training_state)

__all__ = ["CHECKPOINT_DIR", "FINETUNE_RANKS", "METRICS_FILE", "OPTIMIZER_FILE", "STATE_FILE", "RunOutput",
           "TrainConfig", "Corpus", "build_corpus", "read_corpus", "split_validation", "tokenize_corpus",
           "Distributed", "init_distributed", "DistillTask", "FinetuneTask", "MAETask", "TaxonomyHeads",
           "student_from_teacher", "TrainResult", "Trainer", "checkpoint_folder", "distill", "distill_trainer",
           "finetune", "finetune_trainer", "lr_at", "make_optimizer", "pretrain", "pretrain_trainer",
           "read_training_state", "SUPCON_RANKS", "GroupSampler", "SupConTask", "supcon", "supcon_loss",
           "supcon_trainer", "supcon_tokenizer", "IdentityTeacherTask", "NeighbourSampler", "NeighbourTable",
           "identity_teach", "identity_trainer", "neighbour_loss", "neighbour_table"]
