"""Pretraining and fine-tuning on CPU: falling loss, outputs, deduplication, determinism, exact resume (also after
kill -9 and an interruption while a checkpoint is written), checkpoint integrity, DDP under torchrun."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.embedding import read_embeddings
from barcodetool.errors import ModelError, OutputError, UsageError
from barcodetool.io import write_fasta
from barcodetool.io.readers import BarcodeRecord, read_barcodes
from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.tokenizer import KmerTokenizer
from barcodetool.model.weights import CARD_FILE, TENSORS_FILE, load_model_folder, read_card, save_model
from barcodetool.train import (CHECKPOINT_DIR, FINETUNE_RANKS, METRICS_FILE, OPTIMIZER_FILE, STATE_FILE, DistillTask,
                               Distributed, MAETask, RunOutput, TrainConfig, Trainer, build_corpus, distill, finetune,
                               pretrain, read_corpus, read_training_state, student_from_teacher)

DATA = Path(__file__).resolve().parent / "data"
BIOSCAN = DATA / "bioscan_sample.csv"

# A short, deterministic run: 12 steps of 8 barcodes, checkpoints at steps 4 and 8 (and the end).
SHORT = TrainConfig(preset="tiny", max_steps=12, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1,
                    checkpoint_every=4, val_fraction=0.05, seed=0, device="cpu")


@pytest.fixture(scope="module")
def corpus():
    return read_corpus([str(BIOSCAN)], KmerTokenizer())


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """SHORT run without interruption: the weights every determinism/resume test must reproduce exactly."""
    output = tmp_path_factory.mktemp("train") / "reference"
    pretrain(corpus, config=SHORT, output=output)
    return output


def weights_of(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(folder) / TENSORS_FILE))


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def read_metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / METRICS_FILE).read_text().splitlines() if line.strip()]


# ============================================================================================ data
def test_build_corpus_deduplicates(corpus):
    summary = corpus.summary
    assert summary["records"] == 249
    assert summary["unique_barcodes"] == len(corpus) == len(set(corpus.sequences)) == 195
    assert summary["duplicates_removed"] == 249 - 195
    assert corpus.tokens.shape == (6, 195, 110) and corpus.lengths.shape == (6, 195)
    # every offset drops that many leading bases
    tok = KmerTokenizer()
    for offset in (0, 5):
        n = int(corpus.lengths[offset, 0])
        assert corpus.tokens[offset, 0, :n].tolist() == tok.encode(corpus.sequences[0], offset=offset).tolist()


def test_build_corpus_labels_and_conflicts():
    seq_a, seq_b = "ACGTAC" * 10, "TTGACA" * 10
    records = [
        BarcodeRecord("r1", seq_a, {"species": "A a", "genus": "A"}, "BOLD:1", None, {}),
        BarcodeRecord("r2", seq_a, {"species": "A b", "genus": "A"}, "BOLD:1", None, {}),  # species conflicts
        BarcodeRecord("r3", seq_b, {"species": "B b", "genus": "B"}, None, None, {}),
        BarcodeRecord("r4", "ACG", {}, None, None, {}),  # shorter than k
    ]
    corpus = build_corpus(records, KmerTokenizer(), label_ranks=("species", "genus", "bin"))
    assert corpus.sequences == [seq_a, seq_b]
    assert corpus.summary["duplicates_removed"] == 1 and corpus.summary["shorter_than_k"] == 1
    names = corpus.label_names
    assert names["genus"] == ["A", "B"] and corpus.labels["genus"].tolist() == [0, 1]
    assert corpus.labels["species"].tolist() == [-1, names["species"].index("B b")]
    assert corpus.labels["bin"].tolist() == [0, -1]
    with pytest.raises(UsageError):
        build_corpus(records[3:], KmerTokenizer())


def test_train_config_is_checked_when_built():
    with pytest.raises(UsageError, match="batch_size must be at least 1"):
        TrainConfig(batch_size=0)
    # every problem at once, also for a copy made with replace()
    with pytest.raises(UsageError, match="mask_ratio must be strictly between 0 and 1.*; log_every"):
        replace(SHORT, mask_ratio=1.0, log_every=0)
    with pytest.raises(UsageError, match="max_steps"):
        TrainConfig(max_steps=0)   # 0 would have fallen back to --epochs
    assert TrainConfig.from_dict(SHORT.to_dict() | {"setting_of_a_newer_version": 1}) == SHORT
    # the command line's choices hold for the library too (these failed only inside pretrain(), or never)
    for setting, value, rule in (("preset", "huge", "one of"), ("device", "tpu", "auto, cpu, cuda or cuda:N"),
                                 ("lr", math.inf, "a finite number"), ("mask_ratio", math.nan, "a finite number")):
        with pytest.raises(UsageError, match=f"{setting} must be {rule}"):
            replace(SHORT, **{setting: value})
    assert replace(SHORT, grad_clip=0.0, device="cuda:1").grad_clip == 0.0     # 0: no clipping, as documented



def test_an_empty_corpus_says_where_its_records_went():
    """--include-splits that matches nothing was reported as "all empty or shorter than k", naming no file."""
    with pytest.raises(UsageError, match=r"in bioscan_sample\.csv: 0 records; \d+ rows left out whose split is not "
                                         r"nosuch \(--include-splits\)"):
        read_corpus([BIOSCAN], KmerTokenizer(), include_splits=["nosuch"])
    with pytest.raises(UsageError, match=r"2 records, 2 of them shorter than k \(6\)"):
        build_corpus([BarcodeRecord("a", "ACG", {}), BarcodeRecord("b", "ACGTA", {})], KmerTokenizer())

# ============================================================================================ pretraining
def test_pretrain_loss_falls_and_writes_outputs(corpus, tmp_path):
    entries = []
    config = replace(SHORT, max_steps=16, checkpoint_every=1000)
    result = pretrain(corpus, config=config, output=tmp_path / "run", name="falling",
                      progress=lambda step, total, entry: entries.append(entry))
    assert result.steps == 16 and len(entries) == 16
    losses = [e["loss"] for e in entries]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert first > 7.5  # about ln(4104) = 8.3 at initialisation
    assert last < first - 0.25, losses  # about 0.5 lower in practice (seeds 0-2)
    folder = tmp_path / "run"
    assert {TENSORS_FILE, CARD_FILE, METRICS_FILE, CHECKPOINT_DIR} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".partial", ".old"))]
    card = read_card(folder)
    training = card["training"]
    assert card["name"] == "falling" and training["kind"] == "pretrain"
    assert training["steps"] == 16 and training["processes"] == 1 and training["batch_size"] == 8
    assert training["data"]["unique_barcodes"] == 195 and training["config"]["preset"] == "tiny"
    accuracy = card["metrics"]["val_masked_token_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    metrics = read_metrics(folder)
    assert [m["step"] for m in metrics[:16]] == list(range(1, 17))
    assert all("loss" in m and "lr" in m for m in metrics[:16])
    assert metrics[-1]["val_masked_token_accuracy"] == pytest.approx(accuracy)
    loaded = load_model_folder(folder)
    assert loaded.name == "falling" and loaded.config == preset("tiny")
    assert loaded.model.include_decoder


def test_trainer_takes_its_model_and_kind_from_the_task(corpus, tmp_path):
    """A Trainer built by hand, as benchmarks/gpu_train.py does, and stepped without run()."""
    torch.manual_seed(0)
    model = BarcodeMAE(preset("tiny"))
    trainer = Trainer(MAETask(model, SHORT.mask_ratio), corpus, None, SHORT, KmerTokenizer().config,
                      RunOutput(tmp_path / "run"), dist=Distributed(), device=torch.device("cpu"))
    assert trainer.model is model and trainer.kind == "pretrain" and trainer.label_ranks == []
    assert trainer.model_name == "run" and trainer.output == tmp_path / "run"
    _, _, rows = trainer.train_step()
    assert trainer.step == 1 and rows == SHORT.batch_size


def test_same_seed_gives_identical_weights(corpus, reference_run, tmp_path):
    pretrain(corpus, config=SHORT, output=tmp_path / "again")
    assert_same_weights(reference_run, tmp_path / "again")
    # and training really changed them
    torch.manual_seed(SHORT.seed)
    initial = BarcodeMAE(preset("tiny")).state_dict()
    trained = weights_of(reference_run)
    assert not torch.equal(initial["token_embedding.weight"], trained["token_embedding.weight"])


def test_resume_after_interrupt_is_exact(corpus, reference_run, tmp_path):
    output = tmp_path / "run"

    def interrupt(step, total, entry):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config=SHORT, output=output, progress=interrupt)
    assert read_training_state(output / CHECKPOINT_DIR)["step"] == 4
    assert not (output / TENSORS_FILE).exists()
    assert [m["step"] for m in read_metrics(output)] == [1, 2, 3, 4, 5, 6]  # 5 and 6 are trained again
    with open(output / METRICS_FILE, "a") as handle:
        handle.write('{"step": 7, "lo')  # a line cut short by a kill
    result = pretrain(corpus, config=SHORT, output=output, resume=True)
    assert result.steps == 12
    assert_same_weights(reference_run, output)
    steps = [m["step"] for m in read_metrics(output)]
    assert steps[:12] == list(range(1, 13)) and steps[12:] == [12]  # each step once, then the evaluation


def test_interrupt_while_writing_a_checkpoint_still_resumes(corpus, reference_run, tmp_path, monkeypatch):
    """An interruption between the files of one checkpoint must not leave a checkpoint that cannot resume."""
    output = tmp_path / "run"
    real_save_file = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        if "optimizer" in Path(filename).name:
            calls.append(filename)
            if len(calls) == 2:  # the optimizer file of the second checkpoint (step 8)
                raise KeyboardInterrupt
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config=SHORT, output=output)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    pretrain(corpus, config=SHORT, output=output, resume=True)
    assert_same_weights(reference_run, output)


def test_corrupt_checkpoint_refused_on_resume(corpus, reference_run, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(reference_run, output)
    path = output / CHECKPOINT_DIR / OPTIMIZER_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        pretrain(corpus, config=SHORT, output=output, resume=True)


def test_resume_with_other_data_refused(corpus, reference_run, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(reference_run, output)
    with pytest.raises(ModelError, match="other data"):
        pretrain(corpus.subset(np.arange(150)), config=SHORT, output=output, resume=True)


def test_existing_run_needs_resume(corpus, reference_run, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(reference_run, output)
    with pytest.raises(UsageError, match="--resume"):
        pretrain(corpus, config=SHORT, output=output)
    with pytest.raises(UsageError, match="no checkpoint"):
        pretrain(corpus, config=SHORT, output=tmp_path / "fresh", resume=True)
    assert not (tmp_path / "fresh").exists()        # a failed resume makes no folder



def test_resuming_a_finished_run_logs_nothing_twice_and_a_folder_is_no_metrics_log(corpus, reference_run, tmp_path):
    """A finished run resumed with the same steps appended a second evaluation line to metrics.jsonl; a folder in
    the metrics log's place ended the run with a bare "[Errno 21] Is a directory"."""
    output = tmp_path / "run"
    shutil.copytree(reference_run, output)
    before = (output / METRICS_FILE).read_text()
    result = pretrain(corpus, config=SHORT, output=output, resume=True)
    assert result.steps == SHORT.max_steps and (output / METRICS_FILE).read_text() == before
    assert_same_weights(reference_run, output)
    (output / METRICS_FILE).unlink()
    (output / METRICS_FILE).mkdir()
    with pytest.raises(OutputError, match=f"{METRICS_FILE} is not a file: .*remove or rename it"):
        pretrain(corpus, config=SHORT, output=output, resume=True)


