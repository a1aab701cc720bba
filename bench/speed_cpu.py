"""python bench/speed_cpu.py [--threads 1] [--steps 12]

Where a trial's compute goes, on a CPU, each figure a ratio against a baseline measured in the same
run (issue 14). JSON lines (a benchmark, not a test; ~3 min on 2 cores with the world built):
1. `padding`: computed / real tokens of one epoch's micro-batches, `random` order (the study's)
   against `length_grouped` — on the world's MedMCQA and on a stand-in with MedMCQA-like lengths
   (log-normal, median ≈ 150 tokens, a long tail cut at max_len 1024; the hub is out of reach here).
2. `step`: ms per optimizer step of THE loop (LoRA, the world model, the long-tailed stand-in), in
   both orders.
3. `tokenise`: tokenising the training set against loading the sweep's cached tokens.
4. `host_syncs`: tensor → Python conversions made by our code per optimizer step, per method (the
   code before issue 14, read line by line, made 4 per micro-batch and more in SMF).
5. `checkpoint`: bytes a checkpoint writes per method on the world model, against a naive full
   checkpoint (all weights + AdamW state), and the same sums for Qwen2.5-0.5B's parameter counts.
6. `probes`: the three study probes on the world (every question), TriviaQA one question at a
   time (the study's call) against batched (the same answers), MedMCQA at batch 16 one pass per option
   (before issue 14) against batch 64 with the shared prefix (now).
7. `medmcqa_prefix`: both MedMCQA variants on the world at batch 64, each question's prefix run once
   and its KV cache shared by the four options (`share_prefix`, the default) against one full pass
   per option (the path before), with the largest per-option log-likelihood difference and whether
   every decision is the same.
8. `loss_chunk`: the loss of one micro-batch at Qwen2.5-0.5B's head (hidden 896, vocabulary
   151,936; a one-layer decoder below it) on 2 × 1024 tokens, HF's loss over the whole logits
   (`train.loss_chunk: 0`, the study's) against the chunked loss (lm_loss.py) at 512 and 256
   targets a chunk: peak memory above the start of the forward (RSS sampled every 2 ms, each
   variant in a fresh process) and forward + backward time, and HF's logits bytes at the study's
   4 × 1024 tokens.
9. `compile`: one fp32 AdamW step (forward, backward, update) of the world model on fixed (8, 256)
   batches, eager against `torch.compile(model)` (inductor), after two warm-up steps (the compile),
   and the compile's seconds: whether torch.compile pays here (it is not in the loop unless it does).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smf_sweep.batching import Batcher, Example, encode, medmcqa_examples  # noqa: E402
from smf_sweep.data import load_medmcqa  # noqa: E402
from smf_sweep.models import load_model, load_tokenizer  # noqa: E402
from smf_sweep.world import WorldConfig, build_world  # noqa: E402

SMF = {"layers": [1, 2, 3], "n_keys": 32, "heads": 4, "k": 8, "d_k": 64, "top_t": 128, "mode": "zero_values",
       "selector": "kl", "background_batches": 32}


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def long_tailed(n: int = 1024) -> list[Example]:
    """MedMCQA-like lengths: question + options ≈ 60–100 tokens, explanations with a long tail."""
    g = torch.Generator().manual_seed(0)
    words = torch.exp(4.6 + 0.9 * torch.randn(n, generator=g)).clamp(20, 1500).int().tolist()
    return [Example(f"Medical exam question:\nQuestion: case {i}\nA. a\nB. b\nC. c\nD. d\nAnswer:",
                    " A. a\nExplanation: " + " ".join(["fever"] * w)) for i, w in enumerate(words)]


def bench_padding(world: Path, tok) -> None:
    sets = {"world_medmcqa": (medmcqa_examples(load_medmcqa(f"world:{world}", "train")), 8, 512),
            "medmcqa_like_lengths": (long_tailed(), 4, 1024)}
    for name, (ex, mbs, max_len) in sets.items():
        r = {o: Batcher(ex, tok, micro_batch_size=mbs, max_len=max_len, effective_batch=16, order=o, seed=0)
             .padding_ratio() for o in ("random", "length_grouped")}
        emit(case="padding", data=name, micro_batch=mbs, computed_per_real_random=round(r["random"], 3),
             computed_per_real_grouped=round(r["length_grouped"], 3),
             compute_saved_x=round(r["random"] / r["length_grouped"], 2))


def bench_step(world: Path, tok, steps: int) -> None:
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.methods.base import prepared
    from smf_sweep.train_loop import TrainConfig, run_stage

    ms = {}
    for order in ("random", "length_grouped"):
        model = load_model(world / "model", dtype="float32", device="cpu")
        cfg = TrainConfig(lr=1e-4, max_steps=steps, micro_batch_size=4, effective_batch=16, max_len=512,
                          warmup_steps=1, log_every=1, precision="fp32")
        b = Batcher(long_tailed(256), tok, micro_batch_size=4, max_len=512, effective_batch=16, order=order)
        setup = prepared(METHODS["lora"], model, METHODS["lora"].Config(), SetupContext(tok, cfg, steps, torch.device("cpu")))
        stamps = []
        run_stage(setup, b, cfg, lambda m, c: stamps.append(time.perf_counter()))
        ms[order] = 1e3 * (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    emit(case="step", method="lora", ms_per_step_random=round(ms["random"], 1),
         ms_per_step_grouped=round(ms["length_grouped"], 1), speedup_x=round(ms["random"] / ms["length_grouped"], 2))


def bench_tokenise(world: Path, tok) -> None:
    ex = long_tailed(4096)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        encode(ex, tok, max_len=1024, cache_dir=d)                 # miss: tokenise, write
        t1 = time.perf_counter()
        encode(ex, tok, max_len=1024, cache_dir=d)                 # hit: load
        t2 = time.perf_counter()
        fresh = time.perf_counter()
        encode(ex, tok, max_len=1024)
        fresh = time.perf_counter() - fresh
    emit(case="tokenise", examples=len(ex), fresh_s=round(fresh, 2), first_trial_s=round(t1 - t0, 2),
         cached_s=round(t2 - t1, 2), speedup_x=round(fresh / (t2 - t1), 1))


def bench_host_syncs(world: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_host_syncs import _syncs  # the test's counter, here on the world model

    class _MP:  # the bits of pytest's monkeypatch the counter uses
        def __init__(self):
            self.undo = []

        def setattr(self, obj, name, value):
            self.undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

    for method, mcfg in (("smf", dict(SMF)), ("lora", {}), ("full", {})):
        mp = _MP()
        with tempfile.TemporaryDirectory() as d:
            a = _syncs(world, Path(d), mp, method, mcfg, steps=3)
            b = _syncs(world, Path(d), mp, method, mcfg, steps=7)
        for obj, name, v in reversed(mp.undo):
            setattr(obj, name, v)
        per = (sum(b.values()) - sum(a.values())) / 4
        emit(case="host_syncs", method=method, per_optimizer_step=per)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_checkpoint(world: Path) -> None:
    from smf_sweep.worker import train_worker

    for method, mcfg in (("smf", dict(SMF)), ("lora", {}), ("full", {})):
        sizes = []

        def report(m, c):
            if c is not None and "final" not in m:
                sizes.append(_tree_bytes(c))
        with tempfile.TemporaryDirectory() as d:
            cfg = {"model": str(world / "model"), "method": method, "method_cfg": mcfg, "seed": 0,
                   "train": {"lr": 1e-4, "max_steps": 3, "micro_batch_size": 8, "effective_batch": 16, "max_len": 512,
                             "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2, "train_limit": 64},
                   "data": {"task": f"world:{world}", "retrofit": f"world:{world}"}, "probes": [], "cache_dir": d}
            train_worker(cfg, reporter=report)
        n = sum(p.numel() for p in load_model(world / "model", dtype="float32", device="cpu").parameters())
        naive = n * 4 * 3                          # fp32 weights + AdamW's two moments
        emit(case="checkpoint", method=method, bytes=sizes[0], naive_full_bytes=naive,
             fraction_of_naive=round(sizes[0] / naive, 4))
    # at study sizes (Qwen2.5-0.5B, pareto.yaml's points): parameter counts → bytes, fp32 + 2 moments
    n_qwen = 494_032_768
    values = 3 * 128 ** 2 * 896                    # 3 layers × 16,384 slots × 896
    lora = 16 * 24 * (2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864))   # r16 on q,k,v,o,gate,up,down
    for method, n in (("smf", values), ("lora", lora), ("full", n_qwen)):
        emit(case="checkpoint_study_size", method=method, trained_params=n, bytes=n * 4 * 3,
             gib=round(n * 12 / 2 ** 30, 2), fraction_of_full=round(n / n_qwen, 4))


def bench_probes(world: Path, tok) -> None:
    from smf_sweep.probes import run_probes

    model = load_model(world / "model", dtype="float32", device="cpu")
    src = f"world:{world}"

    def t(specs, bs):
        t0 = time.perf_counter()
        r = run_probes(model, tok, specs, batch_size=bs)
        return time.perf_counter() - t0, r

    one, r1 = t([{"task": "triviaqa", "variant": "study", "source": src, "limit": 0}], 32)
    bat, r2 = t([{"task": "triviaqa", "variant": "study", "source": src, "limit": 0,
                  "options": {"batched": True}}], 32)
    same = [a["output"] for a in r1["triviaqa"].items] == [b["output"] for b in r2["triviaqa"].items]
    emit(case="probes", probe="triviaqa", one_at_a_time_s=round(one, 2), batched_s=round(bat, 2),
         speedup_x=round(one / bat, 2), same_answers=same, n=r1["triviaqa"].n)
    m16, _ = t([{"task": "medmcqa", "variant": "study", "source": src, "limit": 0,
                 "options": {"share_prefix": False}}], 16)                      # before issue 14
    m64, _ = t([{"task": "medmcqa", "variant": "study", "source": src, "limit": 0}], 64)  # now: shared prefix
    w, _ = t([{"task": "wikitext", "variant": "study", "source": src, "limit": 0}], 64)
    emit(case="probes", probe="medmcqa", batch16_unshared_s=round(m16, 2), batch64_shared_s=round(m64, 2),
         speedup_x=round(m16 / m64, 2))
    emit(case="probes", probe="all_three_pareto_settings", seconds=round(bat + m64 + w, 2),
         before_issue_14_s=round(one + m16 + w, 2))


def bench_medmcqa_prefix(world: Path, tok) -> None:
    from smf_sweep.probes import PROBES

    model = load_model(world / "model", dtype="float32", device="cpu")
    for variant in ("study", "harness"):
        probe = PROBES[f"medmcqa:{variant}"]
        data = probe().load(f"world:{world}", limit=0)
        probe().run(model, tok, data[:8], batch_size=64)  # warm-up
        s, r = {}, {}
        for share in (False, True, False, True):  # interleaved, the best of two each: less noise from the other core
            t0 = time.perf_counter()
            r[share] = probe(share_prefix=share).run(model, tok, data, batch_size=64)
            s[share] = min(s.get(share, float("inf")), time.perf_counter() - t0)
        diff = max(abs(a - b) for x, y in zip(r[False].items, r[True].items) for a, b in zip(x["scores"], y["scores"]))
        emit(case="medmcqa_prefix", variant=variant, n=len(data), unshared_s=round(s[False], 2),
             shared_s=round(s[True], 2), speedup_x=round(s[False] / s[True], 2), max_abs_diff=float(f"{diff:.2g}"),
             same_decisions=[x["pred"] for x in r[False].items] == [y["pred"] for y in r[True].items])


def _loss_child(chunk: int, tokens: int, threads: int, q) -> None:
    """In a fresh process: peak RSS above the start (bytes, sampled) and seconds of one forward +
    backward of lm_loss at Qwen2.5-0.5B's head on `tokens` tokens; median of 2 after a warm-up."""
    import os
    import threading

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from smf_sweep.lm_loss import lm_loss

    torch.set_num_threads(threads)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page  # noqa: E731
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=1,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, 151936, (tokens // 1024, 1024))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def once() -> float:
        model.zero_grad(set_to_none=False)          # the gradients stay allocated, as between micro-batches
        t = time.perf_counter()
        lm_loss(model, batch, chunk).backward()
        return time.perf_counter() - t

    once()                                          # warm-up; leaves .grad allocated as every step does
    peak, stop = [0], threading.Event()
    start = rss()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss() - start)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    ts = sorted(once() for _ in range(2))
    stop.set()
    th.join()
    q.put({"peak_bytes": peak[0], "seconds": ts[0]})


