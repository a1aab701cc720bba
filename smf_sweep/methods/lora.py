"""LoRA through peft (SMF_SPEC §5): adapters on every attention and MLP projection, merged into the
base weights before the probes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..stage import Setup, Stage, TorchStepper, Training, cosine_schedule
from .base import SetupContext

STUDY_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    rank: int = 16                            # QWEN: r 16
    alpha: float = 32.0                       # QWEN: α 32 (scale α/r = 2)
    dropout: float = 0.05                     # QWEN: 0.05
    target_modules: tuple[str, ...] = STUDY_TARGETS   # QWEN: q,k,v,o,gate,up,down

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


class Lora:
    name = "lora"
    Config = LoraConfig

    def stages(self, model, cfg: LoraConfig, ctx: SetupContext) -> list[Stage]:
        return [Stage("train", train=lambda: Training(self.setup(model, cfg, ctx)))]

    def setup(self, model, cfg: LoraConfig, ctx: SetupContext) -> Setup:
        import peft

        missing = [t for t in cfg.target_modules if not any(n.endswith("." + t) for n, _ in model.named_modules())]
        if missing:
            raise ValueError(f"lora.target_modules {missing} match no module of the model")
        pm = peft.get_peft_model(model, peft.LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=ctx.train.lr, weight_decay=ctx.train.weight_decay)
        stepper = TorchStepper(params, opt, cosine_schedule(opt, ctx.train.warmup_steps, ctx.total_steps, ctx.train.lr_floor),
                               ctx.train.grad_clip, world_size=ctx.world_size)
        return Setup(model=pm, stepper=stepper, export=lambda: pm.merge_and_unload(), view=lambda: pm,
                     trainable=sum(p.numel() for p in params))
