"""Record sets of the shared data that the bundled weights were trained on (device_weights.py, distill_mini.py).

Pretraining may read every insect barcode outside the test splits and all of coi_extra; fine-tuning and
distillation read `train` and `val` and only the coi_extra records whose species is not held out as a new species
(`test_unseen` / `key_unseen`), so that no test split's species is learnt from its labels or its teacher.
"""

from __future__ import annotations

from pathlib import Path

SOURCES = ["bold_insects.csv.gz", "coi_extra.csv.gz"]
PRETRAINING_SPLITS = ["bold_insects: train, val, pretrain", "coi_extra: all"]
FINE_TUNING_SPLITS = ["bold_insects: train, val", "coi_extra: records whose species is not held out"]


def read_shared(data_dir: str | Path, limit: int | None = None) -> tuple[list, list]:
    """(bold_insects records, coi_extra records); `limit`: only the first records of each file (dry runs)."""
    from barcodetool.io import read_barcodes

    def first(path):
        return [r for i, r in enumerate(read_barcodes(path)) if limit is None or i < limit]

    data = Path(data_dir)
    return first(data / SOURCES[0]), first(data / SOURCES[1])


def pretraining_records(insects: list, extra: list) -> list:
    return [r for r in insects if r.split in ("train", "val", "pretrain")] + extra


def fine_tuning_records(insects: list, extra: list) -> list:
    held_out = {r.taxonomy.get("species") for r in insects if r.split in ("test_unseen", "key_unseen")} - {None}
    return [r for r in insects if r.split in ("train", "val")] + [
        r for r in extra if r.taxonomy.get("species") not in held_out]
