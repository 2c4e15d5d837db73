"""Embedding throughput on one GPU: the model alone and `barcodetool embed` end to end.

Model alone: pre-tokenized full-length batches through the encoder (bf16, inference mode), timed with the device
synchronized. End to end: the library call behind `barcodetool embed` (read table/FASTA, clean, tokenize,
embed, write HDF5) on --data. Prints barcodes/s and model TFLOP/s.

    python benchmarks/gpu_embed.py --model barcodemae-base --data ../shared/data/bold_insects.csv.gz
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def measure_model(pretrained, *, batch_size: int = 2048, batches: int = 20, compile: bool = False) -> dict:
    from gpu_train import synthetic_sequences

    from barcodetool.model.mae import embedding_flops_per_barcode
    from barcodetool.model.runtime import autocast

    device = next(pretrained.model.parameters()).device
    ids, lengths = pretrained.tokenizer.encode_batch(synthetic_sequences(batch_size, 660), pad_to=None)
    ids_t, lengths_t = torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)
    embed = torch.compile(pretrained.model.embed) if compile else pretrained.model.embed
    with torch.inference_mode(), autocast(device):
        for _ in range(3):
            out = embed(ids_t, lengths_t)
        float(out.sum())
        start = time.perf_counter()
        for _ in range(batches):
            out = embed(ids_t, lengths_t)
        float(out.sum())
        seconds = time.perf_counter() - start
    rate = batches * batch_size / seconds
    flops = embedding_flops_per_barcode(pretrained.config, ids.shape[1])
    return {"batch_size": batch_size, "compile": compile, "barcodes_per_s": round(rate, 1),
            "model_tflops": round(rate * flops / 1e12, 1), "gflop_per_barcode": round(flops / 1e9, 2)}


def measure_end_to_end(pretrained, data: str, *, batch_size: int = 2048) -> dict:
    from barcodetool.embedding import embed_file

    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "out.h5")
        start = time.perf_counter()
        summary = embed_file(data, output, pretrained, batch_size=batch_size)
        seconds = time.perf_counter() - start
    return {"records": summary.count, "seconds": round(seconds, 2),
            "barcodes_per_s": round(summary.count / seconds, 1), "batch_size": batch_size}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="barcodemae-base")
    parser.add_argument("--preset", help="measure a randomly initialised model of this preset instead")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", help="table or FASTA for the end-to-end run")
    args = parser.parse_args()
    from barcodetool.model.mae import BarcodeMAE, preset
    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.model.weights import PretrainedModel, load_model

    if args.preset:
        model = BarcodeMAE(preset(args.preset), include_decoder=False).to(args.device).eval()
        pretrained = PretrainedModel(model=model, tokenizer=KmerTokenizer(), name=args.preset, sha256="")
    else:
        pretrained = load_model(args.model, device=args.device)
    result = {"model": pretrained.name, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else "cpu", "model_only": measure_model(pretrained, batch_size=args.batch_size, compile=args.compile)}
    if args.data:
        result["end_to_end"] = measure_end_to_end(pretrained, args.data, batch_size=args.batch_size)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
