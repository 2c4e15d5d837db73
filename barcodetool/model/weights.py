"""Model checkpoints: safetensors tensors + a JSON card; a registry of named weights.

A model is a folder:

    model.safetensors   tensors only (never pickle); float32, float16, or int8 rows + float16 scales
    barcodetool.json    format name and version, barcodetool version, model and tokenizer settings, which parts
                        are present (encoder, decoder), pooling, sha256 of model.safetensors, training summary,
                        metrics

Loading checks the format version, the sha256 and the exact tensor names and shapes (strict), and never runs code
from the file. Names resolve in this order: an existing path, a bundled model in the package's `weights/`, a
model trained into the user data folder (platformdirs).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..io.atomic import atomic_path, check_outputs_spare_model
from ..errors import ModelError, TokenizerError, UsageError
from .config import BarcodeMAEConfig
from .runtime import resolve_compute, resolve_device
from .tokenizer import KmerTokenizer, TokenizerConfig

if TYPE_CHECKING:   # PyTorch is imported when a model is loaded or saved: naming and listing models stay instant
    import torch

    from .mae import BarcodeMAE

MODEL_FORMAT = "barcodetool-model"
MODEL_FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CARD_FILE = "barcodetool.json"
ONNX_FILE = "encoder.onnx"   # the exported encoder (barcodetool.model.onnx)
MODEL_FILES = (CARD_FILE, TENSORS_FILE, ONNX_FILE)   # what a model folder holds
CARD_KEYS = {"format", "format_version", "barcodetool_version", "name", "created", "parts", "model_config",
             "tokenizer_config", "pooling", "dtype", "tensors_sha256", "training", "metrics", "description"}
QUANTIZED_SUFFIX = ".int8"
SCALE_SUFFIX = ".scale"
# What each card key must be where present (the settings themselves are checked by card_settings).
CARD_TYPES = {"barcodetool_version": str, "name": str, "created": str, "parts": list, "model_config": dict,
              "tokenizer_config": dict, "pooling": str, "dtype": str, "tensors_sha256": str, "training": dict,
              "metrics": dict, "description": str}
CARD_TYPE_WORDS = {str: "text", list: "a JSON list", dict: "a JSON object"}
MAX_CARD_DEPTH = 32   # levels of nested lists and objects a card may hold (real cards: 4)
DEFAULT_CPU_MODEL = "barcodemae-nano"
DEFAULT_GPU_MODEL = "barcodemae-base"
# `embed` on a CPU: the identity-taught nano embeds at nearly nano's speed and far better (species / new-species genus
# 1-NN 98.81 / 58.54% against 92.96 / 29.67%, docs/benchmarks.md); nano stays the default where the model only
# proposes candidates for the identity engine (reference indexes, classify, cluster), where it is the better one.
DEFAULT_CPU_EMBED_MODEL = "barcodemae-nano-identity"
MODEL_TASKS = ("classify", "embed")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class InferenceModel:
    """What inference reads of a loaded model, whichever runtime runs it (PyTorch here, ONNX Runtime in
    onnx_encoder): subclasses hold `config`, `card`, `name` and `sha256`."""

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def pooling(self) -> str:
        return self.card.get("pooling", "mean")

    @property
    def fingerprint(self) -> dict[str, str]:
        return {"model_name": self.name, "model_sha256": self.sha256}


@dataclass
class PretrainedModel(InferenceModel):
    """A loaded model: the network, its tokenizer and the card it was saved with."""

    model: BarcodeMAE
    tokenizer: KmerTokenizer
    name: str
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    compute: str | None = None  # inference arithmetic: None (bf16 on CUDA, float32 on CPU), float32 or bfloat16

    @property
    def config(self) -> BarcodeMAEConfig:
        return self.model.config


# ---------------------------------------------------------------------------------------------- saving
def _quantize_int8(tensors: dict[str, torch.Tensor], min_elements: int) -> dict[str, torch.Tensor]:
    """Symmetric per-row int8 for large matrices; everything else float16."""
    import torch

    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().float().cpu()
        if tensor.ndim == 2 and tensor.numel() >= min_elements:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # [rows, 1]
            out[name + QUANTIZED_SUFFIX] = torch.round(tensor / scale).clamp(-127, 127).to(torch.int8)
            out[name + SCALE_SUFFIX] = scale.to(torch.float16)
        else:
            out[name] = tensor.to(torch.float16)
    return out


def dequantize(tensors: dict, as_float: Callable, where: str = "") -> dict:
    """The tensors of a weight file as floats, int8 rows multiplied back by their scales; `as_float` converts one
    tensor (PyTorch's or numpy's), `where` prefixes errors (the file)."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if name.endswith(QUANTIZED_SUFFIX):
            base = name[: -len(QUANTIZED_SUFFIX)]
            scale = tensors.get(base + SCALE_SUFFIX)
            if scale is None:
                raise ModelError(f"{where}quantized tensor {base} has no scale")
            out[base] = as_float(tensor) * as_float(scale)
        else:
            out[name] = as_float(tensor)
    return out