def test_resume_refuses_fewer_steps_another_reading_and_a_finished_model(corpus, reference_run, tmp_path):
    """Resumed with fewer steps than it has made, a run saved a checkpoint past its own end that no later run could
    read; resumed reading barcodes in another phase, it changed course silently; a folder holding a model (no
    run) was written over, its other files left beside weights they do not describe."""
    output = tmp_path / "run"
    shutil.copytree(reference_run, output)
    done = json.loads((output / CHECKPOINT_DIR / STATE_FILE).read_text())["step"]
    with pytest.raises(UsageError, match=f"at step {done}, past the 3 steps asked"):
        pretrain(corpus, config=replace(SHORT, max_steps=3), output=output, resume=True)
    assert json.loads((output / CHECKPOINT_DIR / STATE_FILE).read_text())["step"] == done     # untouched
    with pytest.raises(UsageError, match="reads barcodes as"):
        pretrain(corpus, config=replace(SHORT, max_steps=done + 2), output=output, resume=True,
                 tokenizer_config=replace(KmerTokenizer().config, phase="coi5p"))
    model = tmp_path / "model"
    shutil.copytree(reference_run, model, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, METRICS_FILE))
    before = (model / TENSORS_FILE).read_bytes()
    with pytest.raises(UsageError, match="already holds a model"):
        pretrain(corpus, config=SHORT, output=model)
    assert (model / TENSORS_FILE).read_bytes() == before


