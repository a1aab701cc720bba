"""What one stage of THE training loop (`smf_sweep.train_loop.run_stage`) is made of: the loop's
contract, which methods build on (methods/*.py) and the world's pretraining uses.

    TrainConfig    the stage's recipe: lr, epochs/max_steps, batch, schedule, precision, logging
    Setup          what trains: the model, its Stepper, Hooks, and the model to probe afterwards
    Stepper        backward / micro_step / step / lr / save / load (TorchStepper; DeepSpeed in full.py)
    Hooks          a method's code around backward/step (SMF: access counting, row selection)
    Stage          one stage of a method (Method.stages): training (a Training: Setup, Batcher,
                   TrainConfig), possibly a cache entry (StageCache), or a no-grad pass

The loop only ever calls a Setup's pieces, in this order, per optimizer step:

    for each micro-batch:  loss = lm_loss(setup.model, batch, train.loss_chunk)
                           setup.hooks.after_forward(batch)        # SMF: count accesses, select rows
                           setup.stepper.backward(loss, n_micro)
                           setup.stepper.micro_step(boundary)      # DeepSpeed counts micro-steps
    at the boundary:       setup.hooks.before_step()               # SMF: finalise rows, mask grads
                           setup.stepper.step()                    # clip, optimizer, scheduler
and after training the caller probes `setup.export()`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import torch
from torch import nn

from .choices import check_choices

if TYPE_CHECKING:
    from .batching import Batcher


@dataclass
class TrainConfig:
    lr: float = 5e-4                  # QWEN's SMF lr; each method's search space overrides it
    epochs: float = 3.0               # QWEN: 3 epochs
    max_steps: int | None = None      # cap on optimizer steps (smoke runs); None = epochs decide
    micro_batch_size: int = 4         # QWEN: micro-batch 4 per worker …
    effective_batch: int = 16         # … examples per optimizer step, whatever the worker count (QWEN 16);
                                      # accumulation = effective_batch / (micro_batch_size × workers)
    max_len: int = 1024               # QWEN: max_len 1024 tokens
    warmup_steps: int = 100           # QWEN: cosine with 100 warmup steps
    lr_floor: float = 0.0             # cosine decays to lr · lr_floor
    weight_decay: float = 0.0         # QWEN SMF: AdamW wd 0 (LIN full FT: 0.1, set per method)
    grad_clip: float = 1.0            # QWEN: grad clip 1.0
    loss_on: Literal["all", "answer"] = "all"   # all non-pad tokens (QWEN) or the answer (the completion only)
    append_eos: bool = False          # QWEN appends no EOS to training text; True trains on one per example
    batch_order: Literal["random", "length_grouped"] = "random"   # random: the study's (HF Trainer); length_grouped
                                      # [ours]: similar lengths per micro-batch, same examples per epoch and step
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # precision.py: fp32, or bf16 = bf16 autocast over fp32
                                      # weights (GPU: HF Trainer's bf16); auto: the spec resolves it once
                                      # (bf16 if any method uses GPUs)
    loss_chunk: int = 0               # [ours] > 0: the LM head + cross-entropy over this many targets at a time,
                                      # never the whole (B, T, V) logits (lm_loss.py); 0: HF's loss, as the study
    checkpoint_every: int = 0         # optimizer steps between checkpoints; 0 = never
    log_every: int = 10               # optimizer steps between metric reports
    train_limit: int | None = None    # QWEN: 60k single-choice rows after a shuffle with the trial's seed (None = all)

    def __post_init__(self):
        check_choices(self, "train: ")
        checks = [(self.lr > 0, "lr must be > 0"), (self.epochs > 0, "epochs must be > 0"),
                  (self.micro_batch_size >= 1, "micro_batch_size must be >= 1"),
                  (self.effective_batch >= self.micro_batch_size and self.effective_batch % self.micro_batch_size == 0,
                   f"effective_batch ({self.effective_batch}) must be a multiple of micro_batch_size "
                   f"({self.micro_batch_size})"),
                  (self.max_len >= 8, "max_len must be >= 8"),
                  (self.warmup_steps >= 0, "warmup_steps must be >= 0"), (self.log_every >= 1, "log_every must be >= 1"),
                  (self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0 = never)"),
                  (self.loss_chunk >= 0, "loss_chunk must be >= 0 (0 = HF's loss over the whole logits)"),
                  (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 or null")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"train: {msg}")

    def accumulation(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each worker, so that every step sees `effective_batch`
        examples for any worker count (a spec error, before Ray starts, if it does not divide)."""
        per_round = self.micro_batch_size * world_size
        if self.effective_batch % per_round:
            raise ValueError(f"train: effective_batch {self.effective_batch} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size} × {world_size} workers")
        return self.effective_batch // per_round

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the stage: `epochs` passes of `steps_per_epoch`, capped by max_steps."""
        n = max(1, math.ceil(self.epochs * steps_per_epoch))
        return min(n, self.max_steps) if self.max_steps else n

    def to_dict(self) -> dict:
        return asdict(self)


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
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.clip)   # a tensor: read at log time
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
        # shared storage: tensors only, no pickled code; onto the CPU first (every rank writes the same
        # file into the merged checkpoint, from its own GPU), then to each parameter's device by copy_
        # and by the optimizer's load_state_dict
        st = torch.load(path / "stepper.pt", weights_only=True, map_location="cpu")
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
    view: Callable[[], nn.Module] | None = None    # the model as it is now, to probe mid-training without
                                                   # changing it (curves.Curve); None: `model`

    def current(self) -> nn.Module:
        return self.view() if self.view is not None else self.model


# ---- a method's stages (Method.stages), run in order by train_loop.run_stages -------------------
@dataclass
class Training:
    """A training stage's pieces, built when the stage starts (after the stages before it ran)."""
    setup: Setup
    batcher: Batcher | None = None        # None only in a method's last stage: the trial's task data
    cfg: TrainConfig | None = None        # None only in a method's last stage: the trial's TrainConfig
    total_steps: int | None = None        # None: cfg.total_steps(batcher.steps_per_epoch)


@dataclass
class StageCache:
    """A training stage whose result is a content-addressed entry (cache.get_or_create): trained only
    on a miss, on every rank (the loop's collectives need them all); then `write(tmp)` on rank 0 under
    the entry's lock; `load(path)` on every rank, hit or miss."""
    root: Path
    key: str
    write: Callable[[Path], None]
    load: Callable[[Path], None]


@dataclass
class Stage:
    """One stage of a method: training through THE loop (`train()` builds its Training when the stage
    starts) or a no-grad pass (`run()`, e.g. SMF's background statistics). A method's last stage is
    the trial's own (named "train"): the worker trains its Setup on the task data, with checkpoints."""
    name: str
    train: Callable[[], Training] | None = None
    run: Callable[[], None] | None = None
    cache: StageCache | None = None       # training stages only

    def __post_init__(self):
        if (self.train is None) == (self.run is None):
            raise ValueError(f"stage {self.name}: give train (a training stage) or run (a pass), not both")
        if self.cache is not None and self.train is None:
            raise ValueError(f"stage {self.name}: only a training stage is cached here (a pass caches itself)")
