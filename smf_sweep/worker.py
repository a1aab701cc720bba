"""The Ray Train worker function of a trial: load the base model and the task data, run the method's
stages through THE loop (train_loop.run_stages: SMF's retrofit and background pass), train its last
stage on the task data (train_loop.run_stage, with checkpoints and resume), probe on rank 0, report.

Runs under `TorchTrainer` (each worker) or in-process (`train_worker(config, reporter=...)`) for
tests and the rehearsal. `config` is a WorkerConfig (trial.worker_config builds it from the spec;
plain data goes through WorkerConfig.from_dict)."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformers import set_seed

from .batching import Batcher, medmcqa_examples
from .data import medmcqa_train_subset
from .methods import METHODS, SetupContext
from .models import load_model, load_tokenizer
from .precision import resolve as resolve_precision
from .train_loop import NonFiniteLoss, run_stage, run_stages
from .trial_config import WorkerConfig

Reporter = Callable[[dict, "Path | None"], None]


def _in_ray() -> bool:
    """Inside a Ray Train worker (which has imported ray.train: in-process callers never import Ray here)."""
    if "ray.train" not in sys.modules:
        return False
    try:
        import ray.train
        ray.train.get_context().get_world_size()
        return True
    except Exception:
        return False


def ray_reporter(metrics: dict, checkpoint_dir: Path | None) -> None:
    import ray.train
    ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=ckpt)


def probe_results(model, tokenizer, specs: list, batch_size: int, precision: str, prefix: str = "") -> dict:
    """{<task>: value, <task>.n: n, <task>.version: version} for MLflow/Tune (flat floats/strings) of
    the probes `specs` (ProbeSpecs), probed in the trial's precision regime (the base probes used the same one)."""
    from .precision import autocast
    from .probes import run_probes

    out = {}
    with autocast(next(model.parameters()).device, precision):
        results = run_probes(model, tokenizer, specs, batch_size=batch_size)
    for key, r in results.items():
        out[f"{prefix}{key}"] = r.value
        out[f"{prefix}{key}.n"] = r.n
        out[f"{prefix}{key}.version"] = r.version
    return out