def save_model(model: BarcodeMAE, tokenizer_config: TokenizerConfig, directory: str | os.PathLike, *,
               name: str | None = None, dtype: str = "float32", include_decoder: bool | None = None,
               training: dict | None = None, metrics: dict | None = None, pooling: str = "mean",
               description: str | None = None) -> Path:
    """Write model.safetensors then barcodetool.json (each atomically; the card holds the tensors' sha256)."""
    import torch
    from safetensors.torch import save_file

    if dtype not in {"float32", "float16", "int8"}:
        raise ModelError(f"unknown weight dtype {dtype!r}; choose float32, float16 or int8")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if include_decoder is None:
        include_decoder = model.include_decoder
    if include_decoder and not model.include_decoder:
        raise ModelError("cannot save a decoder: this model holds only the encoder")
    state = model.state_dict() if include_decoder else model.encoder_state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if dtype == "float16":
        state = {k: v.to(torch.float16) for k, v in state.items()}
    elif dtype == "int8":
        state = _quantize_int8(state, min_elements=16384)
    else:
        state = {k: v.float() for k, v in state.items()}
    with atomic_path(directory / TENSORS_FILE) as temporary:
        save_file(state, str(temporary), metadata={"format": MODEL_FORMAT})
        digest = sha256_file(temporary)
    card = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "barcodetool_version": __version__,
        "name": name or directory.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parts": ["encoder", "decoder"] if include_decoder else ["encoder"],
        "model_config": model.config.to_dict(),
        "tokenizer_config": tokenizer_config.to_dict(),
        "pooling": pooling,
        "dtype": dtype,
        "tensors_sha256": digest,
        "training": training or {},
        "metrics": metrics or {},
    }
    if description:
        card["description"] = description
    with atomic_path(directory / CARD_FILE) as temporary:
        temporary.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return directory


