"""What a finetuning method is: a name, a typed config, and its stages.

    stages(model, cfg, ctx) -> list[Stage]    what to run, in order; the last is the trial's training
    setup(model, cfg, ctx)  -> Setup          that last stage's Setup, the stages before it run first

The worker runs the stages through THE loop (train_loop.run_stages, then run_stage on the task data);
a method's own code never calls the loop (`prepared`, below, runs the stages for tests and benches).
Setup, Stage and the rest of the contract are the loop's (`smf_sweep.stage`, a layer below).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

# world/pretrain.py imports Setup, TorchStepper and warmup_cosine from here: the world's cache key
# hashes its source, so its import line stays (a changed line rebuilds the world); all else uses ..stage
from ..stage import Setup, Stage, TorchStepper, warmup_cosine  # noqa: F401


class Method(Protocol):
    """A finetuning method: a name, a typed config class, its stages, and setup()."""
    name: str
    Config: type

    def stages(self, model: nn.Module, cfg: Any, ctx: "SetupContext") -> list[Stage]: ...

    def setup(self, model: nn.Module, cfg: Any, ctx: "SetupContext") -> Setup: ...


def prepared(method: Method, model: nn.Module, cfg: Any, ctx: "SetupContext") -> Setup:
    """The Setup of `method`'s last stage, the stages before it run here first, through the loop and
    quietly (tests, benches). A trial's worker runs them itself, reporting their metrics."""
    from ..train_loop import run_stages

    return run_stages(method.stages(model, cfg, ctx), device=ctx.device, rank=ctx.rank,
                      world_size=ctx.world_size).setup


@dataclass
class SetupContext:
    """What a method may use in its stages; given by the worker function."""
    tokenizer: Any
    train: Any                      # the trial's TrainConfig (its last stage: training on the task data)
    total_steps: int                # the trial's optimizer steps (schedules of the last stage)
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    cache_dir: Path | None = None   # content-addressed caches shared by trials (retrofits, background stats)
    probe: Callable[[nn.Module], dict] | None = None   # probe a model (rank 0), e.g. the retrofit checkpoint
    data: dict[str, str] = field(default_factory=dict)  # data sources by name (task, retrofit, …)