def test_a_run_cannot_take_the_name_of_a_bundled_model(corpus, tmp_path, monkeypatch):
    """Trained under a bundled model's name into the user models folder, a model could never be loaded by name."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(UsageError, match="'barcodemae-nano' names a bundled model"):
        pretrain(corpus, config=SHORT, name="barcodemae-nano")
    assert not list(tmp_path.rglob(CARD_FILE))

# ============================================================================================ fine-tuning
def test_finetune_reports_taxonomy_accuracy(tiny_model_dir, tmp_path):
    labelled = read_corpus([str(BIOSCAN)], KmerTokenizer(), label_ranks=FINETUNE_RANKS)
    assert labelled.label_names["species"] and labelled.label_names["genus"]
    config = replace(SHORT, max_steps=6, batch_size=16, val_fraction=0.1)
    result = finetune(labelled, tiny_model_dir, config=config, output=tmp_path / "ft")
    for rank in ("species", "genus"):
        assert 0.0 <= result.metrics[f"val_{rank}_accuracy"] <= 1.0
    card = read_card(tmp_path / "ft")
    assert card["training"]["kind"] == "finetune" and card["training"]["base_model"] == "tiny-test"
    assert "val_species_accuracy" in card["metrics"] and "val_genus_accuracy" in card["metrics"]
    before = load_model_folder(tiny_model_dir).model.token_embedding.weight
    after = load_model_folder(tmp_path / "ft").model.token_embedding.weight
    assert not torch.equal(before, after)


def test_finetune_needs_labels(tiny_model_dir, corpus, tmp_path):
    with pytest.raises(UsageError, match="labelled"):
        finetune(corpus, tiny_model_dir, config=SHORT, output=tmp_path / "ft")


# ============================================================================================ distillation
def test_student_starts_from_the_teachers_first_and_last_blocks():
    torch.manual_seed(0)
    teacher = BarcodeMAE(preset("tiny", encoder_layers=4), include_decoder=False)
    student = student_from_teacher(teacher, preset("tiny", encoder_layers=2))
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():
        if name.startswith("encoder_blocks."):
            _, layer, rest = name.split(".", 2)
            source = f"encoder_blocks.{[0, 3][int(layer)]}.{rest}"
        else:
            source = name
        assert torch.equal(tensor, teacher_state[source]), name
    # another width: a fresh student, not a partial copy
    other = student_from_teacher(teacher, preset("tiny", encoder_width=16))
    assert other.config.encoder_width == 16 and not other.include_decoder


def test_distill_task_loss_is_one_minus_cosine_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = BarcodeMAE(preset("tiny"), include_decoder=False)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids = torch.randint(5, 100, (3, 12))
    lengths = torch.tensor([12, 9, 5])
    # a student identical to the teacher has cosine 1 and loss 0
    task = DistillTask(student_from_teacher(teacher, teacher.config), teacher)
    loss, stats = task(ids, lengths)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and float(stats[0]) == pytest.approx(3.0, abs=1e-5)
    student = BarcodeMAE(preset("tiny"), include_decoder=False)
    task = DistillTask(student, teacher).train()
    assert not task.teacher.training and task.model.training
    loss, _ = task(ids, lengths)
    expected = 1 - torch.nn.functional.cosine_similarity(student.embed(ids, lengths),
                                                         teacher.embed(ids, lengths)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(UsageError, match="embedding width"):
        DistillTask(BarcodeMAE(preset("tiny", encoder_width=16), include_decoder=False), teacher)


def test_distill_brings_the_student_towards_the_teacher(corpus, tmp_path):
    # a 3-layer teacher: the 2-layer `tiny` student starts from its first and last blocks and must learn the rest
    torch.manual_seed(1)
    teacher = BarcodeMAE(preset("tiny", encoder_layers=3))
    save_model(teacher, KmerTokenizer().config, tmp_path / "teacher", name="teacher-3")
    config = replace(SHORT, max_steps=20, batch_size=16, lr=1e-3, val_fraction=0.1, checkpoint_every=100)
    result = distill(corpus, tmp_path / "teacher", config=config, output=tmp_path / "student")
    cosine = [entry["teacher_cosine"] for entry in read_metrics(tmp_path / "student") if "teacher_cosine" in entry]
    assert np.mean(cosine[-3:]) > np.mean(cosine[:3]) + 0.05   # 0.83 -> 0.95 in this run
    assert 0.0 < result.metrics["val_teacher_cosine"] <= 1.0
    card = read_card(tmp_path / "student")
    assert card["training"]["kind"] == "distill" and card["training"]["base_model"] == "teacher-3"
    assert card["parts"] == ["encoder"] and card["model_config"]["encoder_layers"] == 2
    assert load_model_folder(tmp_path / "student").tokenizer.config == KmerTokenizer().config



def test_distill_resume_refuses_another_teacher(corpus, tmp_path):
    for seed, name in ((3, "teacher-a"), (4, "teacher-b")):
        torch.manual_seed(seed)
        save_model(BarcodeMAE(preset("tiny", encoder_layers=3)), KmerTokenizer().config, tmp_path / name, name=name)
    config = replace(SHORT, max_steps=2, checkpoint_every=1)
    distill(corpus, tmp_path / "teacher-a", config=config, output=tmp_path / "student")
    with pytest.raises(UsageError, match="started from model 'teacher-a', this one from 'teacher-b'"):
        distill(corpus, tmp_path / "teacher-b", config=replace(config, max_steps=4), output=tmp_path / "student",
                resume=True)

def test_distill_resume_after_interrupt_is_exact(corpus, tmp_path):
    torch.manual_seed(2)
    save_model(BarcodeMAE(preset("tiny", encoder_layers=3)), KmerTokenizer().config, tmp_path / "teacher",
               name="teacher-3")
    config = replace(SHORT, max_steps=8, checkpoint_every=3)
    distill(corpus, tmp_path / "teacher", config=config, output=tmp_path / "straight")

    def interrupt(step, total, entry):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(corpus, tmp_path / "teacher", config=config, output=tmp_path / "resumed", progress=interrupt)
    assert read_training_state(tmp_path / "resumed" / CHECKPOINT_DIR)["kind"] == "distill"
    result = distill(corpus, tmp_path / "teacher", config=config, output=tmp_path / "resumed", resume=True)
    assert result.steps == 8
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    # a distillation checkpoint is not a pretraining one
    with pytest.raises(ModelError, match="distill"):
        pretrain(corpus, config=replace(config, max_steps=10), output=tmp_path / "resumed", resume=True)


def test_distill_cli_writes_a_student_and_maps_another_width(tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "distill", str(BIOSCAN), "--teacher", str(tiny_model_dir), "--preset",
                                  "tiny", "--max-steps", "3", "--batch-size", "8", "--device", "cpu",
                                  "--threads", "1", "-o", str(tmp_path / "student")])
    assert result.exit_code == 0, result.output
    assert read_card(tmp_path / "student")["training"]["kind"] == "distill"
    # the masking ratio has no meaning for distillation: refused rather than ignored
    result = runner.invoke(main, ["-q", "distill", str(BIOSCAN), "--teacher", str(tiny_model_dir), "--mask-ratio",
                                  "0.6", "-o", str(tmp_path / "masked")])
    assert result.exit_code == 2 and "--mask-ratio does not apply to distill" in result.output
    assert not (tmp_path / "masked").exists()
    # a wider student (128) learns the 32-wide teacher's embedding through a linear map of its pooled state
    result = runner.invoke(main, ["-q", "distill", str(BIOSCAN), "--teacher", str(tiny_model_dir), "--preset",
                                  "mini", "--max-steps", "2", "--batch-size", "8", "--device", "cpu",
                                  "--threads", "1", "-o", str(tmp_path / "wide")])
    assert result.exit_code == 0, result.output
    wide = load_model_folder(tmp_path / "wide")
    assert wide.config.encoder_width == 128 and wide.embedding_dim == 32
    assert wide.card["model_config"]["embedding_width"] == 32
    result = runner.invoke(main, ["embed", str(BIOSCAN), "--model", str(tmp_path / "wide"), "--device", "cpu",
                                  "--threads", "1", "-o", str(tmp_path / "wide.h5")])
    assert result.exit_code == 0, result.output
    assert "(2 layers, width 128, embedding 32)" in result.output
    assert read_embeddings(tmp_path / "wide.h5").embeddings.shape[1] == 32


# ============================================================================================ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLI_TRAIN = [str(BIOSCAN), "--preset", "tiny", "--max-steps", "20", "--batch-size", "8", "--checkpoint-every", "5",
             "--log-every", "1", "--lr", "0.003", "--device", "cpu", "--threads", "1", "--seed", "0"]


@pytest.mark.slow
def test_kill_9_then_resume_is_exact(tmp_path, subprocess_env):
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "barcodetool", "-q", "train", *CLI_TRAIN, "-o", str(killed)]
    process = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        state = killed / CHECKPOINT_DIR / STATE_FILE
        deadline = time.monotonic() + 90
        while not state.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / TENSORS_FILE).exists()  # the run really was cut short
    assert read_training_state(killed / CHECKPOINT_DIR)["step"] < 20

    resumed = subprocess.run(command + ["--resume"], env=subprocess_env, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr

    reference = tmp_path / "reference"
    result = CliRunner().invoke(main, ["-q", "train", *CLI_TRAIN, "-o", str(reference)])
    assert result.exit_code == 0, result.output
    assert read_card(reference)["training"]["steps"] == read_card(killed)["training"]["steps"] == 20
    assert_same_weights(reference, killed)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, subprocess_env):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "barcodetool", "-q", "train", str(BIOSCAN), "--preset", "tiny",
               "--max-steps", "6", "--batch-size", "8", "--device", "cpu", "--threads", "1", "-o", str(output)]
    done = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_model_folder(output)
    training = loaded.card["training"]
    assert training["processes"] == 2 and training["steps"] == 6
    assert training["batch_size"] == 16  # 8 per process
    assert read_training_state(output / CHECKPOINT_DIR)["world_size"] == 2


@pytest.mark.slow
def test_ddp_processes_that_read_different_data_stop_with_one_error(tmp_path, subprocess_env):
    """Each process reads DATA itself; one machine's differing copy trained that process on other barcodes, and a
    different count gave it another number of steps (a hang at the last collective). Two processes reading 40
    and 39 records of one file end at once, each with the same one-line error, and write nothing."""
    records = list(read_barcodes(BIOSCAN, skip_empty=True))[:40]
    for rank, part in enumerate((records, records[:-1])):
        with open(tmp_path / f"data{rank}.fasta", "w", encoding="utf-8") as handle:
            write_fasta(part, handle)
    script = tmp_path / "each_rank.py"
    script.write_text("import os, sys\nfrom barcodetool.cli import main\n"
                      "sys.argv = ['barcodetool', '-q', 'train', os.path.join(sys.argv[1], 'data' + os.environ['RANK'] "
                      "+ '.fasta'), '--preset', 'tiny', '--max-steps', '2', '--batch-size', '4', '--device', 'cpu', "
                      "'--threads', '1', '-o', os.path.join(sys.argv[1], 'run')]\nmain()\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), str(tmp_path)]
    done = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("barcodetool: ")]
    assert len(errors) == 2 and errors[0] == errors[1], done.stderr[-3000:]
    counts = re.search(r"read different training data: rank 0 ([\d,]+) barcodes, sha256 \w+\.\.\., "
                       r"rank 1 ([\d,]+) barcodes", errors[0])
    assert counts and int(counts[1]) == int(counts[2]) + 1, errors[0]     # (the validation part held out)
    assert "barcodetool/" not in done.stderr        # no traceback of ours (torchrun prints its own ChildFailedError)
    assert not (tmp_path / "run" / "checkpoint").exists()


# ============================================================================================ supervised contrastive
def test_supcon_step_on_a_tiny_model_reads_in_phase_and_resumes(tiny_model_dir, tmp_path):
    from barcodetool.model.weights import load_model
    from barcodetool.train import SUPCON_RANKS, GroupSampler, supcon, supcon_tokenizer

    base = load_model(tiny_model_dir)
    tokenizer = KmerTokenizer(supcon_tokenizer(base, "coi5p"))
    labelled = read_corpus([str(BIOSCAN)], tokenizer, label_ranks=SUPCON_RANKS)
    config = replace(SHORT, max_steps=2, genera_per_batch=4, barcodes_per_genus=2)
    result = supcon(labelled, base, config=config, output=tmp_path / "sc", phase="coi5p")
    assert result.steps == 2 and np.isfinite(read_metrics(tmp_path / "sc")[-1]["loss"])
    card = read_card(tmp_path / "sc")
    assert card["training"]["kind"] == "supcon" and card["tokenizer_config"]["phase"] == "coi5p"
    assert card["training"]["config"]["temperature"] == 0.1 and card["training"]["batch_size"] == 8
    after = load_model_folder(tmp_path / "sc")
    assert after.tokenizer.config.in_phase
    assert not torch.equal(base.model.token_embedding.weight, after.model.token_embedding.weight)
    with pytest.raises(UsageError, match="resume"):
        supcon(labelled, base, config=config, output=tmp_path / "sc", phase="coi5p")
    resumed = supcon(labelled, base, config=replace(config, max_steps=3), output=tmp_path / "sc", phase="coi5p",
                     resume=True)
    assert resumed.steps == 3 and read_training_state(tmp_path / "sc" / CHECKPOINT_DIR)["kind"] == "supcon"
    # each batch: genera x barcodes, with same-species pairs; the same rows for the same seed
    sampler = GroupSampler(labelled.labels["genus"], labelled.labels["species"], 4, 4)
    rows = sampler.rows(7)
    assert len(rows) == 16 and len(set(labelled.labels["genus"][rows].tolist())) == 4
    np.testing.assert_array_equal(rows, sampler.rows(7))


def test_supcon_loss_prefers_labelled_neighbours():
    from barcodetool.train import supcon_loss

    labels = torch.tensor([0, 0, 1, 1, -1])
    together = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0],
                                                           [1.0, 1.0]]), dim=-1)
    apart = together[[0, 2, 1, 3, 4]]
    good, correct = supcon_loss(together, labels, 0.1)
    bad, _ = supcon_loss(apart, labels, 0.1)
    assert float(good) < float(bad) and int(correct) == 4


def test_train_cli_supcon_objective(tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--objective", "supcon", "-o", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--init" in result.output
    result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--objective", "supcon", "--init", str(tiny_model_dir),
                                  "--phase", "coi5p", "--max-steps", "1", "--genera-per-batch", "3",
                                  "--barcodes-per-genus", "2", "-o", str(tmp_path / "sc"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    card = read_card(tmp_path / "sc")
    assert card["training"]["kind"] == "supcon" and card["training"]["batch_size"] == 6
    assert card["tokenizer_config"]["phase"] == "coi5p"


def test_standard_input_is_refused_under_torchrun(tmp_path, monkeypatch):
    """Under torchrun every process read its own part of the one stream (rank 0 512 records, rank 1 the rest) and
    the run ended in gloo's collective-mismatch abort with a traceback per process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    fasta = "".join(f">r{i}\n{'ACGTTGCA' * 20}\n" for i in range(20))
    result = CliRunner().invoke(main, ["-q", "train", "-", "-o", str(tmp_path / "run"), "--preset", "tiny",
                                       "--max-steps", "1", "--device", "cpu"], input=fasta)
    assert result.exit_code == 2 and "cannot be read under torchrun" in result.output, result.output
    assert not (tmp_path / "run").exists()
