"""Speed of the project's own training and probe paths on the exact Qwen2.5-0.5B configuration.

    python bench/gpu_bench.py                      # on a CUDA machine (H200: run beside the anchor)
    python3 ../shared/bench/gpu_anchor.py          # the plain PyTorch/transformers/peft baseline, same run
    python bench/gpu_bench.py --tiny --steps 3     # CPU smoke test of this script (tests/test_bench.py)

One JSON line per case. Training (batch 16 × 256, random init, random tokens): tokens/s, step ms,
peak GiB, MFU = 6·N·tokens/s / 989 TFLOP/s (the anchor's convention), and for SMF the share of a
step spent counting, selecting and masking rows. Probes at the study's sizes (1000 MedMCQA
questions, 1000 TriviaQA questions, 1000 WikiText lines) on synthetic data of realistic lengths:
questions/s or tokens/s and seconds. Compare with the anchor's figures as ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

QWEN = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
            rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
PEAK_BF16 = 989e12


def emit(**kw):
    print(json.dumps(kw), flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_dir(cfg: dict, root: Path) -> Path:
    """A random-init Qwen2 with this config and a tiny tokenizer, saved so load_model reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**cfg)).save_pretrained(root)
    vocab = {"<|endoftext|>": 0, **{chr(33 + i): i + 1 for i in range(90)}, "Ġ": 91}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(root)
    return root


class RandomBatcher:
    """The loop's Batcher interface over random token batches of one shape."""

    def __init__(self, B: int, T: int, vocab: int, dev):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(1, vocab, (8, B, T), generator=g)
        self.per_epoch = self.steps_per_epoch = 10 ** 6

    def micro_batch(self, k: int):
        x = self.x[k % len(self.x)]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


def bench_train(method: str, mcfg: dict, mdir: Path, cfg: dict, B: int, T: int, steps: int, dev, cache: Path):
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig, run_stage

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    warm = 3
    tcfg = TrainConfig(lr=1e-4, max_steps=warm + steps, micro_batch_size=B, effective_batch=B, max_len=T, warmup_steps=1,
                       log_every=1, precision="auto")
    tok = load_tokenizer(mdir)
    model = load_model(mdir, dtype="float32", device=dev)
    ctx = SetupContext(tok, tcfg, warm + steps, dev, cache_dir=cache, data={"retrofit": str(cache / "oasst.jsonl")})
    m = METHODS[method]
    setup = m.setup(model, m.Config(**mcfg), ctx)
    hook_s = [0.0]
    if method == "smf":                                   # time counting + selection + masking
        h = setup.hooks
        af, bs = h.after_forward, h.before_step

        def timed(fn):
            def run(*a):
                sync(dev)
                t = time.perf_counter()
                out = fn(*a)
                sync(dev)
                hook_s[0] += time.perf_counter() - t
                return out
            return run
        h.after_forward, h.before_step = timed(af), timed(bs)
    stamps = []

    def report(metrics, _):
        sync(dev)
        stamps.append((time.perf_counter(), hook_s[0]))
    run_stage(setup, RandomBatcher(B, T, cfg["vocab_size"], dev), tcfg, report, stage="bench", device=dev)
    (t0, h0), (t1, h1) = stamps[warm - 1], stamps[-1]
    dt = (t1 - t0) / steps
    n = sum(p.numel() for p in setup.export().parameters())
    out = dict(case=f"train_{method}", step_ms=round(dt * 1e3, 2), tok_per_s=round(B * T / dt),
               mfu_vs_989T=round(6 * n * B * T / dt / PEAK_BF16, 4), trainable=setup.trainable, total=n,
               peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev.type == "cuda" else None)
    if method == "smf":
        out["select_count_mask_share"] = round((h1 - h0) / (t1 - t0), 4)
    emit(**out)
    setup.hooks.close()
    del setup, model


def synthetic_data(root: Path, n: int, rng: random.Random):
    """MedMCQA / TriviaQA / WikiText / OASST1 files of realistic lengths (random words)."""
    words = [f"w{i}" for i in range(500)]
    s = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    files = {
        "medmcqa/validation.jsonl": [{"id": str(i), "question": s(40), "opa": s(4), "opb": s(4), "opc": s(4), "opd": s(4),
                                      "cop": i % 4, "choice_type": "single", "exp": "", "subject_name": "x",
                                      "topic_name": "x"} for i in range(n)],
        "trivia_qa/validation.jsonl": [{"question": s(12), "question_id": str(i), "question_source": "", "entity_pages": {},
                                        "search_results": {}, "answer": {"aliases": [s(2)], "normalized_aliases": [],
                                        "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                                        "normalized_value": "", "type": "", "value": ""}} for i in range(n)],
        "wikitext/test.jsonl": [{"text": f" {s(60)} \n"} for _ in range(n)],
    }
    for rel, rows in files.items():
        p = root / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    oasst = [{"message_id": str(i), "parent_id": None, "user_id": "u", "created_date": "", "text": s(60), "role": "assistant",
              "lang": "en", "review_count": 1, "review_result": True, "deleted": False, "rank": 0, "synthetic": False,
              "model_name": None, "detoxify": None, "message_tree_id": str(i), "tree_state": "", "emojis": None,
              "labels": None} for i in range(64)]
    (root / "oasst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in oasst))


def bench_probes(mdir: Path, data: Path, n: int, dev, batch: int):
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.probes import run_probes

    model, tok = load_model(mdir, device=dev), load_tokenizer(mdir)
    total = 0.0
    for task, unit in (("medmcqa", "questions"), ("triviaqa", "questions"), ("wikitext", "lines")):
        sync(dev)
        t = time.perf_counter()
        r = run_probes(model, tok, [{"task": task, "source": f"world:{data}", "limit": n}], batch_size=batch)[task]
        sync(dev)
        dt = time.perf_counter() - t
        total += dt
        emit(case=f"probe_{task}", n=r.n, seconds=round(dt, 2), **{f"{unit}_per_s": round(r.n / dt, 1)},
             value=r.value, version=r.version)
    emit(case="probes_total", seconds=round(total, 2), target_s=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small config, CPU-sized (tests this script)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per training case (after 3 warm-up)")
    ap.add_argument("--cases", default="full,lora,smf,probes", help="comma-separated subset")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, B, T, n = (TINY, 4, 64, 16) if args.tiny else (QWEN, 16, 256, 1000)
    mem = (dict(layers=[1, 2], n_keys=16, heads=2, k=4, d_k=32, top_t=32) if args.tiny else
           dict(layers=[6, 12, 18], n_keys=128, heads=4, k=16, d_k=256, top_t=512))
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mdir = model_dir(cfg, root / "model")
        synthetic_data(root, n, random.Random(0))
        specs = {"full": {"zero_stage": 2}, "lora": {},
                 "smf": dict(mem, mode="zero_values", selector="kl", background_batches=8, background_batch_size=4,
                             retrofit={"max_len": T})}
        for name in ("full", "lora", "smf"):
            if name in cases:
                try:
                    bench_train(name, specs[name], mdir, cfg, B, T, args.steps, dev, root)
                except Exception as e:  # a failing case is a figure too
                    emit(case=f"train_{name}", error=repr(e)[:400])
        if "probes" in cases:
            bench_probes(mdir, root, n, dev, batch=64 if dev.type == "cuda" else 8)
    emit(case="env", torch=torch.__version__, device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu")


if __name__ == "__main__":
    main()