# ---------------------------------------------------------------------------------------------- loading
def _depth(value, limit: int) -> int:
    """How deeply `value` (parsed JSON) nests lists and objects, counted up to limit + 1 (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_card(directory: str | os.PathLike) -> dict:
    """The model card of a model folder, checked to be a JSON object of this format (not its settings: see
    card_settings)."""
    path = Path(directory) / CARD_FILE
    fix = "the file is corrupt or was edited; re-copy or retrain the model"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{directory}: not a barcodetool model folder (no {CARD_FILE})") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a folder, not a model card ({fix})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{path}: the model card is not valid JSON ({message}); {fix}") from None
    except (RecursionError, ValueError):   # nested too deeply for the parser; or numbers too long to read
        raise ModelError(f"{path}: the model card cannot be read as JSON (nested too deeply or numbers too "
                         f"long); {fix}") from None
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model card ({error.strerror or error})") from None
    if not isinstance(card, dict) or card.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a barcodetool model card (format is not {MODEL_FORMAT!r})")
    if _depth(card, MAX_CARD_DEPTH) > MAX_CARD_DEPTH:
        raise ModelError(f"{path}: the model card nests more than {MAX_CARD_DEPTH} levels deep; {fix}")
    version = card.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{path}: format_version is missing or not an integer")
    if version > MODEL_FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {version} is newer than this barcodetool reads "
                         f"({MODEL_FORMAT_VERSION}); upgrade barcodetool")
    unknown = set(card) - CARD_KEYS
    if unknown:
        raise ModelError(f"{path}: unknown keys {', '.join(sorted(unknown))} in the model card "
                         "(written by a newer barcodetool? upgrade barcodetool)")
    for key, kind in CARD_TYPES.items():
        if key in card and not isinstance(card[key], kind):
            raise ModelError(f"{path}: {key} in the model card is not {CARD_TYPE_WORDS[kind]}; {fix}")
    parts = card.get("parts", ["encoder"])
    if not all(isinstance(part, str) for part in parts) or "encoder" not in parts \
            or not set(parts) <= {"encoder", "decoder"}:
        raise ModelError(f"{path}: parts must be [\"encoder\"] or [\"encoder\", \"decoder\"]; {fix}")
    return card


def card_settings(card: dict, directory: str | os.PathLike) -> tuple[BarcodeMAEConfig, TokenizerConfig]:
    """The model and tokenizer settings of a card (read_card), each field checked (ModelError naming the card)."""
    path = Path(directory) / CARD_FILE
    fix = "the card is corrupt or was edited; re-copy or retrain the model"
    try:
        config = BarcodeMAEConfig.from_dict(card["model_config"])
        tokenizer_config = TokenizerConfig.from_dict(card["tokenizer_config"])
    except KeyError as error:
        raise ModelError(f"{path}: missing {error.args[0]}; {fix}") from None
    except (TypeError, TokenizerError, ModelError) as error:
        raise ModelError(f"{path}: invalid settings ({error}); {fix}") from None
    if tokenizer_config.k != config.k or tokenizer_config.max_tokens != config.max_tokens:
        raise ModelError(f"{directory}: tokenizer settings (k={tokenizer_config.k}, "
                         f"{tokenizer_config.max_tokens} tokens) do not fit the model (k={config.k}, "
                         f"{config.max_tokens} tokens)")
    return config, tokenizer_config


def load_model_folder(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                      name: str | None = None, verify: bool = True) -> PretrainedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .mae import BarcodeMAE   # PyTorch: imported when a model is loaded, not with the registry

    directory = Path(directory)
    card = read_card(directory)
    tensors_path = directory / TENSORS_FILE
    if not tensors_path.is_file():
        raise ModelError(f"{directory}: {TENSORS_FILE} is missing")
    digest = sha256_file(tensors_path)
    if verify and digest != card.get("tensors_sha256"):
        raise ModelError(f"{tensors_path}: sha256 does not match the model card; the weight file is corrupt "
                         "or truncated (re-copy or retrain it)")
    config, tokenizer_config = card_settings(card, directory)
    parts = card.get("parts", ["encoder"])
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{tensors_path}: cannot read weights ({error}); the file is corrupt") from None
    state = dequantize(tensors, lambda tensor: tensor.float())
    # the network is allocated only for settings that the weight file fills: a crafted card cannot ask for more
    held, needed = sum(t.numel() for t in state.values()), config.parameter_count("decoder" in parts)
    if held != needed:
        raise ModelError(f"{directory / CARD_FILE}: the model settings need {needed:,} weights, {TENSORS_FILE} "
                         f"holds {held:,}; the card does not belong to these weights (re-copy or retrain the model)")
    model = BarcodeMAE(config, include_decoder="decoder" in parts)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{tensors_path}: tensors do not match the model settings "
                         f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ModelError(f"{tensors_path}: tensor {key} has shape {tuple(state[key].shape)}, "
                             f"the settings need {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return PretrainedModel(model=model, tokenizer=KmerTokenizer(tokenizer_config),
                           name=name or card.get("name") or directory.name, sha256=digest, card=card,
                           path=directory)


def bundled_root() -> Path:
    """The folder of bundled weights: the installed package data, or weights/ beside the source tree."""
    try:
        root = resources.files("barcodetool.bundled_weights")
        path = Path(str(root))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def user_models_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("barcodetool", appauthor=False)) / "models"


def _models_in(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()}


def available_models() -> dict[str, Path]:
    """Named models: bundled ones first, then those in the user data folder."""
    found = _models_in(bundled_root())
    for name, path in _models_in(user_models_dir()).items():
        found.setdefault(name, path)   # a bundled name cannot be shadowed
    return found


def default_model_name(device: str | torch.device = "cpu", task: str = "classify") -> str:
    """The model `auto` stands for: barcodemae-base on a GPU; on a CPU barcodemae-nano, or for task "embed"
    (vectors for the user's own analyses) barcodemae-nano-identity."""
    if task not in MODEL_TASKS:
        raise UsageError(f"task must be one of {', '.join(MODEL_TASKS)}, not {task!r}")
    is_cuda = str(device).startswith("cuda")
    names = available_models()
    if is_cuda and DEFAULT_GPU_MODEL in names:
        return DEFAULT_GPU_MODEL
    if task == "embed" and DEFAULT_CPU_EMBED_MODEL in names:
        return DEFAULT_CPU_EMBED_MODEL
    return DEFAULT_CPU_MODEL


def asks_for_default(name_or_path: str | os.PathLike | None) -> bool:
    """Whether a model argument leaves the choice to barcodetool (None, "" or "auto": `default_model_name`)."""
    return name_or_path is None or str(name_or_path) in {"", "auto"}


def resolve_model(name_or_path: str | os.PathLike | None, device: str | torch.device = "cpu",
                  task: str = "classify") -> Path:
    if asks_for_default(name_or_path):
        name_or_path = default_model_name(device, task)
        names = available_models()
        if str(name_or_path) in names:   # the default is a registry name: never a folder of that name here
            return names[str(name_or_path)]
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return candidate
    names = available_models()
    if str(name_or_path) in names:
        return names[str(name_or_path)]
    listing = ", ".join(names) or "none installed"
    if os.sep in str(name_or_path) or (os.altsep and os.altsep in str(name_or_path)):
        raise ModelError(f"{name_or_path}: no such model folder (named models: {listing})")
    raise ModelError(f"unknown model {str(name_or_path)!r}; available: {listing} (or give a model folder path)")


def locate_model(name_or_path: str | os.PathLike | None, device: str | torch.device = "cpu",
                 task: str = "classify") -> tuple[Path, str | None]:
    """The model folder, and the name the loaded model takes: the registry name for a named model, None for a
    folder given by path (its card's name is used)."""
    path = resolve_model(name_or_path, device, task)
    is_named = asks_for_default(name_or_path) or not Path(str(name_or_path)).is_dir()
    return path, path.name if is_named else None


def load_model(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               verify: bool = True, compute: str | None = None, task: str = "classify") -> PretrainedModel:
    """Load a model by registry name (`barcodemae-fast`, `barcodemae-base`, ...) or folder path.

    task: which default None (or "auto") stands for: "classify" (the model of reference indexes) or "embed".

    compute: inference arithmetic: None (bf16 on CUDA, float32 on CPU), "float32", "bfloat16", or "auto" (bf16
    wherever the hardware runs it natively, CPUs with AVX-512 BF16 or AMX included).
    """
    device = resolve_device(device)   # a device this PyTorch cannot use is a UsageError here, not torch's own
    path, name = locate_model(name_or_path, device, task)
    loaded = load_model_folder(path, device=device, verify=verify, name=name)
    loaded.compute = None if compute is None else resolve_compute(device, compute)
    return loaded


def check_model_outputs(model, *outputs: str | os.PathLike | None) -> None:
    """Refuse an output that would overwrite a file of `model` (a loaded model, its exported encoder, or None):
    an existing file of its folder, or one of the files a model folder holds (MODEL_FILES)."""
    if model is not None:
        check_outputs_spare_model(outputs, getattr(model, "path", None), MODEL_FILES)
