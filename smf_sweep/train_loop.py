"""THE training loop: every method, and SMF's dense retrofit, run through `run_stage`; a method's
stages (Method.stages: SMF's retrofit and background pass before its sparse training) run in order
through `run_stages`, called by the worker.

Methods change it only through their Setup (stage.py, the loop's contract): what trains, the stepper
(optimizer, clipping, schedule; DeepSpeed for full FT) and hooks around backward/step (SMF's
access counting and row selection). There is no other loop in the project
(tests/test_train_loop.py checks that no other module calls backward() or optimizer.step()).
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .batching import Batcher
from .cache import get_or_create
from .lm_loss import lm_loss
from .precision import autocast
from .stage import Setup, Stage, TrainConfig, Training


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the trial fails with this reason, never with a number."""


Reporter = Callable[[dict, "Path | None"], None]
Evaluator = Callable[[int, int], dict]       # (optimizer step, total steps) -> metrics at that step, or {}


def _all_ranks_finite(step_loss: torch.Tensor, world_size: int) -> bool:
    """The step's one host sync: is the summed loss of the step finite on every rank?"""
    bad = (~torch.isfinite(step_loss)).float().reshape(1)          # (1,)
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(bad)
    return bad.item() == 0


class PeakMemory:
    """A stage's peak device memory, its evaluations (curve points) left out: CUDA keeps one peak
    counter, read before each evaluation and reset after it (to what is allocated then: weights,
    optimizer state). Off (`on` False) on other devices. `read`/`reset` stand in for torch.cuda's."""

    def __init__(self, device: torch.device, read: Callable[[], int] | None = None,
                 reset: Callable[[], None] | None = None):
        self.on = device.type == "cuda" or read is not None
        self.read = read or (lambda: torch.cuda.max_memory_allocated(device))
        self.reset = reset or (lambda: torch.cuda.reset_peak_memory_stats(device))
        self.peak = 0
        if self.on:
            self.reset()

    def evaluating(self, evaluate: Callable[[], dict]) -> dict:
        """Run `evaluate` outside the count."""
        if self.on:
            self.peak = max(self.peak, self.read())
        try:
            return evaluate()
        finally:
            if self.on:
                self.reset()

    def bytes(self) -> int | None:
        return max(self.peak, self.read()) if self.on else None


def _host(v) -> float | int | str:
    """A logged value as a Python number (tensors are synced here, at log time only)."""
    return v.item() if isinstance(v, torch.Tensor) else v


