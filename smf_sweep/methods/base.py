"""What a finetuning method gives the one training loop (`smf_sweep.train_loop.run_stage`).

A method is a peer behind one small protocol: `setup(model, cfg, ctx) -> Setup`. The loop only
ever calls the Setup's pieces, in this order, per optimizer step:

    for each micro-batch:  loss = setup.model(**batch).loss
                           setup.hooks.after_forward(batch)        # SMF: count accesses, select rows
                           setup.stepper.backward(loss, n_micro)
                           setup.stepper.micro_step(boundary)      # DeepSpeed counts micro-steps
    at the boundary:       setup.hooks.before_step()               # SMF: finalise rows, mask grads
                           setup.stepper.step()                    # clip, optimizer, scheduler
and after training probes `setup.export()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn


class Hooks:
    """Method hooks around backward/step. The default does nothing (LoRA, full FT)."""

    def after_forward(self, batch: dict[str, torch.Tensor]) -> None: ...

    def before_step(self) -> dict[str, float]:
        return {}

    def close(self) -> None: ...


class Stepper(Protocol):
    def backward(self, loss: torch.Tensor, n_micro: int) -> None: ...
    def micro_step(self, boundary: bool) -> None: ...
    def step(self) -> dict[str, float]: ...
    def lr(self) -> float: ...
    def save(self, path: Path) -> None: ...
    def load(self, path: Path) -> None: ...


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                    floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """The study's schedule (HF Trainer's `cosine`): transformers' own scheduler, warmup `step/warmup`
    (lr 0 at the first step), then cosine to `floor` × lr at `total`."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=floor)


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """lr multiplier of the embedded world's pretraining (not a study recipe): linear warmup
    `(step+1)/warmup`, then cosine from 1 to `floor` at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return f


class TorchStepper:
    """Plain PyTorch: loss/n_micro backward, then (all-reduce over workers,) clip, optimizer and
    scheduler at the boundary. Saves only the parameters it trains."""

    def __init__(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 schedule: Callable[[int], float] | torch.optim.lr_scheduler.LRScheduler, grad_clip: float | None,
                 world_size: int = 1):
        """`schedule`: an LR scheduler on `optimizer` (cosine_schedule) or an lr multiplier function."""
        self.params, self.opt, self.clip, self.world = params, optimizer, grad_clip, world_size
        self.sched = (schedule if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler)
                      else torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        (loss / n_micro).backward()

    def micro_step(self, boundary: bool) -> None: ...

    def step(self) -> dict[str, float]:
        out = {}
        if self.world > 1:      # data parallel: average gradients over workers (SMF, LoRA)
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)
        if self.clip:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return out

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def save(self, path: Path) -> None:
        torch.save({"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "params": [p.detach().cpu() for p in self.params]}, path / "stepper.pt")

    def load(self, path: Path) -> None:
        st = torch.load(path / "stepper.pt", weights_only=True)   # shared storage: tensors only, no pickled code
        with torch.no_grad():
            for p, v in zip(self.params, st["params"]):
                p.copy_(v)
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])


@dataclass
class Setup:
    model: nn.Module                           # what the loop calls forward on
    stepper: Stepper
    export: Callable[[], nn.Module]            # the model to probe after training (merged, unwrapped)
    hooks: Hooks = field(default_factory=Hooks)
    trainable: int = 0                         # number of trainable parameters (logged)
    info: dict[str, Any] = field(default_factory=dict)   # anything the method wants logged once


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
