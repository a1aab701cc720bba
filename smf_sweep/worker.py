"""The Ray Train worker function of a trial: load the base model and the task data, run the method's
stages through THE loop (train_loop.run_stages: SMF's retrofit and background pass), train its last
stage on the task data (train_loop.run_stage, with checkpoints and resume), probe on rank 0, report.

Runs under `TorchTrainer` (each worker) or in-process (`train_worker(config, reporter=...)`) for
tests. `config` is plain JSON-able data (see trial.worker_config)."""
from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .batching import Batcher, medmcqa_examples
from .data import medmcqa_train_subset
from .methods import METHODS, SetupContext
from .models import load_model, load_tokenizer
from .precision import resolve as resolve_precision
from .train_loop import NonFiniteLoss, TrainConfig, run_stage, run_stages

Reporter = Callable[[dict, "Path | None"], None]


def _in_ray() -> bool:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def probe_results(model, tokenizer, specs: list[dict], batch_size: int, precision: str, prefix: str = "") -> dict:
    """{<task>: value, <task>.n: n, <task>.version: version} for MLflow/Tune (flat floats/strings),
    probed in the trial's precision regime (the base probes used the same one)."""
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


def train_worker(config: dict, reporter: Reporter | None = None) -> dict:
    """One trial's training + after-probes. Returns the final metrics (rank 0's are the trial's)."""
    t_start = time.perf_counter()
    in_ray = reporter is None and _in_ray()
    if in_ray:
        import ray.train
        import ray.train.torch
        ctx_r = ray.train.get_context()
        rank, world = ctx_r.get_world_rank(), ctx_r.get_world_size()
        device = ray.train.torch.get_device()
        reporter = ray_reporter
        ckpt = ray.train.get_checkpoint()
        pg = ray.util.get_current_placement_group()      # for the sweep's janitor (tune.PlacementGroupJanitor)
        reporter({"placement_group": pg.id.hex() if pg else ""}, None)
    else:
        rank, world, device, ckpt = 0, 1, torch.device(config.get("device", "cpu")), None
        reporter = reporter or (lambda m, c: None)
    if config.get("fault"):                 # tests: crash this worker process once, after a checkpoint
        reporter = _crash_after_checkpoint(reporter, **config["fault"])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    seed = int(config["seed"])
    seed_everything(seed)
    tcfg = TrainConfig(**config["train"])
    tcfg.precision = resolve_precision(tcfg.precision, device)
    method = METHODS[config["method"]]
    mcfg = method.Config(**config.get("method_cfg", {}))

    tok = load_tokenizer(config["model"])
    model = load_model(config["model"], dtype="float32", device=device)   # fp32 weights; bf16 autocast on GPU
    rows = medmcqa_train_subset(config["data"]["task"], seed=seed, limit=tcfg.train_limit)   # QWEN: shuffle(seed), then select
    batcher = Batcher(medmcqa_examples(rows), tok, micro_batch_size=tcfg.micro_batch_size, max_len=tcfg.max_len,
                      effective_batch=tcfg.effective_batch, loss_on=tcfg.loss_on, append_eos=tcfg.append_eos,
                      order=tcfg.batch_order, seed=seed, rank=rank, world_size=world,
                      cache_dir=Path(config["cache_dir"]) if config.get("cache_dir") else None)   # tokens shared by trials
    total = tcfg.total_steps(batcher.steps_per_epoch)
    probes = config.get("probes", [])
    pbs = int(config.get("probe_batch_size", 16))
    ctx = SetupContext(tokenizer=tok, train=tcfg, total_steps=total, device=device, seed=seed, rank=rank,
                       world_size=world, cache_dir=Path(config["cache_dir"]) if config.get("cache_dir") else None,
                       probe=(lambda m: probe_results(m, tok, probes, pbs, tcfg.precision)) if probes else None,
                       data=dict(config["data"]))
    resume = Path(ckpt.to_directory()) if ckpt is not None else None
    if resume is not None and (resume / FINAL).exists():      # restarted after it had finished
        final = json.loads((resume / FINAL).read_text())
        _report_final(reporter, final, rank)
        return final
    if config.get("debug_dir"):             # tests: where each attempt of each rank started
        d = Path(config["debug_dir"])
        d.mkdir(parents=True, exist_ok=True)
        start = json.loads((resume / "loop.json").read_text())["step"] if resume else 0
        with open(d / "starts.jsonl", "a") as f:
            f.write(json.dumps({"rank": rank, "start_step": start}) + "\n")
    try:
        # the method's stages before its last (metrics reported as <stage>/…), then the trial's own
        setup = run_stages(method.stages(model, mcfg, ctx), reporter, device=device, rank=rank, world_size=world).setup
        t_train = time.perf_counter()
        last = run_stage(setup, batcher, tcfg, reporter, stage="train", total_steps=total, device=device,
                         rank=rank, world_size=world, resume_dir=resume, progress=config.get("progress", False))
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
    setup.hooks.close()
    if config.get("debug_dir"):             # tests: each rank's weights, to compare ranks
        _write_weights_digest(Path(config["debug_dir"]), rank, exported)
    _report_final(reporter, final, rank)
    return final


FINAL = "final_metrics.json"


def _crash_after_checkpoint(reporter: Reporter, step: int, marker: str) -> Reporter:
    """Wrap the reporter: one report after the checkpoint at `step`, kill the process (os._exit)
    unless `marker` exists — a worker dying mid-run, exactly once, for the resume test.

    Ray Train hands reports to the controller through a one-slot queue that the controller polls,
    one poll at a time. Waiting until the report after the checkpoint has left the queue means the
    poll that carried the checkpoint has returned, so the restart resumes from `step` exactly."""
    import os

    def report(metrics: dict, ckpt: Path | None) -> None:
        reporter(metrics, ckpt)
        if metrics.get("train/step") == step + 1 and not Path(marker).exists():
            Path(marker).write_text(json.dumps(metrics))
            _wait_for_report_queue(timeout_s=60.0)
            os._exit(1)
    return report


def _wait_for_report_queue(timeout_s: float) -> None:
    """Until this worker's Ray Train report queue is empty (test hook; a Ray internal)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context
        queue = get_train_context().get_result_queue()
    except Exception:          # not inside a Ray Train V2 worker
        return
    end = time.monotonic() + timeout_s
    while not queue.empty() and time.monotonic() < end:
        time.sleep(0.05)


def _write_weights_digest(path: Path, rank: int, model) -> None:
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().float().numpy().tobytes())
    path.mkdir(parents=True, exist_ok=True)
    (path / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "sha256": h.hexdigest()}))


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
