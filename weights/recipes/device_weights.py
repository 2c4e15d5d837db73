"""One-shot GPU job: measure training speed, train the default weights, evaluate them, measure embedding speed.

Made for a single short lease of one H100 (about 9 minutes of wall time), so every phase has a time budget
and results are written under --out as soon as they exist:

    1. data        pretraining corpus: bold_insects splits train, val, pretrain + all of coi_extra (unique
                   barcodes); fine-tuning corpus: bold_insects train + val, and coi_extra records whose species
                   is not one of the held-out (`key_unseen`/`test_unseen`) species. `test`, `test_unseen` and
                   `key_unseen` barcodes are never trained on.
    2-3. base      MAE pretraining (bf16, fused AdamW, eager unless --compile; its throughput measured over 30 steps
                   after warm-up, then the run sized to its time budget), then taxonomy fine-tuning
    4. fast        the same for the CPU default preset
    5. package     barcodemae-base (encoder, int8 rows) and barcodemae-fast (fp16) model folders
    6. eval        quick_eval.py (beside this script) on the shared split for every stage and weight format
    7. embed       benchmarks/gpu_embed.py: model-only and end-to-end embedding throughput; then, time allowing,
                   benchmarks/gpu_train.py's eager (uncompiled) training throughput for comparison

    python weights/recipes/device_weights.py --data-dir .devdata --out "$OUT"            # on the GPU
    python weights/recipes/device_weights.py --data-dir .devdata --out /tmp/dry --dry-run  # CPU rehearsal, tiny presets

corpora.py and quick_eval.py are imported as siblings (Python puts this script's folder first on sys.path); the
two benchmarks/ scripts are imported by their path (benchmark_script).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch

T0 = time.perf_counter()
LOG_HANDLE = None
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_script(name: str):
    """benchmarks/<name>.py imported by its path (that folder is not on sys.path when this script runs), under its
    own name, so that its imports of its siblings (gpu_embed's `from gpu_train import ...`) find them once loaded."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def log(message: str) -> None:
    line = f"[{time.perf_counter() - T0:7.1f}s] {message}"
    print(line, flush=True)
    if LOG_HANDLE:
        LOG_HANDLE.write(line + "\n")
        LOG_HANDLE.flush()


def elapsed() -> float:
    return time.perf_counter() - T0


class Results(dict):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def save(self):
        self.path.write_text(json.dumps(self, indent=1, default=str))


def phase(results: Results, name: str):
    """Decorator-free guard: run fn, record its result or its traceback, never stop the job."""

    def run(fn, *args, **kwargs):
        start = time.perf_counter()
        log(f"--- {name}")
        try:
            value = fn(*args, **kwargs)
            results[name] = value if value is not None else "ok"
            return value
        except Exception as error:  # a failed phase must not lose the phases after it
            results[name] = {"error": f"{error.__class__.__name__}: {error}", "traceback": traceback.format_exc()}
            log(f"!!! {name} failed: {error}\n{traceback.format_exc()}")
            return None
        finally:
            results.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - start, 1)
            results.save()

    return run


