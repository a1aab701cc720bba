"""The step loop reads the device at most once per optimizer step (issue 14): losses, token counts,
SMF's row counts and gradient norms stay on the device until a log step. Counted on a CPU by
recording every tensor → Python conversion made directly by the project's own code during
training. Libraries' own reads are theirs (transformers' mask check reads the attention mask once
per forward, DeepSpeed checks its grad norm once per step: docs/pitfalls.md)."""
from __future__ import annotations

import collections
import contextlib
import traceback
from pathlib import Path

import pytest
import torch

import smf_sweep.train_loop as train_loop
import smf_sweep.worker as worker

PKG = Path(__file__).resolve().parents[1] / "smf_sweep"
CONVERSIONS = ("item", "__bool__", "__int__", "__float__", "tolist", "__index__", "nonzero")
HOST_SIDE = {"batching.py"}   # indices into the host-side example list: CPU tensors on any machine
CPU_ONLY = {("selectors.py", "select_rows")}   # the NaN check that becomes an async assert off the CPU
SMF = {"layers": [1], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6, "mode": "zero_values",
       "selector": "kl", "background_batches": 8}


@contextlib.contextmanager
def _record(calls: collections.Counter, on: dict):
    orig = {n: getattr(torch.Tensor, n) for n in CONVERSIONS}

    def wrap(name):
        f = orig[name]

        def g(self, *a, **k):
            if on["training"]:
                fr = traceback.extract_stack(limit=2)[0]        # the caller: our code, or a library's
                p = Path(fr.filename)
                if PKG in p.parents and p.name not in HOST_SIDE and (p.name, fr.name) not in CPU_ONLY:
                    calls[(name, f"{p.name}:{fr.lineno}")] += 1
            return f(self, *a, **k)
        return g

    for n in CONVERSIONS:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield
    finally:
        for n in CONVERSIONS:
            setattr(torch.Tensor, n, orig[n])


def _syncs(world, tmp_path, monkeypatch, method, mcfg, steps) -> collections.Counter:
    calls, on = collections.Counter(), {"training": False}
    inner = train_loop.run_stage

    def run_stage(setup, *a, **k):
        if k.get("stage", "train") != "train":
            return inner(setup, *a, **k)
        opt = getattr(setup.stepper, "opt", None)
        if hasattr(opt, "_dense"):
            opt._dense = True             # SMF's accelerator path (the CPU one gathers rows on the host)
        on["training"] = True
        try:
            return inner(setup, *a, **k)
        finally:
            on["training"] = False

    monkeypatch.setattr(worker, "run_stage", run_stage)
    cfg = {"model": str(world / "model"), "method": method, "method_cfg": dict(mcfg), "seed": 0,
           "train": {"lr": 1e-3, "max_steps": steps, "micro_batch_size": 4, "effective_batch": 8, "max_len": 64,
                     "warmup_steps": 1, "log_every": 1000, "train_limit": 64},
           "data": {"task": f"world:{world}", "retrofit": f"world:{world}"}, "probes": [],
           "cache_dir": str(tmp_path / "cache")}
    with _record(calls, on):
        worker.train_worker(cfg, reporter=lambda m, c: None)
    return calls


@pytest.mark.parametrize("method, mcfg", [("smf", SMF), ("lora", {}), ("full", {})], ids=["smf", "lora", "full"])
def test_at_most_one_host_sync_per_optimizer_step(tiny_world, tmp_path, monkeypatch, method, mcfg):
    short = _syncs(tiny_world, tmp_path, monkeypatch, method, mcfg, steps=3)
    long = _syncs(tiny_world, tmp_path, monkeypatch, method, mcfg, steps=7)   # 4 more steps, same one log
    extra = {k: long[k] - short.get(k, 0) for k in long if long[k] != short.get(k, 0)}
    assert sum(extra.values()) <= 4, f"{method}: {sum(extra.values()) / 4} syncs per step: {extra}"
