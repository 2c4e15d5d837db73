"""Alignment as the teacher: fine-tuning an encoder so that cosine similarity ranks barcodes as identity does.

No labels are needed. Each training barcode's nearest barcodes of the corpus by identity (`NeighbourTable`: the
k-mer search's candidates, scored by the identity engine, `search.score_candidates`, coverage-weighted as
`classify` ranks hits) are computed once; where species are known, half of each list is the nearest barcodes of
other species, found apart: a list of the 16 nearest alone would hold only conspecifics for most barcodes, and
teach nothing about the ranks above species (a new species' genus is decided by the other species nearest to it).

A batch (`NeighbourSampler`) holds random anchors, each with its identity-nearest neighbour and a few more of its
list; every barcode of the batch is a query whose in-batch candidates are the others. The loss (`neighbour_loss`)
is a cross-entropy between the teacher's distribution over the pairs it knows (softmax of identity /
`teacher_temperature`: with 0.01, one identity point is a factor e) and the student's softmax of cosine /
`temperature` over the whole batch, so the identity-nearest must come first and every unrelated barcode of the
batch is a negative. Known pairs are those in either barcode's list; a pair unknown to the teacher is treated as
further than every known one (true of a list of the nearest; nearly so of the lists that reach beyond a species,
where a conspecific past the 8 nearest may be nearer than the other-species neighbours).

The same loss is taken a second time (weight `beyond_weight`) with each query's own species hidden from both
sides (`own_group`: by the species labels where both barcodes have one, else by identity >= 0.97), so that
every query is also ranked as a new species would be: its nearest other species first, as alignment ranks them.
On the choosing sets of weights/recipes/identity_nano.py, 5-minute pilots: genus 1-NN of new species 65.3% without
it, 66.8% with it (species 1-NN 98.6% / 98.3%).

An optional hierarchical supervised contrastive term (`supcon.supcon_loss` over genus and species, weight
`label_weight`) adds what labels say where the corpus has them.

stats = [batch queries whose cosine-nearest is their identity-nearest, queries with a known pair, rows, genus
correct, species correct, genus known, species known]: the trainer reports `identity_top1`.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from ..io.atomic import atomic_path
from ..model.mae import BarcodeMAE
from ..model.weights import PretrainedModel, load_model
from ..search import KmerIndex, as_store, score_candidates
from .config import RunOutput, TrainConfig
from .data import Corpus
from .distributed import init_distributed
from .supcon import SUPCON_RANKS, supcon_loss, supcon_tokenizer
from .trainer import Trainer, _prepare_output

TABLE_NEIGHBOURS = 16     # identity neighbours kept per barcode
TABLE_CANDIDATES = 24     # k-mer candidates scored per barcode to find them
TABLE_BEYOND = 8          # of the neighbours, those of other species (when species are known)
TABLE_BLOCK = 2048        # barcodes searched and scored at once
TABLE_FILE = "identity_neighbours.npz"
TABLE_VERSION = 2
GROUP_IDENTITY = 0.97     # without species labels, a pair this similar counts as one species (the beyond loss)
IDENTITY_TEMPERATURE = 0.05   # the student's, where TrainConfig.temperature is None
HIDDEN_LOGIT = -1e4       # the student's logit of a hidden pair (cosine / temperature is within +-1 / temperature)


@dataclass
class NeighbourTable:
    """Each corpus barcode's nearest others by coverage-weighted identity, best first."""

    rows: np.ndarray        # int32 [N, M], -1 = none
    similarity: np.ndarray  # float32 [N, M], identity x coverage (search.coverage_score); -inf where rows is -1
    fingerprint: str        # Corpus.fingerprint of the sequences it was computed on

    def __len__(self) -> int:
        return len(self.rows)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, rows=self.rows, similarity=self.similarity, fingerprint=np.array(self.fingerprint),
                     version=np.array(TABLE_VERSION))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeighbourTable:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != TABLE_VERSION:
                raise UsageError(f"{path}: neighbour table version {int(data['version'])}, expected {TABLE_VERSION}; "
                                 "delete it to recompute")
            return cls(data["rows"].astype(np.int32), data["similarity"].astype(np.float32), str(data["fingerprint"]))


