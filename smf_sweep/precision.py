"""The precision regime of a trial: one regime for everything that touches the model — base probes,
the retrofit and its probes, the background pass, training, and the after-probes — so that a delta
never carries a precision offset (a null trial shows no effect in either regime).

    fp32   fp32 weights, no autocast
    bf16   fp32 weights under bf16 autocast (HF Trainer's `bf16=True`, the study's); DeepSpeed too
    auto   bf16 on CUDA, fp32 elsewhere — the spec resolves it once for a whole sweep

bf16 autocast runs on a CPU as well, so CI exercises the regime the GPU uses."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve(precision: str, device: torch.device | str) -> str:
    """"auto" → "bf16" on CUDA, "fp32" elsewhere; fp32 / bf16 unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """The regime's forward context: bf16 autocast on the device's type, or nothing for fp32."""
    device = torch.device(device)
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
