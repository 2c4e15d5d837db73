"""What a run learns: each task is a module whose forward takes a batch (token ids [B, L], lengths [B], mask noise
[B, L], labels [B, ranks] or None) and returns (loss, stats), a 1-D tensor of sums that the trainer adds up over
steps and processes; stats[0] / stats[1] is the task's `first_metric`. A task names its run's `kind` (recorded in
checkpoints and model cards) and the `label_ranks` it learns, and holds the model the run trains as `.model`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from ..model.mae import BarcodeMAE, BarcodeMAEConfig
from ..model.runtime import autocast
from .config import TrainConfig


class MAETask(nn.Module):
    """Pretraining objective; forward returns (loss, stats) where stats = [correct, hidden, rows]."""

    kind = "pretrain"
    label_ranks: tuple[str, ...] = ()
    first_metric = "masked_token_accuracy"   # stats[0] / stats[1], as the trainer reports it

    def __init__(self, model: BarcodeMAE, mask_ratio: float):
        super().__init__()
        self.model = model
        self.mask_ratio = mask_ratio

    def forward(self, ids, lengths, noise, labels=None):
        loss, correct, count = self.model(ids, lengths, self.mask_ratio, noise)
        stats = torch.stack([correct.float(), count.float(), torch.tensor(float(ids.shape[0]), device=ids.device)])
        return loss, stats


class TaxonomyHeads(nn.Module):
    """Cosine-softmax classifiers (CosFace margin) on the pooled embedding, one per rank."""

    def __init__(self, dim: int, classes: dict[str, int], scale: float, margin: float):
        super().__init__()
        self.ranks = list(classes)
        self.scale, self.margin = scale, margin
        self.proxies = nn.ParameterDict({r: nn.Parameter(torch.randn(n, dim) * 0.02) for r, n in classes.items()})

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # embedding [B, D]; labels [B, ranks] (-1 = unknown)
        normed = F.normalize(embedding.float(), dim=-1)
        out = []
        for i, rank in enumerate(self.ranks):
            target = labels[:, i]
            cosine = normed @ F.normalize(self.proxies[rank].float(), dim=-1).T  # [B, C]
            margin = F.one_hot(target.clamp(min=0), cosine.shape[1]).to(cosine.dtype) * self.margin
            logits = self.scale * (cosine - margin)
            loss_sum = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
            known = (target >= 0).sum()
            out.append((loss_sum / known.clamp(min=1), ((logits.argmax(1) == target) & (target >= 0)).sum()))
        return out


class FinetuneTask(nn.Module):
    """Taxonomy fine-tuning: cosine classifiers on the whole-sequence embedding, plus the MAE loss (if the
    model still has its decoder) so the embedding keeps sequence detail for unseen taxa and new BINs.
    stats = [MAE correct, MAE hidden, rows, correct per rank..., known labels per rank...]."""

    kind = "finetune"
    first_metric = "masked_token_accuracy"

    def __init__(self, model: BarcodeMAE, classes: dict[str, int], config: TrainConfig):
        super().__init__()
        self.model = model
        self.heads = TaxonomyHeads(model.config.embedding_dim, classes, config.cosine_scale, config.cosine_margin)
        self.weights = [float(config.rank_weights.get(rank, 1.0)) for rank in classes]
        self.mae_weight = config.mae_weight if model.include_decoder else 0.0
        self.mask_ratio = config.mask_ratio

    @property
    def label_ranks(self) -> list[str]:
        """The ranks of the labels' columns, in the order of `classes`."""
        return self.heads.ranks

    def forward(self, ids, lengths, noise, labels):
        embedding = self.model.embed(ids, lengths)
        losses = self.heads(embedding, labels)
        loss = sum(weight * rank_loss for weight, (rank_loss, _) in zip(self.weights, losses))
        correct = [c.float() for _, c in losses]
        known = [(labels[:, i] >= 0).sum().float() for i in range(labels.shape[1])]
        if self.mae_weight > 0:
            mae_loss, mae_correct, mae_count = self.model(ids, lengths, self.mask_ratio, noise)
            loss = loss + self.mae_weight * mae_loss
        else:
            mae_correct = mae_count = torch.zeros((), device=ids.device)
        rows = torch.tensor(float(ids.shape[0]), device=ids.device)
        stats = torch.stack([mae_correct.float(), mae_count.float(), rows, *correct, *known])
        return loss, stats


class DistillTask(nn.Module):
    """Distillation into a smaller encoder: the student's embedding (masked mean of its last layer, the whole
    sequence unmasked, as embeddings are taken) learns the frozen teacher's direction on the same tokens (loss
    1 - cosine). stats = [summed cosine, rows, rows]."""

    kind = "distill"
    label_ranks: tuple[str, ...] = ()
    first_metric = "teacher_cosine"

    def __init__(self, student: BarcodeMAE, teacher: BarcodeMAE, teacher_compute: str = "float32"):
        super().__init__()
        if student.config.embedding_dim != teacher.config.embedding_dim:
            raise UsageError(f"the student's embedding width ({student.config.embedding_dim}) must be the "
                             f"teacher's ({teacher.config.embedding_dim})")
        self.model = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.teacher_compute = teacher_compute

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, ids, lengths, noise=None, labels=None):
        with torch.no_grad(), autocast(ids.device, self.teacher_compute):
            target = F.normalize(self.teacher.embed(ids, lengths).float(), dim=-1)   # [B, D]
        cosine = (F.normalize(self.model.embed(ids, lengths).float(), dim=-1) * target).sum(-1)   # [B]
        rows = torch.tensor(float(ids.shape[0]), device=ids.device)
        return (1.0 - cosine).mean(), torch.stack([cosine.detach().sum(), rows, rows])


def student_from_teacher(teacher: BarcodeMAE, config: BarcodeMAEConfig) -> BarcodeMAE:
    """A student encoder of `config`. Where its width, heads and token settings are the teacher's it starts
    from the teacher's token embedding, positions, final norm and evenly spaced blocks (first and last kept),
    which converges far faster than a random start."""
    student = BarcodeMAE(config, include_decoder=False)
    t = teacher.config
    if (config.encoder_width, config.encoder_heads, config.k, config.max_tokens, config.mlp_ratio) != \
            (t.encoder_width, t.encoder_heads, t.k, t.max_tokens, t.mlp_ratio) or \
            config.encoder_layers > t.encoder_layers:
        return student
    n, m = config.encoder_layers, t.encoder_layers
    chosen = [0] if n == 1 else [round(i * (m - 1) / (n - 1)) for i in range(n)]
    state = {}
    for name, tensor in teacher.encoder_state_dict().items():
        if name.startswith("encoder_blocks."):
            _, layer, rest = name.split(".", 2)
            if int(layer) in chosen:
                state[f"encoder_blocks.{chosen.index(int(layer))}.{rest}"] = tensor
        else:
            state[name] = tensor
    student.load_state_dict(state, strict=True)
    return student