def neighbour_table(sequences, *, neighbours: int = TABLE_NEIGHBOURS, candidates: int = TABLE_CANDIDATES,
                    groups: np.ndarray | None = None, beyond: int = TABLE_BEYOND, threads: int = 1,
                    block: int = TABLE_BLOCK, fingerprint: str = "", progress=None) -> NeighbourTable:
    """The `neighbours` nearest other sequences of each sequence by coverage-weighted identity, found among its
    `candidates` best by shared k-mers (search.KmerIndex over the same sequences, itself excluded). With `groups`
    (int [N], e.g. species; -1: unknown), `beyond` of the places go to the nearest sequences of other groups
    (searched apart), so that every list reaches past its own species to the neighbours that decide a new
    species' genus; the list is then sorted as one. Blocks of `block` sequences are searched and scored on
    `threads` threads; progress(done) after each."""
    if not 1 <= neighbours <= candidates:
        raise UsageError(f"neighbours must be between 1 and candidates ({candidates}), got {neighbours}")
    store = as_store(sequences)
    n = len(store)
    rows = np.full((n, neighbours), -1, dtype=np.int32)
    similarity = np.full((n, neighbours), -np.inf, dtype=np.float32)
    if n < 2:
        return NeighbourTable(rows, similarity, fingerprint)
    beyond = 0 if groups is None else min(max(0, beyond), neighbours - 1)
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (n,):
            raise UsageError(f"groups must hold one value per sequence ({n}), got shape {groups.shape}")
        groups = np.where(groups >= 0, groups, groups.max(initial=0) + 1 + np.arange(n))   # unknown: its own
    index = KmerIndex(store)
    everyone = np.arange(n)

    def nearest(part, exclude, keep: int) -> tuple[np.ndarray, np.ndarray]:
        _, candidate_idx = index.search(part, min(candidates, n - 1), exclude=exclude)
        score, _, _ = score_candidates(part, store, candidate_idx)                    # [b, C]
        score[candidate_idx < 0] = -np.inf
        order = np.argsort(-score, axis=1, kind="stable")[:, :keep]
        return np.take_along_axis(candidate_idx, order, axis=1), np.take_along_axis(score, order, axis=1)

    def one_block(start: int) -> int:
        own = np.arange(start, min(n, start + block))
        part = store.subset(own)
        found, score = nearest(part, (own, everyone), neighbours - beyond)
        if beyond:
            other, other_score = nearest(part, (groups[own], groups), beyond)
            found, score = np.concatenate([found, other], 1), np.concatenate([score, other_score], 1)
            repeated = np.zeros_like(found, dtype=bool)   # the first list may hold other groups' sequences too
            for j in range(neighbours - beyond, found.shape[1]):
                repeated[:, j] = (found[:, j:j + 1] == found[:, :neighbours - beyond]).any(1)
            score[repeated | (found < 0)] = -np.inf
        order = np.argsort(-score, axis=1, kind="stable")
        best = np.take_along_axis(score, order, axis=1)
        rows[own, :best.shape[1]] = np.where(np.isfinite(best), np.take_along_axis(found, order, axis=1), -1)
        similarity[own, :best.shape[1]] = best
        return len(own)

    done = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for count in pool.map(one_block, range(0, n, block)):
            done += count
            if progress is not None:
                progress(done)
    return NeighbourTable(rows, similarity, fingerprint)


