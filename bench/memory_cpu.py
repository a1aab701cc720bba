"""python bench/memory_cpu.py [--threads 1] [--reps 10]

CPU figures for the memory layer, printed as JSON lines (a benchmark, not a test):
1. `layer`: forward+backward time of a product-key memory layer against the Qwen2 FFN it sits
   beside, on the same input in the same run (moderately small: d=256, 4096 slots).
2. `smf_step`: on a tiny Qwen2 with two memory layers, the time of one SMF optimizer step
   (micro-batches, forward, backward, step) and the share of it spent in counting + selection +
   gradient masking (SparseUpdater.after_forward + before_step), for both granularities, against
   a dense values-only AdamW step without any of it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from smf_sweep.memory import (OPTIMIZERS, MemoryConfig, ProductKeyMemory, SparseUpdater, compute_background,
                              freeze_for_sparse, insert_memory)


def timed(fn, reps: int) -> float:
    """Median wall time of fn() in ms, after one warm-up call."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def bench_layer(reps: int) -> dict:
    d, B, T = 256, 4, 128  # moderately small: one sequence batch of 512 tokens
    cfg = MemoryConfig(layers=(0,), n_keys=64, heads=4, k=16, d_k=128)  # 4096 slots, QWEN's H, k
    qcfg = Qwen2Config(hidden_size=d, intermediate_size=1376)  # Qwen2.5-0.5B's FFN ratio 4864/896
    mem, ffn = ProductKeyMemory(d, cfg), Qwen2MLP(qcfg)
    x = torch.randn(B, T, d, requires_grad=True)

    def fwd_bwd(mod):
        def run():
            mod.zero_grad(set_to_none=True)
            x.grad = None
            mod(x).square().mean().backward()
        return run

    mem_ms, ffn_ms = timed(fwd_bwd(mem), reps), timed(fwd_bwd(ffn), reps)
    return {"bench": "layer", "tokens": B * T, "d": d, "slots": cfg.n_slots, "heads": cfg.heads, "k": cfg.k,
            "d_k": cfg.d_k, "memory_params": sum(p.numel() for p in mem.parameters()),
            "ffn_params": sum(p.numel() for p in ffn.parameters()), "memory_fwd_bwd_ms": round(mem_ms, 2),
            "ffn_fwd_bwd_ms": round(ffn_ms, 2), "memory_over_ffn": round(mem_ms / ffn_ms, 2)}


def tiny_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg)
    insert_memory(model, MemoryConfig(layers=(0, 1), n_keys=32, heads=4, k=8, d_k=32),
                  generator=torch.Generator().manual_seed(0))
    return model


def make_batch(g: torch.Generator, B=4, T=64) -> dict:
    ids = torch.randint(0, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, T - T // 4:] = 0  # a quarter of padding
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def bench_smf_step(reps: int, granularity: str | None, micro: int = 2, top_t: int = 64) -> dict:
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    bg = compute_background(model, [make_batch(g) for _ in range(8)])
    values = freeze_for_sparse(model)
    sparse = granularity is not None
    opt = OPTIMIZERS["adamw"](values, lr=1e-3) if sparse else torch.optim.AdamW(values, lr=1e-3)
    upd = SparseUpdater(model, opt, "kl", top_t, granularity, bg) if sparse else None
    batches = [make_batch(g) for _ in range(micro)]
    inside = []

    def step():
        t_in = 0.0
        for b in batches:
            loss = model(**b).loss / micro
            if sparse:
                t = time.perf_counter()
                upd.after_forward(b["attention_mask"])
                t_in += time.perf_counter() - t
            loss.backward()
        if sparse:
            t = time.perf_counter()
            upd.before_step()
            t_in += time.perf_counter() - t
        torch.nn.utils.clip_grad_norm_(values, 1.0)
        opt.step()
        opt.zero_grad()
        inside.append(t_in)

    step_ms = timed(step, reps)
    out = {"bench": "smf_step", "granularity": granularity or "dense_values_adamw", "micro_batches": micro,
           "tokens_per_micro": 4 * 64, "slots": 1024, "top_t": top_t, "step_ms": round(step_ms, 2)}
    if sparse:
        sel_ms = 1e3 * statistics.median(inside[1:])
        out.update(select_count_mask_ms=round(sel_ms, 3), share_of_step=round(sel_ms / step_ms, 3))
        upd.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared box)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions; the median is printed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"bench": "env", "torch": torch.__version__, "threads": args.threads, "reps": args.reps}))
    print(json.dumps(bench_layer(args.reps)), flush=True)
    for gran in (None, "micro", "step"):
        print(json.dumps(bench_smf_step(args.reps, gran)), flush=True)


if __name__ == "__main__":
    main()