def train_worker(config: WorkerConfig | Mapping[str, Any], reporter: Reporter | None = None) -> dict:
    """One trial's training + after-probes. Returns the final metrics (rank 0's are the trial's).

    Reports go to `reporter`, by default Ray Train's inside a Ray Train worker (else nowhere)."""
    t_start = time.perf_counter()
    cfg = config if isinstance(config, WorkerConfig) else WorkerConfig.from_dict(config)
    if _in_ray():
        import ray.train
        import ray.train.torch
        ctx_r = ray.train.get_context()
        rank, world = ctx_r.get_world_rank(), ctx_r.get_world_size()
        device = ray.train.torch.get_device()
        reporter = reporter or ray_reporter
        ckpt = ray.train.get_checkpoint()
        pg = ray.util.get_current_placement_group()      # for the sweep's janitor (tune.PlacementGroupJanitor)
        reporter({"placement_group": pg.id.hex() if pg else ""}, None)
    else:
        rank, world, device, ckpt = 0, 1, torch.device(cfg.device), None
        reporter = reporter or (lambda m, c: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed = cfg.seed
    set_seed(seed)                          # python, numpy, torch (and CUDA) RNGs
    tcfg = replace(cfg.train, precision=resolve_precision(cfg.train.precision, device))
    method = METHODS[cfg.method]
    cache = cfg.cache_dir                   # tokens, retrofits, statistics: shared by the sweep's trials

    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype="float32", device=device)   # fp32 weights; bf16 autocast on GPU
    rows = medmcqa_train_subset(cfg.data.task, seed=seed, limit=tcfg.train_limit)   # QWEN: shuffle(seed), then select
    batcher = Batcher(medmcqa_examples(rows), tok, micro_batch_size=tcfg.micro_batch_size, max_len=tcfg.max_len,
                      effective_batch=tcfg.effective_batch, loss_on=tcfg.loss_on, append_eos=tcfg.append_eos,
                      order=tcfg.batch_order, seed=seed, rank=rank, world_size=world, cache_dir=cache)
    total = tcfg.total_steps(batcher.steps_per_epoch)
    probes, pbs = list(cfg.probes), cfg.probe_batch_size
    ctx = SetupContext(tokenizer=tok, train=tcfg, total_steps=total, device=device, seed=seed, rank=rank,
                       world_size=world, cache_dir=cache,
                       probe=(lambda m: probe_results(m, tok, probes, pbs, tcfg.precision)) if probes else None,
                       data=asdict(cfg.data))
    resume = Path(ckpt.to_directory()) if ckpt is not None else None
    if resume is not None and (resume / FINAL).exists():      # restarted after it had finished
        final = json.loads((resume / FINAL).read_text())
        _report_final(reporter, final, rank)
        return final
    curve = None
    if cfg.curves.on:                      # the base model's subset values and general-text distributions first
        from .curves import Curve
        from .objectives import Objectives
        curve = Curve(cfg.curves, probes, Objectives.from_json(cfg.objectives), tok, batch_size=pbs,
                      precision=tcfg.precision, rank=rank)
        curve.reference(model)
    try:
        # the method's stages before its last (metrics reported as <stage>/…), then the trial's own
        setup = run_stages(method.stages(model, cfg.method_cfg, ctx), reporter, device=device, rank=rank,
                           world_size=world).setup
        t_train = time.perf_counter()
        last = run_stage(setup, batcher, tcfg, reporter, stage="train", total_steps=total, device=device,
                         rank=rank, world_size=world, resume_dir=resume, progress=cfg.progress,
                         evaluate=curve.evaluator(setup.current) if curve is not None else None)
    except NonFiniteLoss as e:
        final = {"diverged": 1, "failure_reason": str(e), "final": 1}
        _report_final(reporter, final, rank)
        return final
    # (never "done": Tune reads done=True in a result as "stop this trial", which killed the driver
    # before its final report and left the Train run's placement group reserved)
    final = {**last, "final": 1, "trainable_params": setup.trainable, "train_steps": total,
             "train/precision": tcfg.precision,
             **{f"info.{k}": (json.dumps(v) if not isinstance(v, (int, float, str)) else v)
                for k, v in setup.info.items() if k != "retrofit_probes"}}
    for k, v in setup.info.get("retrofit_probes", {}).items():
        final[f"retrofit/{k}"] = v
    final["time.setup_s"] = t_train - t_start              # model + data + method setup (retrofit, background)
    final["time.train_s"] = time.perf_counter() - t_train
    exported = setup.export()          # collective for ZeRO-3: every rank calls it
    t_probe = time.perf_counter()
    if rank == 0 and probes:
        final.update(probe_results(exported, tok, probes, pbs, tcfg.precision, prefix="after/"))
    final["time.probe_s"] = time.perf_counter() - t_probe
    setup.hooks.close()                   # train/peak_memory_bytes (CUDA): the loop's, training without its
    #                                       curve points, before the after-probes (objectives.py: cost/peak_memory_bytes)
    _report_final(reporter, final, rank)
    return final


FINAL = "final_metrics.json"


def _report_final(reporter: Reporter, final: dict, rank: int) -> None:
    """The last report, with the final metrics as a checkpoint from rank 0; the local copy is
    deleted once reported (Ray Train has uploaded it to storage by then)."""
    import shutil

    path = _final_checkpoint(final) if rank == 0 else None
    try:
        reporter(final, path)
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _final_checkpoint(final: dict) -> Path:
    """Ray Train V2 keeps only metrics that come with a checkpoint (Result.metrics is the latest
    checkpoint's), so the final report carries a small one: the metrics themselves, on storage."""
    path = Path(tempfile.mkdtemp(prefix="final-"))
    (path / FINAL).write_text(json.dumps(final, default=str))
    return path
