"""Hierarchical supervised contrastive fine-tuning of a pretrained encoder (on top of MAE pretraining).

The embedding (`model.embed`, the masked mean that `barcodetool embed` returns, L2-normalised) learns the taxonomy
of the training table: in each batch of G genera x K barcodes (GroupSampler: within a genus, pairs of barcodes of
one species where the genus has them, so that every batch holds same-species positives and same-genus,
other-species negatives), a supervised contrastive loss (Khosla et al. 2020, SupCon "out" form) at each rank,
positives the other barcodes of the same genus (resp. species), summed with `rank_weights`. Temperature 0.1.
Barcodes of unknown label at a rank take no part in that rank's term.

stats = [species in-batch 1-NN correct, species known, rows, genus correct, species correct, genus known, species
known]: the trainer reports `batch_species_1nn` and `genus_accuracy` / `species_accuracy` (in-batch leave-one-out
1-NN by cosine), a cheap signal of progress; the real test is 1-NN on held-out barcodes (weights/recipes).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from ..model.mae import BarcodeMAE
from ..model.tokenizer import PHASES, TokenizerConfig
from ..model.weights import PretrainedModel, load_model
from .config import RunOutput, TrainConfig
from .data import Corpus
from .distributed import init_distributed
from .trainer import Trainer, _prepare_output

SUPCON_RANKS = ("genus", "species")
SUPCON_TEMPERATURE = 0.1    # TrainConfig.temperature None: this


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean SupCon loss over anchors with a positive, in-batch leave-one-out 1-NN correct count) of normalised
    embeddings z [B, D] and labels [B] (-1: unknown, left out)."""
    known = labels >= 0
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    valid = known[:, None] & known[None, :] & ~eye                          # [B, B] pairs compared
    positive = valid & (labels[:, None] == labels[None, :])
    similarity = z @ z.T                                                     # [B, B]
    logits = (similarity / temperature).masked_fill(~valid, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True).nan_to_num(neginf=0.0)
    count = positive.sum(1)
    anchors = count > 0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(1) / count.clamp(min=1)
    loss = per_anchor[anchors].mean() if bool(anchors.any()) else z.sum() * 0.0
    nearest = similarity.detach().masked_fill(~valid, float("-inf")).argmax(1)
    correct = (known & valid.any(1) & (labels[nearest] == labels)).sum()
    return loss, correct


class SupConTask(nn.Module):
    """Hierarchical supervised contrastive loss on the embedding, labels [B, 2] = (genus, species)."""

    kind = "supcon"
    label_ranks = SUPCON_RANKS
    first_metric = "batch_species_1nn"

    def __init__(self, model: BarcodeMAE, temperature: float = SUPCON_TEMPERATURE, rank_weights: dict | None = None):
        super().__init__()
        self.model = model
        self.temperature = temperature
        weights = rank_weights or {}
        self.weights = [float(weights.get(rank, 1.0)) for rank in SUPCON_RANKS]

    def forward(self, ids, lengths, noise=None, labels=None):
        z = F.normalize(self.model.embed(ids, lengths).float(), dim=-1)
        loss = z.sum() * 0.0
        correct, known = [], []
        for i, weight in enumerate(self.weights):
            rank_loss, rank_correct = supcon_loss(z, labels[:, i], self.temperature)
            loss = loss + weight * rank_loss
            correct.append(rank_correct.float())
            known.append((labels[:, i] >= 0).sum().float())
        rows = torch.tensor(float(ids.shape[0]), device=ids.device)
        return loss, torch.stack([correct[1], known[1], rows, *correct, *known])