def run_stage(setup: Setup, batcher: Batcher, cfg: TrainConfig, report: Reporter, *, stage: str = "train",
              total_steps: int | None = None, device: torch.device = torch.device("cpu"), rank: int = 0,
              world_size: int = 1, resume_dir: Path | None = None, progress: bool = False,
              evaluate: Evaluator | None = None, memory: PeakMemory | None = None) -> dict:
    """Train `setup` for the stage's steps; report metrics every `log_every` steps and checkpoints
    every `checkpoint_every` steps (0 = never). Returns the last metrics.

    Each optimizer step takes `cfg.accumulation(world_size)` micro-batches on every worker, i.e.
    `cfg.effective_batch` examples in all. A checkpoint directory is deleted once `report` returns
    (the reporter copies what it keeps: Ray Train uploads it to storage during report).

    One host sync per optimizer step: losses, token counts and the hooks' and stepper's figures stay
    on the device and are read at log time. Raises NonFiniteLoss if the loss of a step is NaN/inf on
    any rank, before that step's update (the gradients of a NaN loss never reach the weights).

    `<stage>/tokens` is the running total of tokens trained on (non-pad tokens of this rank's
    micro-batches × workers, as tokens_per_s counts them), read with the window's count at log time
    and kept across a resume in the checkpoint's loop.json (a checkpoint step that is not a log step
    reads the window's count once more).

    `evaluate(step, total)` (curves.Curve, every rank) is asked before the first step (step 0) and
    after every step; what it returns (nothing between evaluation points) is reported at that step.
    It must leave the weights, the optimizer and every RNG the loop draws from as they were.

    On CUDA the last metrics also hold `<stage>/peak_memory_bytes`, the stage's peak allocated memory
    on this rank without its evaluations (`memory`, default PeakMemory(device))."""
    accum = cfg.accumulation(world_size)
    total = total_steps or cfg.total_steps(batcher.steps_per_epoch)
    start, tokens = 0, 0.0               # tokens: the running total up to the last log (host side)
    if resume_dir is not None:
        setup.stepper.load(resume_dir)
        loop = json.loads((resume_dir / "loop.json").read_text())
        start, tokens = loop["step"], float(loop.get("tokens", 0.0))
    model, hooks, stepper = setup.model, setup.hooks, setup.stepper
    model.train()
    last: dict = {}
    zero = lambda: torch.zeros((), device=device)   # noqa: E731
    window = {"loss": zero(), "tokens": zero(), "t": time.perf_counter(), "micro": 0}   # on the device
    examples = start * cfg.effective_batch          # every step sees effective_batch examples (all ranks)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, desc=stage, mininterval=2)
    memory = memory or PeakMemory(device)
    if evaluate is not None and start == 0:
        _report_eval(memory.evaluating(lambda: evaluate(0, total)), report)
    for step in range(start, total):
        step_loss = zero()
        for m in range(accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in batcher.micro_batch(step * accum + m).items()}
            with autocast(device, cfg.precision):
                loss = lm_loss(model, batch, cfg.loss_chunk)             # (), mean over the targets
            hooks.after_forward(batch)
            stepper.backward(loss, accum)
            stepper.micro_step(m == accum - 1)
            step_loss += loss.detach().float()
            window["tokens"] += batch["attention_mask"].sum()
            examples += batch["input_ids"].shape[0] * world_size
        if not _all_ranks_finite(step_loss, world_size):
            raise NonFiniteLoss(f"{stage}: loss is {(step_loss / accum).item()} at step {step + 1}/{total} "
                                f"(mean of {accum} micro-batches, lr {stepper.lr():.3g})")
        window["loss"] += step_loss
        window["micro"] += accum
        lr = stepper.lr()
        extra = hooks.before_step()
        extra.update(stepper.step())
        done = step + 1
        if bar is not None:
            bar.update(1)
        log = done % cfg.log_every == 0 or done == total
        save = bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0 and done < total
        point = {}
        if evaluate is not None:
            t_eval = time.perf_counter()
            point = memory.evaluating(lambda: evaluate(done, total))
            window["t"] += time.perf_counter() - t_eval      # tokens_per_s counts training time only
        if log or save or point:
            metrics = {f"{stage}/step": done}
            if log:
                dt = time.perf_counter() - window["t"]
                seen = window["tokens"].item() * world_size
                tokens += seen
                metrics.update({f"{stage}/loss": window["loss"].item() / window["micro"], f"{stage}/lr": lr,
                                f"{stage}/tokens_per_s": seen / max(dt, 1e-9), f"{stage}/tokens": tokens,
                                f"{stage}/optimizer_steps": done, f"{stage}/examples_seen": examples,
                                f"{stage}/effective_batch": cfg.effective_batch,
                                **{f"{stage}/{k}": _host(v) for k, v in extra.items()}})
                window = {"loss": zero(), "tokens": zero(), "t": time.perf_counter(), "micro": 0}
                last = metrics
            metrics = {**metrics, **point}
            ckpt = _checkpoint(setup, stage, done, tokens if log else tokens + window["tokens"].item() * world_size) \
                if save else None
            try:
                report(metrics, ckpt)
            finally:
                if ckpt is not None:
                    shutil.rmtree(ckpt, ignore_errors=True)
    if bar is not None:
        bar.close()
    if memory.on:
        last[f"{stage}/peak_memory_bytes"] = memory.bytes()
    model.eval()
    return last


def _report_eval(point: dict, report: Reporter) -> None:
    if point:
        report(point, None)


def _checkpoint(setup: Setup, stage: str, step: int, tokens: float = 0.0) -> Path:
    """The stepper's state (weights that train, optimizer, schedule) and the loop position, in a
    fresh local directory that the reporter hands to Ray (which uploads and merges ranks' files);
    run_stage deletes it after the report."""
    path = Path(tempfile.mkdtemp(prefix=f"ckpt-{stage}-{step}-"))
    setup.stepper.save(path)
    (path / "loop.json").write_text(json.dumps({"step": step, "stage": stage, "tokens": tokens}))
    return path


def run_stages(stages: list[Stage], report: Reporter | None = None, *, device: torch.device = torch.device("cpu"),
               rank: int = 0, world_size: int = 1, run: Callable[..., dict] | None = None) -> Training:
    """Run a method's stages (Method.stages) in order, all but the last, and return the last one's
    Training: the caller trains it on the trial's task data (the worker, with checkpoints and resume).

    A training stage goes through `run_stage` (metrics to `report`; `run` stands in for it in tests);
    a cached one (StageCache) trains only on a miss — on every rank — then rank 0 writes the entry and
    every rank loads it; a pass calls `stage.run()`."""
    if not stages or stages[-1].train is None or stages[-1].cache is not None:
        raise ValueError("a method's last stage is the trial's training stage (train=…, not cached)")
    run = run or functools.partial(run_stage, report=report or (lambda m, c: None), device=device, rank=rank,
                                   world_size=world_size)
    for st in stages[:-1]:
        if st.run is not None:
            st.run()
        elif st.cache is None:
            _train(st, run)
        else:
            c = st.cache
            path = get_or_create(c.root, c.key, c.write, compute=functools.partial(_train, st, run),
                                 rank=rank, world_size=world_size)
            c.load(path)
    return stages[-1].train()


def _train(st: Stage, run: Callable[..., dict]) -> None:
    t = st.train()
    if t.batcher is None or t.cfg is None:
        raise ValueError(f"stage {st.name}: a stage before the trial's own names its batcher and TrainConfig")
    if t.cfg.checkpoint_every:
        raise ValueError(f"stage {st.name}: only the trial's stage checkpoints (a restarted trial reruns the "
                         f"others, or loads them from the cache)")
    run(t.setup, t.batcher, t.cfg, stage=st.name, total_steps=t.total_steps)
