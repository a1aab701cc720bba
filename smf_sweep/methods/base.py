"""What a finetuning method is: a name, a typed config and `setup(model, cfg, ctx) -> Setup`, where
Setup, its Stepper and Hooks are the loop's contract (`smf_sweep.stage`, below this layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

# world/pretrain.py imports these three from here: the world's cache key hashes its source, so its
# import line stays (a changed line rebuilds the world); everything else imports them from ..stage
from ..stage import Setup, TorchStepper, warmup_cosine  # noqa: F401


class Method(Protocol):
    """A finetuning method: a name, a typed config class, and setup()."""
    name: str
    Config: type

    def setup(self, model: nn.Module, cfg: Any, ctx: "SetupContext") -> Setup: ...


@dataclass
class SetupContext:
    """What a method may use while setting up; given by the worker function."""
    tokenizer: Any
    train: Any                      # TrainConfig of the stage being set up
    total_steps: int
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    cache_dir: Path | None = None   # content-addressed caches shared by trials (retrofits, background stats)
    run_stage: Callable[..., dict] | None = None   # the loop, for methods with a preliminary stage (SMF retrofit)
    probe: Callable[[nn.Module], dict] | None = None   # probe a model (rank 0), e.g. the retrofit checkpoint
    data: dict[str, str] = field(default_factory=dict)  # data sources by name (task, retrofit, …)
    report: Callable[[dict], None] | None = None
