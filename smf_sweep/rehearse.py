"""The GPU rehearsal of the study (issue 12): the sweep's trial path, for real, on one machine.

    python -m smf_sweep.rehearse                   # one GPU: the study's path, ≤ 8 min on an H200
    python -m smf_sweep.rehearse --tiny            # CPU / CI: the same checks on a tiny Qwen2 (≈ 2 min, 2 cores)
    python -m smf_sweep.rehearse --model Qwen/Qwen2.5-0.5B-Instruct   # the real checkpoint, where the hub is reachable
    python -m smf_sweep.rehearse --only 'null_*' --out rehearsal.jsonl

What runs is the product code a sweep runs, without Ray (the GPU machine has none): the study's spec
`search_spaces/pareto.yaml` through `spec.load_spec` with `--set`-style overrides that shrink counts
only (steps, probe limits, retrofit steps, background batches, warmup and checkpoint intervals),
every data source pointed at the embedded world's local files (the hub schemas), and the model:
the exact Qwen2.5-0.5B-Instruct architecture with random weights (saved in bf16, as the hub's
checkpoint), the world's tokenizer (ids < 2048 fit the vocabulary) — or `--model`. Base probes:
`trial._compute_base`; each trial: `trial.worker_config` → `worker.train_worker(config, reporter=…)`
(the Ray Train worker function, in-process) → `trial.check_comparable` and `trial.outcome`.

Checks, one JSON line each ({"check", "ok", "seconds", …figures}), exit status 1 if any fails:
  environment   torch / CUDA / bf16, versions of what the path imports
  model         the architecture built and saved (or --model's config)
  base_probes   the three probes of the base model, in the sweep's precision regime
  smf_kl        SMF, additive memory after a short retrofit (cached), KL selector  — pareto's point 1
  smf_tfidf     the same with TF-IDF, reusing the retrofit from the cache          — pareto's point 2
  lora          LoRA r 16, α 32 — pareto's point
  full          full FT under DeepSpeed ZeRO-2 (a one-process torch.distributed group)
  null_<method>_<precision>   lr 1e-30, 2 steps (SMF: zero_values, function-preserving at init):
                every probe delta within 1e-3. bf16 on a GPU; fp32 and bf16 on a CPU
  counters      train/optimizer_steps, train/examples_seen, train/effective_batch agree across methods
  imports       no project module imported ray, mlflow or optuna
  summary       all of the above

Time on one H200 (estimate; full size). Training is latency-bound, not FLOP-bound: a trial is 12
optimizer steps × 16 examples × ≈100 tokens (world MedMCQA) ≈ 19k tokens, 6·N·tokens = 6 × 0.494e9 ×
19e3 ≈ 6e13 FLOP ≈ 0.1 s at 790 TFLOP/s; micro-batches of 4 × ≈100 tokens through 24 layers take
≈ 30–60 ms forward + backward, so ≈ 0.2 s per step, ≈ 3 s per trial (× 1.3 with full FT's gradient
checkpointing). What costs: 9 probe runs (base, 4 trials, SMF's retrofit, 3 null trials) × 3 probes
× 64 items ≈ 5–10 s each (TriviaQA's 32 greedy tokens dominate) ≈ 1–1.5 min; model build + 1 GB save
≈ 15 s and a 1 GB load per trial ≈ 2 s × 7; DeepSpeed init ≈ 10–20 s × 2 and one ZeRO-2 checkpoint
(fp32 weights + Adam ≈ 6 GB) ≈ 10 s; imports + CUDA init ≈ 20 s. About 3–4 min in all.
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib
import importlib.abc
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "pareto.yaml"

# Qwen/Qwen2.5-0.5B-Instruct's config.json (architecture fields): 494,032,768 parameters with the
# tied embedding (0.36B without it). Special-token ids come from the tokenizer in use.
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                  sliding_window=32768, max_window_layers=21, attention_dropout=0.0, initializer_range=0.02)
QWEN25_05B_PARAMS = 494_032_768
# --tiny: the same shape of model (24 layers, so pareto's memory layers 6/12/18 exist; GQA 2:1),
# narrow, with the world tokenizer's vocabulary.
TINY = dict(QWEN25_05B, vocab_size=2048, hidden_size=64, intermediate_size=192, num_attention_heads=4,
            num_key_value_heads=2)

# Counts shrunk from pareto.yaml (nothing else changes). Full size: ≈ 3–4 min on an H200 (docstring).
SIZES = {
    "full": dict(max_steps=12, train_limit=256, warmup=2, checkpoint_every=6, probe_limit=64,
                 retrofit_steps=6, background_batches=64),
    "tiny": dict(max_steps=4, train_limit=64, warmup=1, checkpoint_every=2, probe_limit=16,
                 retrofit_steps=2, background_batches=8),
}
NULL_LR, NULL_STEPS, NULL_TOL = 1e-30, 2, 1e-3
METHOD_CHECKS = ("smf_kl", "smf_tfidf", "lora", "full")
NULL_METHODS = ("smf", "lora", "full")
SMF_ARMS = ("smf_study", "smf", "smf_zero")   # pareto.yaml's SMF arms: counts are shrunk in each
STUDY_SMF_ARM = "smf_study"   # pareto.yaml's arm with the study's SMF recipe (adamw_leaky, padding counted, additive)
COUNTERS = ("train/optimizer_steps", "train/examples_seen", "train/effective_batch")
NEVER_IMPORTED = ("ray", "mlflow", "optuna")     # absent on the GPU machine
REQUIRED = ("torch", "transformers", "tokenizers", "safetensors", "peft", "datasets", "deepspeed", "pyyaml")


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Records which module asks for ray / mlflow / optuna; finds nothing itself, so imports and
    `importlib.util.find_spec` behave exactly as without it."""

    def __init__(self):
        self.seen: dict[str, set[str]] = {}

    def find_spec(self, name, path=None, target=None):
        if name in NEVER_IMPORTED:
            f = sys._getframe(1)
            while f is not None and f.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                f = f.f_back
            self.seen.setdefault(name, set()).add(f.f_globals.get("__name__", "?") if f is not None else "?")
        return None


