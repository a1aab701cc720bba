"""THE training loop: every method, and SMF's dense retrofit, run through `run_stage`.

Methods change it only through their Setup (methods/base.py): what trains, the stepper
(optimizer, clipping, schedule; DeepSpeed for full FT) and hooks around backward/step (SMF's
access counting and row selection). There is no other loop in the project
(tests/test_train_loop.py checks that no other module calls backward() or optimizer.step()).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .batching import Batcher
from .methods.base import Setup
from .precision import PRECISIONS, autocast


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
    loss_on: str = "all"              # "all" non-pad tokens (QWEN) or "answer" (the completion only)
    append_eos: bool = False          # QWEN appends no EOS to training text; True trains on one per example
    precision: str = "auto"           # fp32, or bf16 = bf16 autocast over fp32 weights (GPU: HF Trainer's bf16);
                                      # auto: the spec resolves it once (bf16 if any method uses GPUs)
    checkpoint_every: int = 0         # optimizer steps between checkpoints; 0 = never
    log_every: int = 10               # optimizer steps between metric reports
    train_limit: int | None = None    # QWEN: 60k single-choice rows after a shuffle with the trial's seed (None = all)

    def __post_init__(self):
        checks = [(self.lr > 0, "lr must be > 0"), (self.epochs > 0, "epochs must be > 0"),
                  (self.micro_batch_size >= 1, "micro_batch_size must be >= 1"),
                  (self.effective_batch >= self.micro_batch_size and self.effective_batch % self.micro_batch_size == 0,
                   f"effective_batch ({self.effective_batch}) must be a multiple of micro_batch_size "
                   f"({self.micro_batch_size})"),
                  (self.max_len >= 8, "max_len must be >= 8"),
                  (self.warmup_steps >= 0, "warmup_steps must be >= 0"), (self.log_every >= 1, "log_every must be >= 1"),
                  (self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0 = never)"),
                  (self.loss_on in ("all", "answer"), "loss_on must be 'all' or 'answer'"),
                  (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
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


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the trial fails with this reason, never with a number."""


Reporter = Callable[[dict, "Path | None"], None]


def _all_ranks_finite(loss: torch.Tensor, world_size: int) -> bool:
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=loss.device)
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(bad)
    return bad.item() == 0


def run_stage(setup: Setup, batcher: Batcher, cfg: TrainConfig, report: Reporter, *, stage: str = "train",
              total_steps: int | None = None, device: torch.device = torch.device("cpu"), rank: int = 0,
              world_size: int = 1, resume_dir: Path | None = None, progress: bool = False) -> dict:
    """Train `setup` for the stage's steps; report metrics every `log_every` steps and checkpoints
    every `checkpoint_every` steps (0 = never). Returns the last metrics.

    Each optimizer step takes `cfg.accumulation(world_size)` micro-batches on every worker, i.e.
    `cfg.effective_batch` examples in all. A checkpoint directory is deleted once `report` returns
    (the reporter copies what it keeps: Ray Train uploads it to storage during report).
    Raises NonFiniteLoss if the loss is NaN/inf on any rank (checked every micro-batch)."""
    accum = cfg.accumulation(world_size)
    total = total_steps or cfg.total_steps(batcher.steps_per_epoch)
    start = 0
    if resume_dir is not None:
        setup.stepper.load(resume_dir)
        start = json.loads((resume_dir / "loop.json").read_text())["step"]
    model, hooks, stepper = setup.model, setup.hooks, setup.stepper
    model.train()
    last: dict = {}
    window = {"loss": 0.0, "tokens": 0, "t": time.perf_counter(), "micro": 0}
    examples = start * cfg.effective_batch          # every step sees effective_batch examples (all ranks)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, desc=stage, mininterval=2)
    for step in range(start, total):
        for m in range(accum):
            batch = {k: v.to(device) for k, v in batcher.micro_batch(step * accum + m).items()}
            with autocast(device, cfg.precision):
                loss = model(**batch).loss
            if not _all_ranks_finite(loss.detach(), world_size):
                raise NonFiniteLoss(f"{stage}: loss is {loss.item()} at step {step + 1}/{total} "
                                    f"(micro-batch {m + 1}/{accum}, lr {stepper.lr():.3g})")
            hooks.after_forward(batch)
            stepper.backward(loss, accum)
            stepper.micro_step(m == accum - 1)
            window["loss"] += loss.item()
            window["micro"] += 1
            window["tokens"] += int(batch["attention_mask"].sum())
            examples += batch["input_ids"].shape[0] * world_size
        lr = stepper.lr()
        extra = hooks.before_step()
        extra.update(stepper.step())
        done = step + 1
        if bar is not None:
            bar.update(1)
        log = done % cfg.log_every == 0 or done == total
        save = bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0 and done < total
        if log or save:
            metrics = {f"{stage}/step": done}
            if log:
                dt = time.perf_counter() - window["t"]
                metrics.update({f"{stage}/loss": window["loss"] / window["micro"], f"{stage}/lr": lr,
                                f"{stage}/tokens_per_s": window["tokens"] * world_size / max(dt, 1e-9),
                                f"{stage}/optimizer_steps": done, f"{stage}/examples_seen": examples,
                                f"{stage}/effective_batch": cfg.effective_batch,
                                **{f"{stage}/{k}": v for k, v in extra.items()}})
                window = {"loss": 0.0, "tokens": 0, "t": time.perf_counter(), "micro": 0}
                last = metrics
            ckpt = _checkpoint(setup, stage, done) if save else None
            try:
                report(metrics, ckpt)
            finally:
                if ckpt is not None:
                    shutil.rmtree(ckpt, ignore_errors=True)
    if bar is not None:
        bar.close()
    model.eval()
    return last


def _checkpoint(setup: Setup, stage: str, step: int) -> Path:
    """The stepper's state (weights that train, optimizer, schedule) and the loop position, in a
    fresh local directory that the reporter hands to Ray (which uploads and merges ranks' files);
    run_stage deletes it after the report."""
    path = Path(tempfile.mkdtemp(prefix=f"ckpt-{stage}-{step}-"))
    setup.stepper.save(path)
    (path / "loop.json").write_text(json.dumps({"step": step, "stage": stage}))
    return path