def main():
    global LOG_HANDLE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=".devdata")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/barcodetool-work")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=530.0, help="seconds for the whole job")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile base pretraining: 7,893 vs 5,957 barcodes/s on an H100, but the first "
                             "compilation took 249 s there, which a 9-minute job cannot afford")
    args = parser.parse_args()

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    LOG_HANDLE = open(out / "log.txt", "w")
    results = Results(out / "results.json")
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    big, small = ("tiny", "tiny") if dry else ("base", "fast")

    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.model.weights import load_model, save_model
    from barcodetool.train import FINETUNE_RANKS, TrainConfig, build_corpus

    results["env"] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                      "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                      "dry_run": dry}
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer = KmerTokenizer()
    data = Path(args.data_dir)

    # ------------------------------------------------------------------ 1. data
    def load_data():
        from corpora import (FINE_TUNING_SPLITS, PRETRAINING_SPLITS, SOURCES, fine_tuning_records, pretraining_records,
                             read_shared)

        insects, extra = read_shared(data, limit=4000 if dry else None)
        corpora["pretrain"] = build_corpus(pretraining_records(insects, extra), tokenizer, sources=SOURCES)
        corpora["pretrain"].summary["splits"] = PRETRAINING_SPLITS
        corpora["finetune"] = build_corpus(fine_tuning_records(insects, extra), tokenizer,
                                           label_ranks=FINETUNE_RANKS, sources=SOURCES)
        corpora["finetune"].summary["splits"] = FINE_TUNING_SPLITS
        from quick_eval import load_split

        corpora["splits"] = load_split(str(data / "bold_insects.csv.gz"))
        if dry:  # a few hundred barcodes per split keep the CPU rehearsal short
            corpora["splits"] = {name: {key: values[:300] for key, values in part.items()}
                                 for name, part in corpora["splits"].items()}
        return {"pretrain": corpora["pretrain"].summary, "finetune": corpora["finetune"].summary,
                "eval_unique": {k: len(v["seq"]) for k, v in corpora["splits"].items()}}

    corpora: dict = {}
    phase(results, "data")(load_data)

    # ------------------------------------------------------------------ 2-4. train (throughput measured in-run)
    def measured_run(trainer, planned_seconds: float, measure_steps: int, warm_steps: int):
        """Step a fresh trainer through warm-up (compile) and a timed window, size the run from the measured
        rate, then let it finish. Warm-up uses a fixed number of LR warm-up steps, so sizing the run afterwards
        changes nothing already done."""
        batch = trainer.global_batch
        start = time.perf_counter()
        for _ in range(warm_steps):
            loss, _, _ = trainer.train_step()
        float(loss.detach())
        warm_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(measure_steps):
            loss, _, _ = trainer.train_step()
        float(loss.detach())
        seconds = time.perf_counter() - start
        rate = measure_steps * batch / seconds
        remaining = planned_seconds - warm_seconds - seconds
        trainer.total_steps = max(trainer.step + 10, trainer.step + int(remaining * rate / batch))
        log(f"measured {rate:.0f} barcodes/s (warm-up {warm_seconds:.1f} s); running to step {trainer.total_steps}")
        result = trainer.run()
        return result, {"barcodes_per_s": round(rate, 1), "warmup_seconds": round(warm_seconds, 1),
                        "batch_size": batch, "steps_timed": measure_steps}

    def train_pair(label: str, preset_name: str, batch: int, pre_seconds: float, tune_seconds: float,
                   lr: float, tune_lr: float, compile_: bool):
        from barcodetool.model.mae import preset as model_preset
        from barcodetool.model.mae import training_flops_per_barcode
        from barcodetool.train import finetune_trainer, pretrain_trainer

        pre_dir, tune_dir = work / f"{label}-pretrained", work / f"{label}"
        config = TrainConfig(preset=preset_name, max_steps=10 ** 6, batch_size=batch, lr=lr, device=device,
                             compile=compile_, checkpoint_every=10 ** 9, log_every=25, val_fraction=0.02,
                             warmup_steps=100, max_minutes=pre_seconds * 1.2 / 60, seed=0)
        def attempt(config):
            trainer = pretrain_trainer(corpora["pretrain"], config=config, output=pre_dir,
                                       name=f"barcodemae-{label}", log=log,
                                       progress=lambda s, t, e: log(json.dumps(e)) if s % 200 == 0 else None)
            return measured_run(trainer, pre_seconds, 8 if dry else 30, 3 if dry else 10)

        try:
            result, speed = attempt(config)
        except Exception as error:
            if not compile_:
                raise
            log(f"!!! compiled pretraining failed ({error.__class__.__name__}: {error}); retrying eager\n"
                f"{traceback.format_exc()}")
            results[f"train_{label}_compile_error"] = traceback.format_exc()
            shutil.rmtree(pre_dir, ignore_errors=True)
            torch._dynamo.reset()
            compile_ = False
            config.compile = False
            result, speed = attempt(config)
        speed["model_tflops"] = round(speed["barcodes_per_s"] * training_flops_per_barcode(
            model_preset(preset_name)) / 1e12, 1)
        speed["compile"] = compile_
        summary = {"pretrain": {"steps": result.steps, "seconds": round(result.seconds, 1),
                                "barcodes_seen": result.barcodes_seen, "metrics": result.metrics,
                                "throughput": speed, "stopped_early": result.stopped_early}}
        log(f"{label}: pretrained {summary}")
        results[f"train_{label}_partial"] = summary
        results.save()
        config = TrainConfig(preset=preset_name, max_steps=10 ** 6, batch_size=batch, lr=tune_lr, device=device,
                             compile=False, checkpoint_every=10 ** 9, log_every=25, val_fraction=0.02,
                             warmup_steps=50, max_minutes=tune_seconds * 1.2 / 60, seed=1, mae_weight=0.25)
        trainer = finetune_trainer(corpora["finetune"], str(pre_dir), config=config, output=tune_dir,
                                   name=f"barcodemae-{label}", log=log,
                                   progress=lambda s, t, e: log(json.dumps(e)) if s % 100 == 0 else None)
        result, speed = measured_run(trainer, tune_seconds, 5 if dry else 15, 2 if dry else 5)
        summary["finetune"] = {"steps": result.steps, "seconds": round(result.seconds, 1),
                               "barcodes_seen": result.barcodes_seen, "metrics": result.metrics,
                               "throughput": speed, "stopped_early": result.stopped_early}
        log(f"{label}: fine-tuned {summary['finetune']}")
        return summary

    if dry:
        base_pre, base_tune = 8.0, 5.0
    else:  # reserve fast 80 s, package 10 s, eval 55 s, benchmarks 45 s; base gets the rest, 72% pretraining
        base_total = max(60.0, args.budget - elapsed() - 190.0)
        base_pre, base_tune = 0.72 * base_total, 0.28 * base_total
    phase(results, "train_base")(train_pair, "base", big, 64 if dry else 1024, base_pre, base_tune, 6e-4, 2e-4,
                                 args.compile and not dry)
    phase(results, "train_fast")(train_pair, "fast", small, 64 if dry else 2048, 6.0 if dry else 48.0,
                                 4.0 if dry else 32.0, 2e-3, 5e-4, False)

    # ------------------------------------------------------------------ 5. package
    def package():
        folder = work / "weights"
        folder.mkdir(exist_ok=True)
        made = {}
        for label, dtype, decoder in (("base", "int8", False), ("fast", "float16", True)):
            source = work / label
            if not (source / "barcodetool.json").exists():
                continue
            trained = load_model(source, device="cpu")
            target = folder / f"barcodemae-{label}"
            save_model(trained.model, trained.tokenizer.config, target, name=f"barcodemae-{label}", dtype=dtype,
                       include_decoder=decoder, training=trained.card.get("training"),
                       metrics=trained.card.get("metrics"))
            for stage in ("pretrained", ""):
                metrics_file = work / (f"{label}-{stage}" if stage else label) / "metrics.jsonl"
                if metrics_file.exists():
                    shutil.copy(metrics_file, folder / f"{label}{'-' + stage if stage else ''}-metrics.jsonl")
            made[label] = {"bytes": (target / "model.safetensors").stat().st_size}
        pre_fast = work / "fast-pretrained"
        if (pre_fast / "barcodetool.json").exists():
            trained = load_model(pre_fast, device="cpu")
            save_model(trained.model, trained.tokenizer.config, folder / "fast-pretrained", dtype="float16",
                       include_decoder=True, training=trained.card.get("training"),
                       metrics=trained.card.get("metrics"))
        archive = work / "weights.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="weights")
        # The device returns files of at most 16 MiB: split the archive.
        part_size, index = 15 * 2 ** 20, 0
        with open(archive, "rb") as handle:
            while chunk := handle.read(part_size):
                (out / f"weights.tar.part{index}").write_bytes(chunk)
                index += 1
        made["parts"] = index
        return made

    phase(results, "package")(package)

    # ------------------------------------------------------------------ 6. evaluation
    def evaluate():
        from quick_eval import evaluate_embeddings

        from barcodetool.embedding import embed_sequences

        splits = corpora["splits"]
        found = {}
        # What ships first (int8 base, float16 fast), then the stages that explain it.
        variants = [("base_int8", work / "weights" / "barcodemae-base", True),
                    ("fast_fp16", work / "weights" / "barcodemae-fast", True),
                    ("base_float32", work / "base", False), ("base_pretrained", work / "base-pretrained", False),
                    ("fast_pretrained", work / "fast-pretrained", False)]
        for label, path, ami in variants:
            if not (path / "barcodetool.json").exists() or elapsed() > args.budget - 25:
                continue
            model = load_model(path, device=device)
            start = time.perf_counter()
            emb = {s: embed_sequences(model, splits[s]["seq"], batch_size=1024)
                   for s in ("train", "test", "test_unseen")}
            seconds = time.perf_counter() - start
            found[label] = evaluate_embeddings(emb, splits, ami=ami) | {"embed_seconds": round(seconds, 2)}
            log(f"eval {label}: {json.dumps(found[label])}")
            results["eval_partial"] = found
            results.save()
        return found

    phase(results, "eval")(evaluate)

    # ------------------------------------------------------------------ 7. embedding throughput
    def bench_embed():
        benchmark_script("gpu_train")   # gpu_embed.measure_model imports synthetic_sequences from it
        gpu_embed = benchmark_script("gpu_embed")
        measure_model, measure_end_to_end = gpu_embed.measure_model, gpu_embed.measure_end_to_end

        path = work / "weights" / "barcodemae-base"
        if not path.exists():
            path = work / "base"
        model = load_model(path, device=device)
        found = {"model_only_eager": measure_model(model, batch_size=256 if dry else 2048,
                                                   batches=3 if dry else 20)}
        log(f"embed {found}")
        found["end_to_end"] = measure_end_to_end(model, str(data / ("example.fasta" if dry else "bold_insects.csv.gz")),
                                                 batch_size=256 if dry else 2048)
        log(f"embed {found}")
        if not dry and elapsed() < args.budget - 40:
            found["model_only_compiled"] = measure_model(model, batch_size=2048, batches=20, compile=True)
            log(f"embed {found}")
        return found

    if elapsed() < args.budget - 15:
        phase(results, "bench_embed")(bench_embed)
    def bench_train(compile_: bool):
        measure_training = benchmark_script("gpu_train").measure_training

        return measure_training(corpora["pretrain"], preset=big, batch_size=64 if dry else 1024,
                                steps=5 if dry else 20, warmup=2 if dry else 5, compile=compile_, device=device)

    if elapsed() < args.budget - 30:
        phase(results, "bench_train_base_eager")(bench_train, False)
    results["total_seconds"] = round(elapsed(), 1)
    results.save()
    log("done")


if __name__ == "__main__":
    main()
