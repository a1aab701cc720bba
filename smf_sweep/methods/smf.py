"""Sparse Memory Finetuning (SMF_SPEC §2–§4): product-key memory layers put into the pretrained
model; each step trains only the value rows its batch reads most (by the chosen selector).

stages() puts the memory into the model (init seeded by the trial's seed) and returns, in order —
the worker runs them through THE loop; the first two are cached by content so trials share them:
  1. "retrofit" (`replace` / `additive`): dense training of all memory parameters on general text,
     base frozen, then probes of the retrofit checkpoint; `zero_values` needs none
     (function-preserving at init);
  2. "background" (selectors kl, tfidf): background statistics, one no-grad pass over general text;
  3. "train": the sparse stage — values only, row-masked optimizer, SparseUpdater hooks.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch

from ..cache import get_or_create
from ..choices import check_choices
from ..memory import (OPTIMIZERS, SELECTORS, BackgroundStats, MemoryConfig, SparseUpdater, compute_background,
                      freeze_for_retrofit, freeze_for_sparse, insert_memory, load_memory, save_memory)
from ..precision import autocast
from ..stage import Hooks, Setup, Stage, StageCache, TorchStepper, TrainConfig, Training, cosine_schedule
from .base import SetupContext, prepared


def retrofit_recipe(**over) -> TrainConfig:
    """QWEN's retrofit (OASST1 assistant turns): 2 epochs, lr 5e-4 cosine with 100 warmup steps,
    AdamW wd 0, batch 16 for any worker count (micro-batch 4), max_len 1024, grad clip 1.0 — `over`
    replaces any of them."""
    return TrainConfig(**{"lr": 5e-4, "epochs": 2.0, "warmup_steps": 100, "weight_decay": 0.0,
                          "micro_batch_size": 4, "effective_batch": 16, "max_len": 1024, "grad_clip": 1.0, **over})


# TrainConfig fields the retrofit does not take: what they would set is the trial's, or does not apply
_NOT_RETROFIT = {"precision": ("auto", "the precision regime is the sweep's (train.precision)"),
                 "checkpoint_every": (0, "the retrofit is cached, not checkpointed (a restarted trial reloads it)"),
                 "loss_on": ("all", "OASST1 text has no answer span: the loss is on every token"),
                 "train_limit": (None, "the retrofit reads every OASST1 text")}


def _retrofit_config(value) -> TrainConfig:
    """`retrofit` as given (a TrainConfig, or a mapping of its fields over retrofit_recipe()), checked."""
    if isinstance(value, dict):
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"smf.retrofit: unknown key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        try:
            value = retrofit_recipe(**value)
        except ValueError as e:
            raise ValueError(f"smf.retrofit: {str(e).removeprefix('train: ')}") from None
    if not isinstance(value, TrainConfig):
        raise ValueError(f"smf.retrofit: a mapping of training fields (epochs, lr, max_steps, …), got {value!r}")
    for name, (default, why) in _NOT_RETROFIT.items():
        if getattr(value, name) != default:
            raise ValueError(f"smf.retrofit.{name}: not settable ({why})")
    return value


@dataclass
class SMFConfig:
    # the memory (QWEN defaults for Qwen2.5-0.5B; the world's spec shrinks them)
    layers: tuple[int, ...] = (6, 12, 18)  # QWEN: layers 6, 12, 18 of 24
    n_keys: int = 128                     # memory size: n_keys² slots per layer (QWEN 16,384)
    heads: int = 4                        # QWEN/BERGES
    k: int = 16                           # slots read per head per token (QWEN)
    d_k: int = 256                        # query size per head (QWEN)
    v_dim: int | None = None              # None = the model's hidden size
    mode: Literal["replace", "additive", "zero_values"] = "additive"   # QWEN: additive; zero_values is ours (no retrofit)
    alpha_init: float = 0.01              # QWEN: α of the additive mode
    count_padding: bool = False           # [ours] pads are not accesses; True = QWEN's code
    # the sparse update
    selector: str = "kl"                  # QWEN's KL selector; tfidf = LIN; tf, random = controls
    top_t: int = 512                      # QWEN: 512 rows per layer per selection
    granularity: Literal["micro", "step"] = "micro"   # QWEN selects per micro-batch; step = LIN (per optimizer batch)
    optimizer: str = "adamw"              # [ours] leak-free row-masked AdamW; "adamw_leaky" = QWEN's code; "sgd" = LIN
    # the dense retrofit (replace/additive), its own TrainConfig; spec: `retrofit: {epochs: 2, max_steps: 6}`,
    # the keys given over retrofit_recipe() — not over TrainConfig's defaults. Its precision is the trial's.
    retrofit: TrainConfig = field(default_factory=retrofit_recipe)
    # background statistics (QWEN: 2000 single-sequence OASST1 batches; LIN: 1000 DCLM batches)
    background_batches: int = 2000
    background_batch_size: int = 1

    def __post_init__(self):
        self.layers = tuple(self.layers)
        check_choices(self, "smf.")
        self.memory()  # validates the memory fields
        for name, value, registry in (("selector", self.selector, SELECTORS), ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in registry:
                raise ValueError(f"smf.{name}: unknown {value!r}; allowed: {', '.join(registry.names())}")
        self.retrofit = _retrofit_config(self.retrofit)
        if self.top_t < 1:
            raise ValueError(f"smf.top_t must be >= 1, got {self.top_t}")
        if self.background_batches < 1:
            raise ValueError("smf.background_batches must be >= 1")

    def memory(self) -> MemoryConfig:
        names = {f.name for f in fields(MemoryConfig)}
        return MemoryConfig(**{k: v for k, v in asdict(self).items() if k in names})

    @property
    def needs_retrofit(self) -> bool:
        return self.mode in ("replace", "additive")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_fingerprint(model) -> str:
    """Cheap identity of the base weights: name, shape and a few sums per tensor."""
    h = hashlib.sha256()
    for n, p in model.state_dict().items():
        t = p.detach().float()
        h.update(f"{n}{tuple(t.shape)}{t.sum().item():.6e}{t.abs().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


class _SparseHooks(Hooks):
    def __init__(self, updater: SparseUpdater):
        self.updater = updater

    def after_forward(self, batch):
        self.updater.after_forward(batch["attention_mask"])

    def before_step(self):
        return {f"rows/L{i}": n for i, n in self.updater.before_step().items()}   # tensors, read at log time

    def close(self):
        self.updater.close()


class SMF:
    name = "smf"
    Config = SMFConfig

    def stages(self, model, cfg: SMFConfig, ctx: SetupContext) -> list[Stage]:
        base_fp = _model_fingerprint(model)
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed)  # CPU draws: the same init on every device
        insert_memory(model, cfg.memory(), generator=gen)
        model.to(ctx.device)
        info: dict = {}                   # the retrofit's key and probes, logged with the trial
        background: dict = {}             # the background pass's statistics, for the sparse stage
        out = []
        if cfg.needs_retrofit:
            out.append(self._retrofit(model, cfg, ctx, base_fp, info))
        if cfg.selector in ("kl", "tfidf"):
            out.append(Stage("background", run=lambda: background.update(stats=self._background(model, cfg, ctx))))
        out.append(Stage("train", train=lambda: Training(self._sparse(model, cfg, ctx, background.get("stats"), info))))
        return out

    def setup(self, model, cfg: SMFConfig, ctx: SetupContext) -> Setup:
        """The sparse stage's Setup, after the retrofit and background pass (run here, quietly)."""
        return prepared(self, model, cfg, ctx)

    # -- stage 1: dense retrofit, a cached training stage ---------------------------------------------
    def _retrofit(self, model, cfg: SMFConfig, ctx: SetupContext, base_fp: str, info: dict) -> Stage:
        from ..batching import Batcher, text_examples
        from ..data import oasst1_texts

        rt = replace(cfg.retrofit, precision=ctx.train.precision)      # the trial's regime
        source = ctx.data["retrofit"]
        key = _digest("retrofit", base_fp, cfg.memory().to_dict(), source, rt.to_dict(), ctx.seed, ctx.world_size)
        steps: dict = {}

        def train() -> Training:  # on a miss, every rank
            texts = list(oasst1_texts(source, "train"))
            params = freeze_for_retrofit(model)
            opt = torch.optim.AdamW(params, lr=rt.lr, weight_decay=rt.weight_decay)
            batcher = Batcher(text_examples(texts), ctx.tokenizer, micro_batch_size=rt.micro_batch_size,
                              max_len=rt.max_len, effective_batch=rt.effective_batch, append_eos=rt.append_eos,
                              order=rt.batch_order, seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size,
                              cache_dir=ctx.cache_dir)
            steps["total"] = total = rt.total_steps(batcher.steps_per_epoch)
            stepper = TorchStepper(params, opt, cosine_schedule(opt, rt.warmup_steps, total, rt.lr_floor), rt.grad_clip,
                                   ctx.world_size)
            return Training(Setup(model=model, stepper=stepper, export=lambda: model), batcher, rt, total)

        def write(tmp: Path):  # rank 0 only, under the entry's lock, after training
            probes = ctx.probe(model) if ctx.probe else {}
            save_memory(model, tmp / "memory.pt")
            (tmp / "retrofit.json").write_text(json.dumps({"probes": probes, "train": rt.to_dict(),
                                                           "source": source, "steps": steps["total"]}, indent=1))

        def load(path: Path):     # every rank, hit or miss: a trial that waited for the same key loads it
            load_memory(model, path / "memory.pt")
            model.to(ctx.device)
            meta = json.loads((path / "retrofit.json").read_text())
            info.update(retrofit_key=key, retrofit_probes=meta["probes"])

        return Stage("retrofit", train=train,
                     cache=StageCache(Path(ctx.cache_dir or ".") / "retrofits", key, write, load))

    # -- stage 2: background statistics, a cached no-grad pass -----------------------------------------
    def _background(self, model, cfg: SMFConfig, ctx: SetupContext) -> BackgroundStats:
        from ..batching import Batcher, text_examples
        from ..data import oasst1_texts
        from ..memory import addressing_fingerprint

        source = ctx.data["retrofit"]
        regime = (ctx.train.precision, ctx.train.append_eos)   # counted as training counts: same autocast, same text
        key = _digest("background", addressing_fingerprint(model), source, cfg.background_batches,
                      cfg.background_batch_size, cfg.count_padding, cfg.retrofit.max_len, *regime)

        def build(tmp: Path):  # one process per key; ranks of a multi-rank trial wait and load
            texts = list(oasst1_texts(source, "train"))
            batcher = Batcher(text_examples(texts), ctx.tokenizer, micro_batch_size=cfg.background_batch_size,
                              max_len=cfg.retrofit.max_len, append_eos=ctx.train.append_eos, seed=ctx.seed)
            batches = (batcher.micro_batch(i) for i in range(cfg.background_batches))
            with autocast(ctx.device, ctx.train.precision):
                bg = compute_background(model, batches, count_padding=cfg.count_padding)
            bg.meta.update(source=source, batches=cfg.background_batches, batch_size=cfg.background_batch_size)
            bg.save(tmp)

        path = get_or_create(Path(ctx.cache_dir or ".") / "background", f"{key}.pt", build, file=True)
        return BackgroundStats.load(path, map_location=ctx.device)

    # -- stage 3: the sparse stage, the trial's own ------------------------------------------------------
    def _sparse(self, model, cfg: SMFConfig, ctx: SetupContext, bg: BackgroundStats | None, info: dict) -> Setup:
        mem = cfg.memory()
        values = freeze_for_sparse(model)
        opt = OPTIMIZERS[cfg.optimizer](values, lr=ctx.train.lr, weight_decay=ctx.train.weight_decay)
        stepper = TorchStepper(values, opt, cosine_schedule(opt, ctx.train.warmup_steps, ctx.total_steps, ctx.train.lr_floor),
                               ctx.train.grad_clip, world_size=ctx.world_size)
        reduce = None
        if ctx.world_size > 1:
            def reduce(c):
                torch.distributed.all_reduce(c)
                return c
        updater = SparseUpdater(model, opt, cfg.selector, cfg.top_t, cfg.granularity, background=bg,
                                count_padding=cfg.count_padding,
                                generator=torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1),
                                reduce_counts=reduce)
        info = {**info, "slots_per_layer": mem.n_slots, "memory_layers": list(mem.layers)}
        return Setup(model=model, stepper=stepper, export=lambda: model, hooks=_SparseHooks(updater),
                     trainable=sum(v.numel() for v in values), info=info)