WATCH = _ImportWatch()


class CheckFailed(AssertionError):
    """A check's own verdict (not a crash): the message says what was wrong."""


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return v if not math.isfinite(v) or v == 0 else float(f"{v:.6g}")
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v


class Rehearsal:
    def __init__(self, args: argparse.Namespace):
        import torch

        from .models import default_device

        self.args = args
        self.device = torch.device(default_device())      # what _compute_base and the worker use too
        self.size = SIZES["tiny" if args.tiny else "full"]
        self.arch = TINY if args.tiny else QWEN25_05B
        self.cuda = self.device.type == "cuda"
        self.precision = "bf16" if self.cuda else "fp32"  # the main trials' regime
        self.null_precisions = ("bf16",) if self.cuda else ("fp32", "bf16")
        self.plan = ["environment", "model", "base_probes", *METHOD_CHECKS,
                     *(f"null_{m}_{p}" for p in self.null_precisions for m in NULL_METHODS), "counters", "imports"]
        self.results: list[dict] = []
        self.finals: dict[str, dict] = {}                 # check → train_worker's final metrics
        self.base: dict[str, dict] = {}                   # precision → base probes
        self.out = open(args.out, "w") if args.out else None
        self.tmp = Path(tempfile.mkdtemp(prefix="rehearse-"))

    # ---- plumbing -------------------------------------------------------------------------------
    def wanted(self, name: str) -> bool:
        return not self.args.only or any(fnmatch.fnmatchcase(name, p) for p in self.args.only)

    def emit(self, rec: dict) -> None:
        line = json.dumps(_round(rec), default=str)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()
        self.results.append(rec)

    def check(self, name: str, fn: Callable[[], dict]) -> dict | None:
        """Run one check: its figures, ok unless it raised (CheckFailed: its verdict; else a crash)."""
        t0 = time.perf_counter()
        try:
            figures, ok = fn() or {}, True
        except Exception as e:  # noqa: BLE001 — every failure is a figure of the rehearsal
            if not isinstance(e, CheckFailed):
                traceback.print_exc(file=sys.stderr)
            figures, ok = {"error": f"{type(e).__name__}: {e}"[-1500:]}, False
        rec = {"check": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 2), **figures}
        self.emit(rec)
        self._free()
        return rec

    def _free(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def run(self) -> int:
        t0 = time.perf_counter()
        try:
            if self.wanted("environment"):
                self.check("environment", self.environment)
            trials = [c for c in self.plan[3:] if c.startswith(("smf", "lora", "full", "null")) and self.wanted(c)]
            need_model = bool(trials) or self.wanted("base_probes") or self.wanted("model")
            if need_model:
                self.world = self._world()
                self.check("model", self.model)
            if trials or self.wanted("base_probes"):
                self.check("base_probes", lambda: self.base_probes(self.precision))
            for c in trials:
                self.check(c, (lambda c=c: self.trial(c)) if not c.startswith("null_") else (lambda c=c: self.null(c)))
            if self.wanted("counters") and len(self.finals) > 1:
                self.check("counters", self.counters)
            if self.wanted("imports"):
                self.check("imports", self.imports)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        failed = [r["check"] for r in self.results if not r["ok"]]
        summary = {"check": "summary", "ok": not failed, "seconds": round(time.perf_counter() - t0, 1),
                   "checks": len(self.results), "failed": failed, "device": str(self.device),
                   "size": "tiny" if self.args.tiny else "full"}
        self.emit(summary)
        if self.out:
            self.out.close()
        return 0 if not failed else 1

    # ---- the world's data and tokenizer --------------------------------------------------------
    def _world(self) -> Path:
        """--world, else the cached default world (smoke.yaml's `world:`), else the same world's
        data and tokenizer generated here in seconds (the rehearsal never uses the world's model)."""
        from .world import WorldConfig
        from .world.build import default_world_dir, write_data
        from .world.pretrain import train_tokenizer

        if self.args.world:
            w = Path(self.args.world).expanduser().resolve()
            if not (w / "data").is_dir():
                raise SystemExit(f"error: --world {w}: no data/ directory (expected a built world)")
            return w
        cfg = WorldConfig()
        w = default_world_dir(cfg)
        if (w / "world.json").exists():
            return w
        w = self.tmp / "world"
        texts = write_data(cfg, w / "data")
        train_tokenizer(texts["tokenizer_texts"], cfg, w / "model")
        return w

    # ---- checks ---------------------------------------------------------------------------------
    def environment(self) -> dict:
        import torch

        versions = {}
        for pkg in (*REQUIRED, "pyarrow", "pydantic", "hjson", "dill", "multiprocess", "xxhash", "fsspec"):
            try:
                versions[pkg] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                versions[pkg] = None
        if self.cuda:
            bf16 = bool(torch.cuda.is_bf16_supported())
            dev = dict(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                       gpu_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
            dev = dict(cpus=os.cpu_count(), threads=torch.get_num_threads())
        figs = dict(python=platform.python_version(), device=str(self.device), bf16=bf16, **dev, versions=versions)
        missing = [p for p in REQUIRED if versions[p] is None]
        broken = {}
        for mod in ("datasets", "peft", "deepspeed"):      # what the trials import later: fail here, clearly
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001
                broken[mod] = f"{type(e).__name__}: {e}"[:300]
        problems = ([f"missing {missing}"] if missing else []) + [f"import {m}: {e}" for m, e in broken.items()] \
            + ([] if bf16 else ["no bf16 on this device"])
        if problems:
            raise CheckFailed("; ".join(problems) + f" — {json.dumps(figs)}")
        return figs

    def model(self) -> dict:
        """The random-weight Qwen2.5-0.5B architecture (or --tiny's), saved as a checkpoint."""
        import torch
        from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

        from .models import load_tokenizer

        if self.args.model:
            self.model_path = self.args.model
            cfg = AutoConfig.from_pretrained(self.model_path)
            same = {k: getattr(cfg, k, None) == v for k, v in QWEN25_05B.items()
                    if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")}
            return dict(source=self.model_path, qwen25_05b_architecture=all(same.values()),
                        hidden_size=cfg.hidden_size, layers=cfg.num_hidden_layers, vocab=cfg.vocab_size)
        out = self.tmp / "model"
        tok = load_tokenizer(self.world / "model")
        if len(tok) > self.arch["vocab_size"]:
            raise CheckFailed(f"tokenizer has {len(tok)} ids > vocab {self.arch['vocab_size']}")
        tok.model_max_length = self.arch["max_position_embeddings"]
        cfg = Qwen2Config(**self.arch, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device(self.device):
            m = Qwen2ForCausalLM(cfg)
        n = sum(p.numel() for p in m.parameters())
        m.to(torch.bfloat16).save_pretrained(out)      # bf16 on disk, as the hub's checkpoint
        tok.save_pretrained(out)
        del m
        self.model_path = str(out)
        figs = dict(source="random", arch="tiny" if self.args.tiny else "Qwen2.5-0.5B-Instruct", params=n,
                    tokenizer_ids=len(tok), world=str(self.world))
        if not self.args.tiny and n != QWEN25_05B_PARAMS:
            raise CheckFailed(f"{n:,} parameters, Qwen2.5-0.5B has {QWEN25_05B_PARAMS:,}")
        return figs

    def spec(self, precision: str):
        """pareto.yaml, counts shrunk, sources on the world, this model, a fresh storage dir."""
        from .spec import load_spec

        s, src = self.size, f"world:{self.world}"
        o = [f"name=rehearse-{precision}", f"storage={self.tmp / 'runs'}", f"model={self.model_path}",
             *(f"data.{k}={src}" for k in ("task", "retrofit", "triviaqa", "wikitext")),
             *(f"probes.{t}.limit={s['probe_limit']}" for t in ("medmcqa", "wikitext", "triviaqa")),
             f"train.max_steps={s['max_steps']}", f"train.train_limit={s['train_limit']}",
             f"train.warmup_steps={s['warmup']}", f"train.checkpoint_every={s['checkpoint_every']}",
             f"train.precision={precision}",
             *(f"methods.{arm}.fixed.{k}={v}" for arm in SMF_ARMS for k, v in (
                 ("retrofit.max_steps", s["retrofit_steps"]), ("retrofit.warmup_steps", s["warmup"]),
                 ("background_batches", s["background_batches"])))]
        return load_spec(SPEC, o), o

    def base_probes(self, precision: str) -> dict:
        from .trial import _compute_base, probe_specs

        spec, overrides = self.spec(precision)
        base = _compute_base(spec.model, probe_specs(spec), spec.probe_batch_size, False, precision)
        self.base[precision] = base
        vals = {t: base[t] for t in spec.probes}
        bad = [t for t, v in vals.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
        if bad:
            raise CheckFailed(f"non-finite base probes {bad}: {vals}")
        return dict(precision=precision, **vals, n={t: base.get(f"{t}.n") for t in spec.probes},
                    overrides=[o for o in overrides if not o.startswith(("model=", "storage=", "data."))])

    def _run(self, name: str, method: str, params: dict, precision: str) -> tuple[dict, dict, list]:
        """One trial through the sweep's worker function, in-process; its outcome as the sweep computes it."""
        from dataclasses import replace

        import torch

        from .trial import TrialFailed, check_comparable, outcome, worker_config
        from .worker import train_worker

        if precision not in self.base:
            self.base_probes(precision)
        spec, _ = self.spec(precision)
        cfg = replace(worker_config(spec, method, params, spec.seeds[0]), device=str(self.device))
        ckpts: list = []

        def reporter(metrics: dict, ckpt: Path | None) -> None:
            if ckpt is not None and not metrics.get("final"):
                ckpts.append(sorted(p.name for p in Path(ckpt).iterdir()))

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        final = train_worker(cfg, reporter=reporter)
        if final.get("diverged"):
            raise TrialFailed(final.get("failure_reason", "diverged"))
        after = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("after/") and "." not in k}
        base = self.base[precision]
        check_comparable(base, final)
        out = outcome(spec, base, after)
        self.finals[name] = final
        if self.cuda:
            final["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        return final, out, ckpts

    def _figures(self, final: dict, out: dict, params: dict, method: str) -> dict:
        probes = {t: [out[f"{t}/before"], out[f"{t}/after"], out[f"{t}/delta"]]
                  for t in ("medmcqa", "wikitext", "triviaqa") if f"{t}/before" in out}
        figs = dict(method=method, params=params, precision=final.get("train/precision"),
                    steps=final.get("train_steps"), loss=final.get("train/loss"),
                    medmcqa_gain_pp=out["medmcqa_gain_pp"], forgetting=out.get("forgetting"),
                    probes_before_after_delta=probes, trainable=final.get("trainable_params"),
                    tokens_per_s=final.get("train/tokens_per_s"),
                    **{k: final.get(k) for k in COUNTERS},
                    time={k[5:]: final.get(k) for k in ("time.setup_s", "time.train_s", "time.probe_s")})
        if "peak_gib" in final:
            figs["peak_gib"] = final["peak_gib"]             # the whole trial: probes and curve points too
        if "train/peak_memory_bytes" in final:              # the loop's: training only (cost/peak_memory_bytes)
            figs["train_peak_gib"] = final["train/peak_memory_bytes"] / 2 ** 30
        return figs

    def trial(self, name: str) -> dict:
        from .trial import trial_params

        spec, _ = self.spec(self.precision)
        method = name.split("_")[0]
        arm = STUDY_SMF_ARM if method == "smf" else method     # SMF: the study's recipe exactly (pareto.yaml)
        if method == "smf":
            sel = name.split("_")[1]
            points = spec.methods[arm].points
            params = next((dict(p) for p in points if p.get("selector") == sel), None) \
                or trial_params(spec, arm, [f"selector={sel}"])
        else:
            params = trial_params(spec, arm, [])
        final, out, ckpts = self._run(name, arm, params, self.precision)
        figs = self._figures(final, out, params, method)
        figs["checkpoints"] = ckpts
        problems = []
        if final.get("train_steps") != self.size["max_steps"]:
            problems.append(f"{final.get('train_steps')} steps, not {self.size['max_steps']}")
        if not (isinstance(final.get("train/loss"), float) and math.isfinite(final["train/loss"])):
            problems.append(f"train/loss {final.get('train/loss')}")
        if final.get("train/precision") != self.precision:
            problems.append(f"trained in {final.get('train/precision')}, not {self.precision}")
        if self.size["checkpoint_every"] < self.size["max_steps"] and not ckpts:
            problems.append("no checkpoint reported")
        if self.cuda and not 0 < figs.get("train_peak_gib", 0) <= figs.get("peak_gib", 0):
            problems.append(f"train/peak_memory_bytes {final.get('train/peak_memory_bytes')} not within the "
                            f"trial's peak {figs.get('peak_gib')} GiB")
        if method == "full":
            figs["grad_reduce_dtypes"] = final.get("info.grad_reduce_dtypes")
            if figs["grad_reduce_dtypes"] != "float32":     # plain autocast's fp32 gradients (methods/full.py)
                problems.append(f"ZeRO reduces gradients in {figs['grad_reduce_dtypes']!r}, not float32")
        if method == "smf":
            figs["retrofit_key"] = final.get("info.retrofit_key")
            figs["retrofit_probes"] = {k[9:]: v for k, v in final.items() if k.startswith("retrofit/")
                                       and "." not in k}
            if not figs["retrofit_key"] or not figs["retrofit_probes"]:
                problems.append("no retrofit (pareto's smf mode is additive)")
            kl = self.finals.get("smf_kl")
            if name == "smf_tfidf" and kl is not None:
                figs["retrofit_shared"] = kl.get("info.retrofit_key") == figs["retrofit_key"]
                if not figs["retrofit_shared"]:
                    problems.append("TF-IDF trained its own retrofit (the KL trial's is cached under another key)")
        if problems:
            raise CheckFailed("; ".join(problems) + f" — {json.dumps(_round(figs), default=str)[:800]}")
        return figs

    def null(self, name: str) -> dict:
        """lr 1e-30 for 2 steps changes no weight: every probe must come back within NULL_TOL."""
        from .trial import trial_params

        _, method, precision = name.split("_")
        spec, _ = self.spec(precision)
        extra = [f"lr={NULL_LR}", f"max_steps={NULL_STEPS}"] + (["mode=zero_values"] if method == "smf" else [])
        params = trial_params(spec, method, extra)
        final, out, _ = self._run(name, method, params, precision)
        deltas = {t: out[f"{t}/delta"] for t in spec.probes}
        figs = dict(method=method, precision=final.get("train/precision"), steps=final.get("train_steps"),
                    deltas=deltas, tol=NULL_TOL, **{k: final.get(k) for k in COUNTERS})
        off = {t: d for t, d in deltas.items() if not abs(d) <= NULL_TOL}
        if off or final.get("train/precision") != precision:
            raise CheckFailed(f"null trial moved the probes {off} (precision {final.get('train/precision')}) "
                              f"— {json.dumps(_round(figs))}")
        return figs

    def counters(self) -> dict:
        """Every method's optimizer steps and examples agree (the effective batch, not the worker count)."""
        groups = {"trials": [c for c in METHOD_CHECKS if c in self.finals],
                  "null": [c for c in self.finals if c.startswith("null_")]}
        figs, problems = {}, []
        for g, names in groups.items():
            if not names:
                continue
            rows = {n: {k: self.finals[n].get(k) for k in (*COUNTERS, "train_steps")} for n in names}
            figs[g] = rows
            for k in (*COUNTERS, "train_steps"):
                vals = {n: r[k] for n, r in rows.items()}
                if any(v is None for v in vals.values()):
                    problems.append(f"{k} missing in {[n for n, v in vals.items() if v is None]}")
                elif len(set(vals.values())) != 1:
                    problems.append(f"{k} differs: {vals}")
            for n, r in rows.items():
                s, e, b = (r[k] for k in COUNTERS)
                if None not in (s, e, b) and (e != s * b or s != r["train_steps"]):
                    problems.append(f"{n}: {e} examples != {s} steps × {b}, or steps != train_steps "
                                    f"{r['train_steps']}")
        if problems:
            raise CheckFailed("; ".join(problems))
        return figs

    def imports(self) -> dict:
        """No project module imported ray, mlflow or optuna (a library's optional import inside
        try/except, e.g. DeepSpeed's autotuner trying mlflow, is reported, not failed)."""
        by = {m: sorted(who) for m, who in WATCH.seen.items()}
        ours = {m: [w for w in who if w.split(".")[0] in ("smf_sweep", "__main__")] for m, who in by.items()}
        ours = {m: w for m, w in ours.items() if w}
        if ours:
            raise CheckFailed(f"project code imported {ours}: the GPU machine has none of them")
        return dict(attempted_by=by, loaded=sorted(m for m in NEVER_IMPORTED if m in sys.modules))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smf_sweep.rehearse", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen2 and fewer steps (CPU / CI, ≈ 2 min)")
    ap.add_argument("--model", help="a real checkpoint (hub id or local dir) instead of random weights")
    ap.add_argument("--world", help="a built embedded world (default: the cached one, else its data generated here)")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    ap.add_argument("--only", nargs="+", metavar="CHECK", help="run only these checks (names or globs, e.g. 'null_*')")
    ap.add_argument("--threads", type=int, help="torch threads (default: 1 with --tiny, else torch's)")
    args = ap.parse_args(argv)
    if WATCH not in sys.meta_path:
        sys.meta_path.insert(0, WATCH)
    local_model = args.model and Path(args.model).expanduser().exists()
    if not args.model or local_model:          # nothing on the path needs the hub: never wait on it
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    return Rehearsal(args).run()


if __name__ == "__main__":
    sys.exit(main())
