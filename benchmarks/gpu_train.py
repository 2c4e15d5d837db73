"""Training throughput of `barcodetool train` on one GPU: barcodes/s and model TFLOP/s.

Runs the library's own Trainer (the code path of `barcodetool train`) for --warmup + --steps optimizer steps on
real barcodes (--data, a table or FASTA) or on synthetic 658-nt barcodes, and times the last --steps with the
device synchronized. Model FLOPs count matmuls (forward + backward = 3x forward), as in the issue's floor.

    python benchmarks/gpu_train.py --preset base --batch-size 1024 --compile
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def synthetic_sequences(n: int, length: int = 658, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    return [letters[rng.integers(0, 4, length)].tobytes().decode() for _ in range(n)]


def measure_training(corpus=None, *, preset: str = "base", batch_size: int = 1024, steps: int = 30,
                     warmup: int = 10, compile: bool = True, device: str = "cuda", lr: float = 5e-4) -> dict:
    from barcodetool.model.mae import BarcodeMAE, training_flops_per_barcode
    from barcodetool.model.mae import preset as model_preset
    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.train import Distributed, MAETask, RunOutput, TrainConfig, Trainer, build_corpus

    torch_device = torch.device(device)
    tokenizer = KmerTokenizer()
    if corpus is None:
        from types import SimpleNamespace

        records = [SimpleNamespace(id=str(i), sequence=s, taxonomy={}, bin=None)
                   for i, s in enumerate(synthetic_sequences(batch_size * 4))]
        corpus = build_corpus(records, tokenizer)
    config = TrainConfig(preset=preset, max_steps=warmup + steps, batch_size=batch_size, lr=lr, compile=compile,
                         device=device, val_fraction=0.0)
    model_config = model_preset(preset)
    torch.manual_seed(0)
    model = BarcodeMAE(model_config).to(torch_device)
    with tempfile.TemporaryDirectory() as output:
        trainer = Trainer(MAETask(model, config.mask_ratio), corpus, None, config, tokenizer.config,
                          RunOutput(output), dist=Distributed(), device=torch_device)
        start = time.perf_counter()
        for _ in range(warmup):
            loss, _, _ = trainer.train_step()
        float(loss.detach())
        warm_seconds = time.perf_counter() - start
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            loss, _, _ = trainer.train_step()
        final_loss = float(loss.detach())  # synchronizes
        seconds = time.perf_counter() - start
    rate = steps * trainer.local_batch / seconds
    flops = training_flops_per_barcode(model_config)
    return {"preset": preset, "batch_size": batch_size, "compile": compile, "steps": steps,
            "warmup_seconds": round(warm_seconds, 2), "barcodes_per_s": round(rate, 1),
            "model_tflops": round(rate * flops / 1e12, 1), "gflop_per_barcode": round(flops / 1e9, 2),
            "loss": round(final_loss, 4), "device": torch.cuda.get_device_name() if torch_device.type == "cuda"
            else "cpu", "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            if torch_device.type == "cuda" else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", help="table or FASTA of real barcodes (default: synthetic 658-nt barcodes)")
    args = parser.parse_args()
    corpus = None
    if args.data:
        from barcodetool.model.tokenizer import KmerTokenizer
        from barcodetool.train import read_corpus

        corpus = read_corpus([args.data], KmerTokenizer())
    result = measure_training(corpus, preset=args.preset, batch_size=args.batch_size, steps=args.steps,
                              warmup=args.warmup, compile=args.compile, device=args.device)
    print(json.dumps(result))
    print(f"{result['preset']}: {result['barcodes_per_s']:.0f} barcodes/s, {result['model_tflops']:.0f} model "
          f"TFLOP/s on {result['device']}")


if __name__ == "__main__":
    main()