class NeighbourSampler:
    """Rows of a batch: `anchors` random barcodes with a neighbour, each followed by its identity-nearest and
    `per_anchor` - 1 more drawn from the rest of its list, from (seed) alone (a resumed run draws what the
    uninterrupted one would have)."""

    def __init__(self, table: NeighbourTable, anchors: int, per_anchor: int):
        if per_anchor < 1:
            raise UsageError(f"per_anchor must be at least 1, got {per_anchor}")
        self.table, self.per_anchor = table, per_anchor
        self.candidates = np.flatnonzero(table.rows[:, 0] >= 0)
        if len(self.candidates) < 2:
            raise UsageError("identity-teacher training needs at least two barcodes with a neighbour")
        self.anchors = min(anchors, len(self.candidates))
        self.count = (table.rows >= 0).sum(1)

    @property
    def batch_size(self) -> int:
        return self.anchors * (1 + self.per_anchor)

    def rows(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        anchors = rng.choice(self.candidates, size=self.anchors, replace=False)          # [A]
        more = self.per_anchor - 1
        # ranks 1..count-1 drawn uniformly (with replacement; a short list repeats its nearest)
        count = self.count[anchors]
        extra = 1 + (rng.random((len(anchors), more)) * np.maximum(count - 1, 1)[:, None]).astype(np.int64)
        extra = np.where(count[:, None] > 1, extra, 0)
        picks = np.concatenate([np.zeros((len(anchors), 1), dtype=np.int64), extra], axis=1)   # [A, per_anchor]
        neighbours = self.table.rows[anchors[:, None], picks]
        return np.concatenate([anchors[:, None], neighbours], axis=1).reshape(-1).astype(np.int64)


def teacher_similarity(batch_rows: torch.Tensor, table_rows: torch.Tensor, table_similarity: torch.Tensor
                       ) -> torch.Tensor:
    """[B, B] the teacher's similarity of each pair of the batch that either barcode's list holds (-inf: not
    known), symmetric; the diagonal and repeated rows are -inf."""
    neighbours = table_rows[batch_rows]                                                # [B, M]
    similarity = table_similarity[batch_rows]                                          # [B, M]
    match = neighbours[:, :, None] == batch_rows[None, None, :]                        # [B, M, B]
    known = torch.where(match, similarity[:, :, None], torch.tensor(float("-inf"), device=similarity.device))
    known = known.amax(1)                                                              # [B, B]
    known = torch.maximum(known, known.T)
    same = batch_rows[:, None] == batch_rows[None, :]
    return known.masked_fill(same, float("-inf"))


def neighbour_loss(z: torch.Tensor, teacher: torch.Tensor, hidden: torch.Tensor, temperature: float,
                   teacher_temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over queries with a known pair, queries whose cosine-nearest is their identity-nearest,
    queries with a known pair) of normalised embeddings z [B, D] and the teacher's similarities [B, B]; `hidden`
    [B, B] marks the pairs left out of a query's candidates on both sides (itself and its repeats; for the loss
    beyond a species, the query's own species too)."""
    known = torch.isfinite(teacher) & ~hidden
    queries = known.any(1)
    cosine = z @ z.T                                                                   # [B, B]
    logits = (cosine / temperature).masked_fill(hidden, HIDDEN_LOGIT)   # finite: a row all hidden stays NaN-free
    log_q = torch.log_softmax(logits, dim=1)
    target = torch.softmax((teacher / teacher_temperature).masked_fill(~known, float("-inf")), dim=1)
    target = target.nan_to_num(0.0)                                                    # rows with nothing known
    per_query = -(target * log_q.masked_fill(~known, 0.0)).sum(1)
    loss = per_query[queries].mean() if bool(queries.any()) else z.sum() * 0.0
    student_first = cosine.detach().masked_fill(hidden, float("-inf")).argmax(1)
    teacher_first = teacher.masked_fill(~known, float("-inf")).argmax(1)
    agree = (queries & (student_first == teacher_first)).sum()
    return loss, agree, queries.sum()


def own_group(species: torch.Tensor, teacher: torch.Tensor, group_identity: float = GROUP_IDENTITY) -> torch.Tensor:
    """[B, B] pairs of one species: by their labels where both are known (species [B], -1 unknown), else by the
    teacher's similarity >= group_identity."""
    both = (species[:, None] >= 0) & (species[None, :] >= 0)
    return torch.where(both, species[:, None] == species[None, :], teacher >= group_identity)


class IdentityTeacherTask(nn.Module):
    """The identity teacher's ranking loss on the embedding (plus `label_weight` x SupCon over genus and species).
    labels [B, 3] = (genus, species, corpus row)."""

    kind = "identity"
    label_ranks = SUPCON_RANKS
    first_metric = "identity_top1"

    def __init__(self, model: BarcodeMAE, table: NeighbourTable, temperature: float = IDENTITY_TEMPERATURE,
                 teacher_temperature: float = 0.01, label_weight: float = 0.0, label_temperature: float = 0.1,
                 beyond_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.beyond_weight = beyond_weight
        self.temperature, self.teacher_temperature = temperature, teacher_temperature
        self.label_weight, self.label_temperature = label_weight, label_temperature
        self.register_buffer("table_rows", torch.from_numpy(table.rows.astype(np.int64)), persistent=False)
        self.register_buffer("table_similarity", torch.from_numpy(table.similarity), persistent=False)

    def batch_labels(self, labels: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """The trainer's hook: the rank labels with each barcode's corpus row appended."""
        return torch.cat([labels, rows[:, None]], dim=1)

    def forward(self, ids, lengths, noise=None, labels=None):
        z = F.normalize(self.model.embed(ids, lengths).float(), dim=-1)                 # [B, D]
        batch_rows = labels[:, -1]
        teacher = teacher_similarity(batch_rows, self.table_rows, self.table_similarity)
        same_row = batch_rows[:, None] == batch_rows[None, :]
        loss, agree, queries = neighbour_loss(z, teacher, same_row, self.temperature, self.teacher_temperature)
        if self.beyond_weight > 0:   # each query as a new species: its own species hidden, the others ranked
            hidden = same_row | own_group(labels[:, 1], teacher)
            beyond, _, _ = neighbour_loss(z, teacher, hidden, self.temperature, self.teacher_temperature)
            loss = loss + self.beyond_weight * beyond
        correct, known = [], []
        for i in range(len(SUPCON_RANKS)):
            rank_loss, rank_correct = supcon_loss(z, labels[:, i], self.label_temperature)
            if self.label_weight > 0:
                loss = loss + self.label_weight * rank_loss
            correct.append(rank_correct.float())
            known.append((labels[:, i] >= 0).sum().float())
        rows = torch.tensor(float(ids.shape[0]), device=ids.device)
        return loss, torch.stack([agree.float(), queries.float(), rows, *correct, *known])


def table_fingerprint(corpus: Corpus) -> str:
    """What a neighbour table depends on: the corpus's sequences and its species labels (the groups)."""
    species = corpus.labels.get("species")
    labels = hashlib.sha256(species.astype(np.int64).tobytes() if species is not None else b"").hexdigest()
    return f"{corpus.fingerprint}:{labels[:16]}"


def load_or_compute_table(corpus: Corpus, folder: Path, *, threads: int = 1, log=None) -> NeighbourTable:
    """The run folder's neighbour table if it was computed on this corpus, else computed and saved there."""
    path = folder / TABLE_FILE
    fingerprint = table_fingerprint(corpus)
    if path.exists():
        table = NeighbourTable.load(path)
        if table.fingerprint == fingerprint and len(table) == len(corpus):
            return table
    if log:
        log(f"identity neighbours of {len(corpus)} barcodes (k-mer candidates scored by the identity engine)")
    step = max(1, len(corpus) // 10)
    table = neighbour_table(corpus.sequences, groups=corpus.labels.get("species"), threads=threads,
                            fingerprint=fingerprint,
                            progress=(lambda done: log(f"  {done}/{len(corpus)}") if done % step < TABLE_BLOCK
                                      else None) if log else None)
    folder.mkdir(parents=True, exist_ok=True)
    table.save(path)
    return table


def identity_trainer(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
                     output: str | os.PathLike | None = None, name: str | None = None, phase: str | None = None,
                     resume: bool = False, table: NeighbourTable | None = None, threads: int = 1, log=None,
                     progress=None) -> Trainer:
    """A Trainer that continues `base` (its encoder) with the identity teacher's ranking loss: batches of
    config.anchors_per_batch anchors x (1 + config.neighbours_per_anchor) barcodes, student temperature
    config.temperature (None: IDENTITY_TEMPERATURE), teacher temperature config.teacher_temperature, SupCon over
    genus and species weighted config.label_weight (0: labels unused). `table`: the corpus's NeighbourTable (None:
    the run folder's, or computed there on `threads` threads). `phase` as for supcon_trainer. Ready to
    `run(resume=...)`."""
    dist, device = init_distributed(config.device)
    if not isinstance(base, PretrainedModel):
        base = load_model(base, device="cpu")
    for rank in SUPCON_RANKS:
        corpus.labels.setdefault(rank, np.full(len(corpus), -1, dtype=np.int64))
    tokenizer_config = supcon_tokenizer(base, phase)
    folder = _prepare_output(output, name, resume)
    if table is None:
        table = load_or_compute_table(corpus, folder, threads=threads, log=log)
    elif table.fingerprint and table.fingerprint != table_fingerprint(corpus) or len(table) != len(corpus):
        raise UsageError("the neighbour table was computed on other sequences than this corpus")
    sampler = NeighbourSampler(table, config.anchors_per_batch, config.neighbours_per_anchor)
    model = BarcodeMAE(base.config, include_decoder=False)
    model.load_state_dict(base.model.encoder_state_dict(), strict=True)
    model.to(device)
    torch.manual_seed(config.seed)
    config = TrainConfig.from_dict(config.to_dict() | {"batch_size": sampler.batch_size, "val_fraction": 0.0,
                                                         "temperature": config.temperature or IDENTITY_TEMPERATURE})
    task = IdentityTeacherTask(model, table, config.temperature, config.teacher_temperature, config.label_weight,
                               beyond_weight=config.beyond_weight).to(device)
    return Trainer(task, corpus, None, config, tokenizer_config, RunOutput(folder, name, log, progress),
                   dist=dist, device=device, base_card=base.card, sampler=sampler)


def identity_teach(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
                   resume: bool = False, **options):
    """Run `identity_trainer` (options: see there) and return its TrainResult."""
    return identity_trainer(corpus, base, config=config, resume=resume, **options).run(resume=resume)
