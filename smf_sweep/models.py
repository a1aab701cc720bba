"""Load the base model and its tokenizer (hub id or a local `save_pretrained` directory).

    model = load_model("world_dir/model")                  # float32 on CPU, bfloat16 on CUDA
    tok = load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")     # pad token guaranteed

Plain `AutoModelForCausalLM` / `AutoTokenizer`: no remote code, safetensors only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .hub import is_hub_id

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the study's base model
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(FileNotFoundError):
    """A model or tokenizer location that cannot be loaded; the message names the path."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """"auto": bfloat16 on CUDA (where it is fast), float32 elsewhere (CPU bf16 is slow and coarse)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)} or a torch.dtype") from None


def _local_dir(id_or_path: str | Path, need: tuple[str, ...], what: str) -> str:
    """Check a local directory for the files `what` needs; pass a hub id through unchanged."""
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and what == "model":
            raise ModelLoadError(f"{path} has no config.json: not a save_pretrained model directory")
        if not any((path / f).is_file() for f in need):
            raise ModelLoadError(f"{path} has no {what} files (expected one of {', '.join(need)}); "
                                 f"it holds {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}")
        return str(path)
    if not is_hub_id(str(id_or_path)):
        raise ModelLoadError(f"{path} is not a model directory (and not a hub id)")
    return str(id_or_path)


def load_model(id_or_path: str | Path = DEFAULT_MODEL, *, dtype: str | torch.dtype = "auto",
               device: str | torch.device | None = None) -> PreTrainedModel:
    """A causal LM in eval mode on `device` (default: CUDA if available, else CPU)."""
    device = str(device or default_device())
    where = _local_dir(id_or_path, WEIGHT_FILES, "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=resolve_dtype(dtype, device),
                                                     use_safetensors=True, trust_remote_code=False)
    except OSError as e:
        raise ModelLoadError(f"cannot load model {where}: {e}") from e
    return model.to(device).eval()


def load_tokenizer(id_or_path: str | Path = DEFAULT_MODEL, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (eos, else unk, else bos) when it lacks one."""
    where = _local_dir(id_or_path, TOKENIZER_FILES, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load tokenizer {where}: {e}") from e
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token or tok.bos_token
        if fallback is None:
            raise ModelLoadError(f"tokenizer {where} has no pad, eos, unk or bos token to pad with")
        tok.pad_token = fallback
    tok.padding_side = padding_side
    return tok