def bench_loss_chunk(threads: int, tokens: int = 2048) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = {}
    for chunk in (0, 512, 256):
        q = ctx.Queue()
        p = ctx.Process(target=_loss_child, args=(chunk, tokens, threads, q))
        p.start()
        out[chunk] = q.get()
        p.join()
    base = out[0]
    for chunk in (512, 256):
        r = out[chunk]
        emit(case="loss_chunk", tokens=tokens, vocab=151936, chunk=chunk, hf_peak_mb=round(base["peak_bytes"] / 2**20),
             chunked_peak_mb=round(r["peak_bytes"] / 2**20),
             memory_ratio=round(base["peak_bytes"] / max(r["peak_bytes"], 1), 2),
             hf_s=round(base["seconds"], 3), chunked_s=round(r["seconds"], 3),
             time_ratio=round(r["seconds"] / base["seconds"], 3),
             study_hf_logits_mb=round(4 * 1024 * 151936 * 4 / 2**20))


def bench_compile(world: Path, steps: int) -> None:
    ids = torch.randint(0, 2000, (steps + 2, 8, 256), generator=torch.Generator().manual_seed(0))   # (n, B, T)
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = load_model(world / "model", dtype="float32", device="cpu").train()
        run = torch.compile(model) if mode == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        stamps = [time.perf_counter()]
        for x in ids:
            run(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        out[mode] = {"warmup_s": stamps[2] - stamps[0], "ms": 1e3 * (stamps[-1] - stamps[2]) / steps}
    emit(case="compile", batch=[8, 256], steps=steps, eager_ms=round(out["eager"]["ms"], 1),
         compiled_ms=round(out["compiled"]["ms"], 1), speedup_x=round(out["eager"]["ms"] / out["compiled"]["ms"], 2),
         compile_s=round(out["compiled"]["warmup_s"] - out["eager"]["warmup_s"], 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps timed per order (default 12)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="padding step tokenise host_syncs checkpoint probes medmcqa_prefix loss_chunk compile (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = build_world(WorldConfig(), progress=False)
    tok = load_tokenizer(world / "model")
    cases = {"padding": lambda: bench_padding(world, tok), "step": lambda: bench_step(world, tok, args.steps),
             "tokenise": lambda: bench_tokenise(world, tok), "host_syncs": lambda: bench_host_syncs(world),
             "checkpoint": lambda: bench_checkpoint(world), "probes": lambda: bench_probes(world, tok),
             "medmcqa_prefix": lambda: bench_medmcqa_prefix(world, tok),
             "loss_chunk": lambda: bench_loss_chunk(args.threads), "compile": lambda: bench_compile(world, args.steps)}
    for name, fn in cases.items():
        if args.only is None or name in args.only:
            fn()


if __name__ == "__main__":
    main()
