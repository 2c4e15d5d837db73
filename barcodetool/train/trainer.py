"""The training loop: pretraining (MAE), taxonomy fine-tuning and distillation of BarcodeMAE, on one device or
under torchrun (DDP), with checkpoints that carry their config and optimizer state.

Reproducibility: every random draw of a step (data order, offsets, mask noise, dropout) derives from
(seed, step, rank) alone, and checkpoints hold the full optimizer state, so a run resumed from a checkpoint ends
with the same weights as an uninterrupted one on the same device and number of processes.

`pretrain`, `finetune` and `distill` build a Trainer and run it; `pretrain_trainer`, `finetune_trainer` and
`distill_trainer` return it unstarted, for a benchmark to step. The settings (`.config`), the data (`.data`), the
objectives (`.tasks`) and the process group (`.distributed`) live in their own modules.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ModelError, OutputError, UsageError
from ..io.atomic import atomic_path
from ..io.interrupts import note_folder_published, signals_held
from ..model.mae import BarcodeMAE, BarcodeMAEConfig
from ..model.mae import preset as model_preset
from ..model.runtime import autocast, resolve_compute
from ..model.tokenizer import TokenizerConfig
from ..model.weights import (CARD_FILE, TENSORS_FILE, PretrainedModel, available_models, load_model,
                             load_model_folder, read_card, save_model, sha256_file, user_models_dir)
from .config import CHECKPOINT_DIR, METRICS_FILE, OPTIMIZER_FILE, STATE_FILE, RunOutput, TrainConfig
from .data import Corpus, split_validation
from .distributed import Distributed, all_reduce_sum, check_same_data, init_distributed
from .tasks import DistillTask, FinetuneTask, MAETask, student_from_teacher


# ============================================================================================ schedule/optim
def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate of `step`: linear warm-up to config.lr, then cosine decay to lr * min_lr_ratio."""
    warmup = config.warmup_steps if config.warmup_steps is not None else min(1000, max(1, total_steps // 20))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only (not on biases, norms or position tables)."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and "position" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), **extra)


def _step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """The seed of one random draw: a function of (seed, step, rank) and the draw's salt alone, so that a resumed
    run draws what the uninterrupted one would have."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + salt * 15_485_863) % (2 ** 63 - 1)


# ============================================================================================ loop
@dataclass
class TrainResult:
    """A finished run: its folder, optimizer steps, barcodes seen, seconds (those before a resume included), the
    validation metrics, and whether max_minutes stopped it before its last step."""

    output: Path
    steps: int
    barcodes_seen: int
    seconds: float
    metrics: dict
    stopped_early: bool = False


class Trainer:
    """Runs a task over a corpus; owns batching, schedule, logging, checkpoints and resume.

    The task (MAETask, FinetuneTask, DistillTask) brings the model it trains (`task.model`, the weights saved), the
    run's kind and its label ranks; `val` (or None) is the held-out part evaluated at the end; `run_output` says
    where the run writes; `base_card` is the card of the model it started from (fine-tuning, distillation)."""

    def __init__(self, task: MAETask | FinetuneTask | DistillTask, corpus: Corpus, val: Corpus | None,
                 config: TrainConfig, tokenizer_config: TokenizerConfig, run_output: RunOutput, *,
                 dist: Distributed, device: torch.device, base_card: dict | None = None, sampler=None):
        self.task, self.model, self.corpus, self.val = task, task.model, corpus, val
        self.config, self.tokenizer_config, self.output = config, tokenizer_config, run_output.folder
        self.kind, self.dist, self.device = task.kind, dist, device
        self.label_ranks = list(task.label_ranks)
        self.log = run_output.log or (lambda message: None)
        self.progress = run_output.progress
        self.model_name = run_output.name
        self.base_card = base_card or {}
        self.sampler = sampler   # None: shuffled epochs; else .rows(seed) gives each step's rows (supcon.GroupSampler)
        n = len(corpus)
        check_same_data(n, corpus.fingerprint, dist, device)
        self.global_batch = min(config.batch_size * dist.world_size, n)
        self.local_batch = self.global_batch // dist.world_size
        if self.local_batch < 1:
            raise UsageError(f"{n} training barcodes cannot feed {dist.world_size} processes")
        self.steps_per_epoch = max(1, n // self.global_batch)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.tokens = torch.from_numpy(corpus.tokens.astype(np.int32)).to(device)  # [offsets, N, L]
        self.lengths = torch.from_numpy(corpus.lengths.astype(np.int64)).to(device)  # [offsets, N]
        if self.label_ranks:
            self.labels = torch.from_numpy(np.stack([corpus.labels[r] for r in self.label_ranks], 1)).to(device)
        else:
            self.labels = None
        self._perm_epoch, self._perm = -1, None
        self.optimizer = make_optimizer(task, config, device)
        self.step = 0
        self.runner = task
        if dist.enabled:
            ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
            self.runner = nn.parallel.DistributedDataParallel(task, **ddp_kwargs)
        if config.compile:
            self.runner = torch.compile(self.runner)

    # ----------------------------------------------------------------- batches
    def batch(self, step: int):
        if self.sampler is not None:
            rows = torch.from_numpy(self.sampler.rows(_step_seed(self.config.seed, step, self.dist.rank, salt=4)))
        else:
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(_step_seed(self.config.seed, epoch, 0, salt=1))
                self._perm, self._perm_epoch = torch.randperm(len(self.corpus), generator=g), epoch
            rows = self._perm[within * self.global_batch:(within + 1) * self.global_batch]
            rows = rows[self.dist.rank::self.dist.world_size][:self.local_batch]
        g = torch.Generator().manual_seed(_step_seed(self.config.seed, step, self.dist.rank))
        k = self.tokens.shape[0]
        offsets = torch.randint(0, k, (len(rows),), generator=g) if (self.config.offset_augmentation and k > 1) \
            else torch.zeros(len(rows), dtype=torch.long)
        noise = torch.rand(len(rows), self.tokens.shape[2], generator=g)
        rows_d, offsets_d = rows.to(self.device), offsets.to(self.device)
        ids = self.tokens[offsets_d, rows_d].long()
        lengths = self.lengths[offsets_d, rows_d]
        labels = self.labels[rows_d] if self.labels is not None else None
        if hasattr(self.task, "batch_labels"):   # a task that needs more than per-row labels (identity_teacher)
            labels = self.task.batch_labels(labels, rows_d)
        return ids, lengths, noise.to(self.device, non_blocking=True), labels

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.val is None or len(self.val) == 0:
            return {}
        self.task.eval()
        tokens = torch.from_numpy(self.val.tokens[0].astype(np.int64))
        lengths = torch.from_numpy(self.val.lengths[0].astype(np.int64))
        g = torch.Generator().manual_seed(_step_seed(self.config.seed, 0, 0, salt=2))
        noise = torch.rand(tokens.shape, generator=g)
        labels = (torch.from_numpy(np.stack([self.val.labels[r] for r in self.label_ranks], 1))
                  if self.label_ranks else None)
        totals, loss_sum, batches = None, 0.0, 0
        step = max(1, self.config.batch_size)
        for start in range(0, len(tokens), step):
            part = slice(start, start + step)
            with autocast(self.device):
                loss, stats = self.task(tokens[part].to(self.device), lengths[part].to(self.device),
                                        noise[part].to(self.device),
                                        labels[part].to(self.device) if labels is not None else None)
            totals = stats.float() if totals is None else totals + stats.float()
            loss_sum += float(loss) * int(tokens[part].shape[0])
            batches += int(tokens[part].shape[0])
        self.task.train()
        return self._stats_dict(totals, prefix="val_") | {"val_loss": loss_sum / max(1, batches)}

    def _stats_dict(self, stats: torch.Tensor, prefix: str = "") -> dict:
        values = stats.tolist()
        out = {}
        if values[1] > 0:
            out[prefix + self.task.first_metric] = values[0] / values[1]
        if self.label_ranks:
            n = len(self.label_ranks)
            for i, rank in enumerate(self.label_ranks):
                known = values[3 + n + i]
                if known > 0:
                    out[prefix + f"{rank}_accuracy"] = values[3 + i] / known
        return out

    # ----------------------------------------------------------------- checkpoints
    def _card_training(self, seconds: float) -> dict:
        return {"kind": self.kind, "steps": self.step, "total_steps": self.total_steps,
                "barcodes_seen": self.step * self.global_batch, "batch_size": self.global_batch,
                "processes": self.dist.world_size, "device": str(self.device.type),
                "seconds": round(seconds, 1), "config": self.config.to_dict(), "data": self.corpus.summary,
                "corpus_sha256": self.corpus.fingerprint, "labels": {r: len(self.corpus.label_names.get(r, []))
                                                                     for r in self.label_ranks},
                "base_model": self.base_card.get("name")}

    def save_checkpoint(self, seconds: float) -> None:
        if not self.dist.is_main:
            return
        from safetensors.torch import save_file  # looked up at each save (the tests interrupt it there)

        # Written whole into a staging folder, then swapped in: a crash (even kill -9) while saving never
        # leaves a checkpoint whose files disagree with each other.
        final = self.output / CHECKPOINT_DIR
        folder = self.output / (CHECKPOINT_DIR + ".partial")
        shutil.rmtree(folder, ignore_errors=True)
        save_model(self.model, self.tokenizer_config, folder, name=self.model_name,
                   training=self._card_training(seconds))
        tensors, groups = _flatten_optimizer(self.optimizer.state_dict())
        if self.kind == "finetune":
            tensors.update({f"heads.{k}": v for k, v in self.task.heads.state_dict().items()})
        with atomic_path(folder / OPTIMIZER_FILE) as temporary:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary))
        state = {"format": "barcodetool-training-state", "format_version": 1, "kind": self.kind,
                 "step": self.step, "total_steps": self.total_steps, "seconds": seconds,
                 "world_size": self.dist.world_size, "config": self.config.to_dict(),
                 "corpus_sha256": self.corpus.fingerprint, "param_groups": groups,
                 "label_names": self.corpus.label_names if self.kind == "finetune" else {},
                 "optimizer_sha256": sha256_file(folder / OPTIMIZER_FILE),
                 "model_sha256": sha256_file(folder / "model.safetensors")}
        with atomic_path(folder / STATE_FILE) as temporary:
            temporary.write_text(json.dumps(state, indent=1), encoding="utf-8")
        _replace_folder(folder, final)

    def restore(self, folder: Path) -> float:
        """Load a checkpoint written by save_checkpoint; returns the seconds already spent."""
        from safetensors.torch import load_file

        state = read_training_state(folder)
        if state["kind"] != self.kind:
            raise ModelError(f"{folder}: checkpoint is from a {state['kind']} run, not {self.kind}")
        if state["step"] > self.total_steps:
            # (resumed, it would save a checkpoint past its own end, which no later run could read)
            raise UsageError(f"--resume: the run in {self.output} is at step {state['step']}, past the "
                             f"{self.total_steps} steps asked; give more (--max-steps or --epochs) to continue it")
        self._check_same_run(folder)
        if state["corpus_sha256"] != self.corpus.fingerprint:
            raise ModelError(f"{folder}: checkpoint was trained on other data (the barcodes differ); resume "
                             "with the same input files and options")
        if state["world_size"] != self.dist.world_size:
            raise ModelError(f"{folder}: checkpoint used {state['world_size']} processes, this run "
                             f"{self.dist.world_size}; resume with the same number")
        if sha256_file(folder / OPTIMIZER_FILE) != state["optimizer_sha256"] or \
                sha256_file(folder / "model.safetensors") != state["model_sha256"]:
            raise ModelError(f"{folder}: checkpoint files do not match their recorded sha256 (corrupt); "
                             "delete the checkpoint folder to start over")
        loaded = load_model_folder(folder, device=self.device)
        _check_param_groups(state["param_groups"], self.optimizer.state_dict()["param_groups"], folder / STATE_FILE)
        try:
            self.model.load_state_dict(loaded.model.state_dict(), strict=True)
            tensors = load_file(str(folder / OPTIMIZER_FILE))
            if self.kind == "finetune":
                heads = {k[len("heads."):]: v for k, v in tensors.items() if k.startswith("heads.")}
                self.task.heads.load_state_dict(heads, strict=True)
                tensors = {k: v for k, v in tensors.items() if not k.startswith("heads.")}
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["param_groups"]))
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) as error:
            raise ModelError(f"{folder}: the checkpoint does not fit this run "
                             f"({str(error).splitlines()[0][:120] if str(error) else type(error).__name__}); "
                             "delete the checkpoint folder to start over") from None
        self.step = int(state["step"])
        return float(state.get("seconds", 0.0))

    def _check_same_run(self, folder: Path) -> None:
        """Refuse to resume a checkpoint started from another model (base, teacher) or reading barcodes another
        way (the tokenizer's phase): the run would change course silently halfway."""
        card = read_card(folder)
        started = (card.get("training") or {}).get("base_model")
        asked = self.base_card.get("name")
        if started != asked:
            raise UsageError(f"--resume: the run in {self.output} started from model {started!r}, this one from "
                             f"{asked!r}; resume with the same --init/--teacher/--model, or choose another -o")
        tokenizer = card.get("tokenizer_config")
        if isinstance(tokenizer, dict) and tokenizer != self.tokenizer_config.to_dict():
            raise UsageError(f"--resume: the run in {self.output} reads barcodes as {tokenizer}, this one as "
                             f"{self.tokenizer_config.to_dict()} (--phase?); resume with the same settings")

    # ----------------------------------------------------------------- main loop
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step at self.step; returns (loss, stats, rows) without synchronizing the device."""
        step = self.step
        torch.manual_seed(_step_seed(self.config.seed, step, self.dist.rank, salt=3))  # dropout
        ids, lengths, noise, labels = self.batch(step)
        lr = lr_at(step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device):
            loss, stats = self.runner(ids, lengths, noise, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss, stats, ids.shape[0]

    def run(self, resume: bool = False) -> TrainResult:
        config = self.config
        spent = 0.0
        if resume:
            folder = checkpoint_folder(self.output)
            if folder is None:
                raise UsageError(f"--resume: no checkpoint in {self.output / CHECKPOINT_DIR}")
            spent = self.restore(folder)
            self.log(f"resumed from step {self.step} of {self.total_steps}")
        metrics_path = self.output / METRICS_FILE
        if self.dist.is_main and (metrics_path.exists() or metrics_path.is_symlink()) and not metrics_path.is_file():
            raise OutputError(f"{metrics_path} is not a file: training appends its metrics log there (remove or "
                              "rename it)")
        evaluated = set()   # steps whose evaluation the log already holds (a resumed run that had ended)
        if resume and self.dist.is_main:
            evaluated = _trim_metrics(metrics_path, self.step)
        log_handle = open(metrics_path, "a", encoding="utf-8") if self.dist.is_main else None
        start_time, window_start, window_rows = time.perf_counter(), time.perf_counter(), 0
        running, running_loss, running_n = None, 0.0, 0
        stopped_early = False
        self.task.train()
        try:
            while self.step < self.total_steps:
                lr = lr_at(self.step, self.total_steps, config)
                loss, stats, rows = self.train_step()
                window_rows += rows
                running = stats.detach() if running is None else running + stats.detach()
                running_loss += loss.detach()
                running_n += 1
                last = self.step == self.total_steps
                if self.step % config.log_every == 0 or last:
                    totals = all_reduce_sum(running.float().clone(), self.dist)
                    mean_loss = float(all_reduce_sum(running_loss.float().reshape(1).clone(), self.dist)) / (
                        running_n * self.dist.world_size)
                    now = time.perf_counter()
                    rate = window_rows * self.dist.world_size / max(1e-9, now - window_start)
                    entry = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                             "loss": round(mean_loss, 5), "lr": lr, "barcodes_per_s": round(rate, 1),
                             "elapsed_s": round(spent + now - start_time, 2)} | {
                        k: round(v, 5) for k, v in self._stats_dict(totals).items()}
                    if log_handle:
                        log_handle.write(json.dumps(entry) + "\n")
                        log_handle.flush()
                    if self.progress:
                        self.progress(self.step, self.total_steps, entry)
                    running, running_loss, running_n = None, 0.0, 0
                    window_start, window_rows = now, 0
                if self.step % config.checkpoint_every == 0 and not last:
                    self.save_checkpoint(spent + time.perf_counter() - start_time)
                # a budget for this run alone: a resubmitted batch job that resumes gets its own --max-minutes
                if config.max_minutes and (time.perf_counter() - start_time) > config.max_minutes * 60:
                    stopped_early = not last
                    if stopped_early:
                        self.log(f"stopped at step {self.step} of {self.total_steps}: --max-minutes reached")
                    break
            seconds = spent + time.perf_counter() - start_time
            evaluation = self.evaluate()
            if evaluation and log_handle and self.step not in evaluated:
                log_handle.write(json.dumps({"step": self.step} | evaluation) + "\n")
            if self.dist.is_main:
                self.save_checkpoint(seconds)
                save_model(self.model, self.tokenizer_config, self.output, name=self.model_name,
                           training=self._card_training(seconds) | {"stopped_early": stopped_early},
                           metrics=evaluation)
        finally:
            if log_handle:
                log_handle.close()
        return TrainResult(output=self.output, steps=self.step, barcodes_seen=self.step * self.global_batch,
                           seconds=seconds, metrics=evaluation, stopped_early=stopped_early)



# ============================================================================================ checkpoints
def _trim_metrics(path: Path, step: int) -> set[int]:
    """Keep the metrics log of a resumed run up to its checkpoint's step: the steps after it are trained (and
    logged) again, and a line cut short by a kill is dropped, so the log holds each step once. Returns the steps
    of the evaluation lines kept (those without a learning rate), which the resumed run does not log again."""
    if not path.is_file():
        return set()
    kept, evaluated = [], set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
                if "lr" not in entry:
                    evaluated.add(entry["step"])
    with atomic_path(path) as temporary:
        temporary.write_text("".join(kept), encoding="utf-8")
    return evaluated


def _replace_folder(new: Path, folder: Path) -> None:
    """Put the complete folder `new` in place of `folder` by renames. A crash at any point leaves a complete
    checkpoint in `folder` or, between the two renames, in `folder.old` (checkpoint_folder finds either)."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    with signals_held():   # renamed and noted together: an interruption after this names the checkpoint
        os.replace(new, folder)
        note_folder_published(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_folder(output: str | os.PathLike) -> Path | None:
    """The complete checkpoint of the run in `output`, or None when it has none."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = Path(output) / name
        if (folder / STATE_FILE).is_file():
            return folder
    return None


# training_state.json: each key and the type it must have (an untrusted file: checked before use)
STATE_TYPES = {"kind": str, "step": int, "total_steps": int, "seconds": (int, float), "world_size": int,
               "config": dict, "corpus_sha256": str, "param_groups": list, "label_names": dict,
               "optimizer_sha256": str, "model_sha256": str}


def read_training_state(folder: Path) -> dict:
    """The training_state.json of a checkpoint folder, every key checked (ModelError naming the file)."""
    path = Path(folder) / STATE_FILE
    fix = "delete the checkpoint folder to start over"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{path}: unreadable training state ({message}); {fix}") from None
    except (RecursionError, ValueError):
        raise ModelError(f"{path}: unreadable training state (nested too deeply or numbers too long); "
                         f"{fix}") from None
    if not isinstance(state, dict) or state.get("format") != "barcodetool-training-state":
        raise ModelError(f"{path}: not a training checkpoint this barcodetool can resume; {fix}")
    version = state.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 1:
        raise ModelError(f"{path}: not a training checkpoint this barcodetool can resume (format_version "
                         f"{str(version)[:20]!r}); {fix}")
    for key, kind in STATE_TYPES.items():
        if key not in state:
            raise ModelError(f"{path}: the training state has no {key!r}; {fix}")
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ModelError(f"{path}: {key} is {str(value)[:40]!r}, not of the right type; {fix}")
    if state["total_steps"] < 1 or not 0 <= state["step"] <= state["total_steps"]:
        raise ModelError(f"{path}: step {state['step']} is not between 0 and total_steps "
                         f"{state['total_steps']} (at least 1); {fix}")
    if state["world_size"] < 1 or not (math.isfinite(state["seconds"]) and state["seconds"] >= 0):
        raise ModelError(f"{path}: world_size or seconds out of range; {fix}")
    return state


def _check_param_groups(groups: list, current: list[dict], path: Path) -> None:
    """The optimizer's parameter groups of a checkpoint: as many as this run's, with the same parameters and keys,
    each setting of the same type (numbers for numbers)."""
    def same_kind(value, like) -> bool:
        if isinstance(like, bool) or like is None:
            return type(value) is type(like)
        if isinstance(like, (int, float)):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if isinstance(like, (list, tuple)):
            return isinstance(value, list) and len(value) == len(like) and all(map(same_kind, value, like))
        return isinstance(value, type(like))

    if len(groups) != len(current) or not all(
            isinstance(group, dict) and group.keys() == want.keys() and group["params"] == want["params"]
            and all(same_kind(group[key], want[key]) for key in want if key != "params")
            for group, want in zip(groups, current)):
        raise ModelError(f"{path}: param_groups do not fit this run's optimizer; delete the checkpoint folder to "
                         "start over")


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state_dict["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": param_groups}


# ============================================================================================ entry points
Log = Callable[[str], None]
Progress = Callable[[int, int, dict], None]


def _prepare_output(output: str | os.PathLike | None, name: str | None, resume: bool) -> Path:
    if output is None:
        output = user_models_dir() / (name or time.strftime("model-%Y%m%d-%H%M%S"))
    output = Path(output)
    registered = available_models().get(output.name)
    if (registered is not None and output.parent.resolve() == user_models_dir().resolve()
            and registered.resolve() != output.resolve()):
        raise UsageError(f"{output.name!r} names a bundled model: one trained under that name could never be loaded "
                         "by it (the bundled one wins); choose another --name")
    if output.exists() and not resume and checkpoint_folder(output) is not None:
        raise UsageError(f"{output} already holds a training run; use --resume to continue it or choose "
                         "another -o")
    if not resume and any((output / name).exists() for name in (CARD_FILE, TENSORS_FILE)):
        # a finished model (a bundled one copied, a run whose checkpoint was removed): written over, its other
        # files (an ONNX export, a model card) would be left beside weights they do not describe
        raise UsageError(f"{output} already holds a model ({CARD_FILE}); training never writes over one: choose "
                         "another -o")
    if resume and checkpoint_folder(output) is None:    # (before making the folder: a failed resume leaves none)
        raise UsageError(f"--resume: no checkpoint in {output / CHECKPOINT_DIR}")
    output.mkdir(parents=True, exist_ok=True)
    return output


def pretrain_trainer(corpus: Corpus, *, config: TrainConfig, output: str | os.PathLike | None = None,
                     name: str | None = None, model_config: BarcodeMAEConfig | None = None,
                     tokenizer_config: TokenizerConfig | None = None, resume: bool = False,
                     log: Log | None = None, progress: Progress | None = None) -> Trainer:
    """A Trainer for MAE pretraining, ready to `run()` (or to be stepped by a benchmark)."""
    dist, device = init_distributed(config.device)
    tokenizer_config = tokenizer_config or TokenizerConfig()
    model_config = model_config or model_preset(config.preset, mask_ratio=config.mask_ratio,
                                                k=tokenizer_config.k, max_tokens=tokenizer_config.max_tokens)
    output = _prepare_output(output, name, resume)
    torch.manual_seed(config.seed)
    model = BarcodeMAE(model_config).to(device)
    train_part, val_part = split_validation(corpus, config.val_fraction, config.seed)
    return Trainer(MAETask(model, config.mask_ratio), train_part, val_part, config, tokenizer_config,
                   RunOutput(output, name, log, progress), dist=dist, device=device)


def pretrain(corpus: Corpus, *, config: TrainConfig, output: str | os.PathLike | None = None,
             name: str | None = None, model_config: BarcodeMAEConfig | None = None,
             tokenizer_config: TokenizerConfig | None = None, resume: bool = False, log: Log | None = None,
             progress: Progress | None = None) -> TrainResult:
    """Pretrain a BarcodeMAE model with the masked-autoencoder objective (options: see pretrain_trainer)."""
    return pretrain_trainer(corpus, config=config, output=output, name=name, model_config=model_config,
                            tokenizer_config=tokenizer_config, resume=resume, log=log,
                            progress=progress).run(resume=resume)


def finetune_trainer(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
                     output: str | os.PathLike | None = None, name: str | None = None, resume: bool = False,
                     log: Log | None = None, progress: Progress | None = None) -> Trainer:
    """A Trainer for taxonomy fine-tuning of a pretrained model, ready to `run()`."""
    dist, device = init_distributed(config.device)
    if not isinstance(base, PretrainedModel):
        base = load_model(base, device="cpu")
    ranks = [r for r in corpus.labels if corpus.label_names.get(r)]
    if not ranks:
        raise UsageError("fine-tuning needs labelled barcodes: none has a species, genus, family or BIN label "
                         "(identical barcodes whose labels disagree count as unlabelled at that rank)")
    output = _prepare_output(output, name, resume)
    keep_decoder = base.model.include_decoder and config.mae_weight > 0
    model = BarcodeMAE(base.config, include_decoder=keep_decoder)
    model.load_state_dict(base.model.state_dict() if keep_decoder else base.model.encoder_state_dict(), strict=True)
    model.to(device)
    torch.manual_seed(config.seed)
    task = FinetuneTask(model, {r: len(corpus.label_names[r]) for r in ranks}, config).to(device)
    train_part, val_part = split_validation(corpus, config.val_fraction, config.seed)
    return Trainer(task, train_part, val_part, config, base.tokenizer.config, RunOutput(output, name, log, progress),
                   dist=dist, device=device, base_card=base.card)


def finetune(corpus: Corpus, base: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
             output: str | os.PathLike | None = None, name: str | None = None, resume: bool = False,
             log: Log | None = None, progress: Progress | None = None) -> TrainResult:
    """Fine-tune a pretrained model on the taxonomy (and BINs) of labelled barcodes."""
    return finetune_trainer(corpus, base, config=config, output=output, name=name, resume=resume, log=log,
                            progress=progress).run(resume=resume)


def distill_trainer(corpus: Corpus, teacher: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
                    output: str | os.PathLike | None = None, name: str | None = None, resume: bool = False,
                    log: Log | None = None, progress: Progress | None = None) -> Trainer:
    """A Trainer that distills `teacher` into a smaller encoder of preset `config.preset` (same tokenizer; an
    encoder of another width gets a linear map of its pooled state to the teacher's embedding width), ready to
    `run()`. The teacher runs in bf16 wherever the hardware has it natively."""
    dist, device = init_distributed(config.device)
    if not isinstance(teacher, PretrainedModel):
        teacher = load_model(teacher, device="cpu")
    tokenizer_config = teacher.tokenizer.config
    model_config = model_preset(config.preset, k=tokenizer_config.k, max_tokens=tokenizer_config.max_tokens,
                                mask_ratio=config.mask_ratio)
    # the student's embedding must have the teacher's width: a narrower or wider encoder maps its pooled state to it
    width = teacher.embedding_dim
    model_config = replace(model_config, embedding_width=0 if model_config.encoder_width == width else width)
    torch.manual_seed(config.seed)
    student = student_from_teacher(teacher.model, model_config).to(device)
    task = DistillTask(student, BarcodeMAE(teacher.config, include_decoder=False), resolve_compute(device, "auto"))
    task.teacher.load_state_dict(teacher.model.encoder_state_dict(), strict=True)
    task.to(device)
    output = _prepare_output(output, name, resume)   # after the checks: a refused run leaves no folder
    train_part, val_part = split_validation(corpus, config.val_fraction, config.seed)
    return Trainer(task, train_part, val_part, config, tokenizer_config, RunOutput(output, name, log, progress),
                   dist=dist, device=device, base_card=teacher.card)


def distill(corpus: Corpus, teacher: PretrainedModel | str | os.PathLike, *, config: TrainConfig,
            output: str | os.PathLike | None = None, name: str | None = None, resume: bool = False,
            log: Log | None = None, progress: Progress | None = None) -> TrainResult:
    """Distill a model into a smaller, faster encoder whose embeddings follow the teacher's."""
    return distill_trainer(corpus, teacher, config=config, output=output, name=name, resume=resume, log=log,
                           progress=progress).run(resume=resume)
