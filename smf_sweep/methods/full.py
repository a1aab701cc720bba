"""Full finetuning under DeepSpeed ZeRO (SMF_SPEC §5): every weight trains; ZeRO shards optimizer
state (stage 2, default) or also the weights (stage 3) across workers. Weights stay fp32 and the
`bf16` regime is torch autocast (DeepSpeed's `torch_autocast` section), as for SMF and LoRA and as
HF Trainer's `bf16=True` in the study — not DeepSpeed's bf16 mode, which would train and probe bf16
weights. On CPU DeepSpeed uses its CPU accelerator and gloo."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..precision import resolve
from ..stage import Setup, Stage, Training, cosine_schedule
from .base import SetupContext


@dataclass
class FullConfig:
    zero_stage: int = 2                  # ZeRO-2: shard optimizer state + gradients; 3: also weights
    gradient_checkpointing: bool = False  # QWEN uses it on GPU to fit batch 16; off on tiny models
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"full.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")


def _skip_cpu_shm_build() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op (1–2 min) the first time its
    comm backend starts. gloo does the same job for this project's sizes: mark the op incompatible
    (DeepSpeed keeps this dict for the process) so it falls back without compiling."""
    import deepspeed.ops

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _ensure_process_group() -> None:
    """DeepSpeed needs torch.distributed; Ray Train has set it up on workers. A bare process (a unit
    test, a single-worker run outside Ray) gets a one-rank gloo group on loopback."""
    if torch.distributed.is_initialized():
        return
    import deepspeed

    backend = "gloo" if not torch.cuda.is_available() else "nccl"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:     # a launcher (torchrun, …) describes a real group: join it
        deepspeed.init_distributed(dist_backend=backend)
        return
    # one rank of our own, on a fresh loopback port: a MASTER_PORT inherited from a parent that ran its
    # own one-rank group (a test session, the rehearsal) would be taken already
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})
    deepspeed.init_distributed(dist_backend=backend)


class DeepSpeedStepper:
    """engine.backward / engine.step; DeepSpeed itself accumulates, clips and schedules."""

    def __init__(self, engine):
        self.engine = engine

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        self.engine.backward(loss)            # DeepSpeed divides by gradient_accumulation_steps

    def micro_step(self, boundary: bool) -> None:
        if not boundary:
            self.engine.step()                # DeepSpeed's bookkeeping of micro-steps; no update

    def step(self) -> dict[str, float]:
        self.engine.step()                    # at the boundary: clip, optimizer, scheduler
        norm = self.engine.get_global_grad_norm()
        return {} if norm is None else {"grad_norm": norm}     # a float or a tensor: the loop reads it at log time

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag="ds")   # every rank writes its shard

    def load(self, path: Path) -> None:
        self.engine.load_checkpoint(str(path), tag="ds")


class Full:
    name = "full"
    Config = FullConfig

    def stages(self, model, cfg: FullConfig, ctx: SetupContext) -> list[Stage]:
        return [Stage("train", train=lambda: Training(self.setup(model, cfg, ctx)))]

    def setup(self, model, cfg: FullConfig, ctx: SetupContext) -> Setup:
        import deepspeed

        _skip_cpu_shm_build()
        _ensure_process_group()
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        t = ctx.train
        ds_config = {
            "train_micro_batch_size_per_gpu": t.micro_batch_size,
            "gradient_accumulation_steps": t.accumulation(ctx.world_size),   # effective batch for any worker count
            "gradient_clipping": t.grad_clip or 0.0,
            "zero_optimization": {"stage": cfg.zero_stage},
            "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "betas": list(cfg.betas), "eps": 1e-8,
                                                      "weight_decay": t.weight_decay, "torch_adam": True}},
            "bf16": {"enabled": False},       # fp32 weights; the bf16 regime is autocast (below)
            "torch_autocast": {"enabled": resolve(t.precision, ctx.device) == "bf16", "dtype": "bfloat16",
                               # none: else DeepSpeed tags every nn.Linear weight (Qwen's tied lm_head too) to
                               # reduce its gradient in bf16, which plain autocast (SMF, LoRA, HF Trainer) does not
                               "lower_precision_safe_modules": []},
            "steps_per_print": 10 ** 9,
            "wall_clock_breakdown": False,
        }
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
            lr_scheduler=lambda opt: cosine_schedule(opt, t.warmup_steps, ctx.total_steps, t.lr_floor))

        def export():
            if cfg.zero_stage < 3:
                return engine.module
            state = engine._zero3_consolidated_16bit_state_dict()   # collective: every rank calls it
            fresh = type(engine.module)(engine.module.config)
            fresh.generation_config = engine.module.generation_config   # the probes decode under it (TriviaQA)
            if ctx.rank == 0:
                fresh.load_state_dict(state, strict=False)
            return fresh.to(ctx.device)

        return Setup(model=engine, stepper=DeepSpeedStepper(engine), export=export, view=export,
                     trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                     info={"zero_stage": cfg.zero_stage, "grad_reduce_dtypes": grad_reduce_dtypes(engine)})


def grad_reduce_dtypes(engine) -> str:
    """The dtypes ZeRO reduces gradients in (its buckets), e.g. "float32"; "" when it has none (stage 0)."""
    buckets = getattr(getattr(engine, "optimizer", None), "ipg_buckets", None) or {}
    return ",".join(sorted(str(d).removeprefix("torch.") for d in buckets))