class GroupSampler:
    """Rows of a batch of `genera` genera x `per_genus` barcodes, drawn from (seed, step, rank) alone (a resumed
    run draws what the uninterrupted one would have). Genera are drawn with probability proportional to the square
    root of their barcode count (between uniform over genera and over barcodes). Within a genus: up to
    per_genus / 2 species of two or more barcodes, two barcodes each, then random barcodes of the genus to fill
    (with replacement in small genera)."""

    def __init__(self, genus: np.ndarray, species: np.ndarray, genera: int, per_genus: int):
        self.genera, self.per_genus = genera, per_genus
        self.members: list[np.ndarray] = []
        self.pairs: list[list[np.ndarray]] = []   # per genus: rows of each species holding two or more
        order = np.argsort(genus, kind="stable")
        bounds = np.flatnonzero(np.r_[True, genus[order][1:] != genus[order][:-1], True])
        for s in range(len(bounds) - 1):
            rows = order[bounds[s]:bounds[s + 1]]
            if genus[rows[0]] < 0 or len(rows) < 2:
                continue
            self.members.append(rows)
            labels = species[rows]
            groups = [rows[labels == value] for value in np.unique(labels[labels >= 0])]
            self.pairs.append([g for g in groups if len(g) >= 2])
        if len(self.members) < 2:
            raise UsageError("supervised contrastive training needs at least two genera with two or more barcodes")
        sizes = np.sqrt([len(m) for m in self.members])
        self.weights = sizes / sizes.sum()

    @property
    def batch_size(self) -> int:
        return min(self.genera, len(self.members)) * self.per_genus

    def rows(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(self.members), size=min(self.genera, len(self.members)), replace=False, p=self.weights)
        out = []
        for g in chosen:
            members, groups = self.members[g], self.pairs[g]
            picked: list[int] = []
            if groups:
                for s in rng.permutation(len(groups))[:self.per_genus // 2]:
                    picked.extend(rng.choice(groups[s], size=2, replace=False).tolist())
            rest = self.per_genus - len(picked)
            if rest:
                picked.extend(rng.choice(members, size=rest, replace=len(members) < rest).tolist())
            out.extend(picked)
        return np.asarray(out, dtype=np.int64)


def supcon_trainer(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
                   output: str | os.PathLike | None = None, name: str | None = None, phase: str | None = None,
                   resume: bool = False, log=None, progress=None) -> Trainer:
    """A Trainer that continues `base` (its encoder) with the hierarchical supervised contrastive loss over the
    corpus's genus and species labels (read with label_ranks=SUPCON_RANKS, tokenized with `supcon_tokenizer`),
    batches of config.genera_per_batch x config.barcodes_per_genus barcodes (config.batch_size is not used),
    softmax temperature config.temperature (None: SUPCON_TEMPERATURE); config.rank_weights weighs the ranks
    (missing: 1). `phase`: the run's tokenizer reading phase (None: the base's); the corpus must have been
    tokenized with the same tokenizer. Ready to `run(resume=...)`."""
    dist, device = init_distributed(config.device)
    if not isinstance(base, PretrainedModel):
        base = load_model(base, device="cpu")
    if not all(corpus.label_names.get(rank) for rank in SUPCON_RANKS):
        raise UsageError("supervised contrastive training needs genus and species labels")
    tokenizer_config = supcon_tokenizer(base, phase)
    sampler = GroupSampler(corpus.labels["genus"], corpus.labels["species"], config.genera_per_batch,
                           config.barcodes_per_genus)
    folder = _prepare_output(output, name, resume)
    model = BarcodeMAE(base.config, include_decoder=False)
    model.load_state_dict(base.model.encoder_state_dict(), strict=True)
    model.to(device)
    torch.manual_seed(config.seed)
    config = TrainConfig.from_dict(config.to_dict() | {"batch_size": sampler.batch_size, "val_fraction": 0.0,
                                                         "temperature": config.temperature or SUPCON_TEMPERATURE})
    task = SupConTask(model, config.temperature, config.rank_weights).to(device)
    return Trainer(task, corpus, None, config, tokenizer_config, RunOutput(folder, name, log, progress),
                   dist=dist, device=device, base_card=base.card, sampler=sampler)


def supcon_tokenizer(base: PretrainedModel, phase: str | None = None) -> TokenizerConfig:
    """The tokenizer settings of a supervised contrastive run from `base`: the base's, with `phase` when given."""
    if phase is not None and phase not in PHASES:
        raise UsageError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    return base.tokenizer.config if phase is None else replace(base.tokenizer.config, phase=phase)


def supcon(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
           resume: bool = False, **options):
    """Run `supcon_trainer` (options: see there) and return its TrainResult."""
    return supcon_trainer(corpus, base, config=config, resume=resume, **options).run(resume=resume)
