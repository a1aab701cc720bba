"""Calibrate the instrument: does the embedded world measure what the study asks (issue 15)?

    python -m smf_sweep.calibrate search_spaces/smoke.yaml            # run the controls, print them
    python -m smf_sweep.calibrate search_spaces/smoke.yaml --write    # … and record them in world.json

Controls, each about the instrument and never about a method's result (the world is not tuned
toward any method). Every training run is full finetuning at the spec's training settings (its
`full` arm, the smoke budget) through the real trial path (worker.train_worker) or, for the general
corpus, the same method and loop on that corpus; probes are the spec's, on every question:

- converged base: continuing the base model's own pretraining — its whole general mixture, packed
  in its windows, fresh copy texts each epoch, as the world was built — for the medical runs' steps
  at the trial's batch, method and settings changes WikiText perplexity by ≤ 3 % and TriviaQA by
  ≤ 2 pp, at each rate of the spec's full-FT range and each of `--base-seeds` (the stream's order and
  the training seed: one seed passed at 3e-4 where the next moved WikiText by 3.9 %);
- format shift (recorded, not a pass/fail control): the same budget on part of that corpus in the
  trials' format instead (WikiText train articles and the trivia lines, one padded example each from
  position 0): how much of any trial's "forgetting" a change of text format alone makes;
- no spill-over: training on the medical task lowers WikiText perplexity by ≤ 3 % at each rate;
- gradual forgetting: over lr 1e-5 … 1e-3 forgetting grows with the rate on both probes (a drop of
  more than the tolerance between consecutive rates is a violation: 2 pp TriviaQA, 3 % perplexity),
  and the task gain reaches ≥ 20 pp at some rate;
- resolution: a 5 pp difference is ≥ 2 standard errors of the difference of two accuracies,
  2·sqrt(2·0.25/n) ≤ 0.05, i.e. n ≥ 800 medical validation questions; base MedMCQA ≤ 0.40;
- build: the world builds in ≤ 15 minutes (world.json's build_seconds, on 2 cores).

`--write` stores {control: {passed, numbers…}} under "calibration" in world.json (outside the
world's content hash), with the command, seeds and rates that produced it.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

MEDICAL_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
TOL = {"triviaqa": 2.0, "wikitext": 3.0}          # pp, % of perplexity


def resolution(n: int, base_acc: float) -> dict:
    se2 = 2 * math.sqrt(2 * 0.25 / n) if n else math.inf
    return {"passed": bool(se2 <= 0.05 and base_acc <= 0.40), "n_validation": n, "two_se_of_difference_pp": 100 * se2,
            "base_medmcqa": base_acc}


def gradual(rows: list[dict]) -> dict:
    """rows: [{lr, medmcqa/delta, triviaqa/delta, wikitext/delta}] at increasing lr."""
    rows = sorted(rows, key=lambda r: r["lr"])
    bad = []
    for a, b in zip(rows, rows[1:]):
        if b["triviaqa/delta"] > a["triviaqa/delta"] + TOL["triviaqa"]:      # TriviaQA recovered: less forgetting
            bad.append(f"TriviaQA at lr {b['lr']:g} ({b['triviaqa/delta']:+.1f} pp) above lr {a['lr']:g}")
        if b["wikitext/delta"] < a["wikitext/delta"] - TOL["wikitext"]:
            bad.append(f"WikiText at lr {b['lr']:g} ({b['wikitext/delta']:+.1f} %) below lr {a['lr']:g}")
    best = max(r["medmcqa/delta"] for r in rows)
    return {"passed": not bad and best >= 20.0, "max_gain_pp": best, "violations": bad, "runs": rows}


def spill_over(rows: list[dict], lrs: tuple[float, float]) -> dict:
    inside = [r for r in rows if lrs[0] * 0.999 <= r["lr"] <= lrs[1] * 1.001]
    worst = min(r["wikitext/delta"] for r in inside)
    return {"passed": worst >= -3.0, "lowest_wikitext_delta_pct": worst, "lrs": [r["lr"] for r in inside]}


def converged(rows: list[dict]) -> dict:
    ppl = max(abs(r["wikitext/delta"]) for r in rows)
    tqa = max(abs(r["triviaqa/delta"]) for r in rows)
    return {"passed": ppl <= 3.0 and tqa <= 2.0, "max_abs_wikitext_delta_pct": ppl, "max_abs_triviaqa_delta_pp": tqa,
            "runs": rows}


def _deltas(base: dict, after: dict) -> dict:
    from .objectives import probe_delta
    return {f"{t}/delta": probe_delta(base[t], after[t], base[f"{t}.hib"]) for t in ("medmcqa", "triviaqa", "wikitext")}


def general_texts(world: Path) -> list[str]:
    """Part of the general corpus in its pretraining wording: WikiText train articles and the trivia lines."""
    from .data import load_wikitext
    from .world.build import _documents
    from .world.render import trivia_text

    lines = [r["text"].rstrip("\n") for r in load_wikitext(f"world:{world}", "train")]
    trivia = [json.loads(x) for x in (world / "data" / "trivia_qa" / "validation.jsonl").read_text().splitlines()]
    return _documents(lines) + [trivia_text(r) for r in trivia]


@functools.lru_cache(maxsize=1)
def _pretraining_docs(wcfg) -> tuple[str, ...]:
    """The build's pretraining documents (deterministic), generated once per world config."""
    import tempfile

    from .world.build import write_data

    with tempfile.TemporaryDirectory() as d:
        return tuple(write_data(wcfg, Path(d))["pretrain_docs"])


def pretraining_batches(world: Path, tokenizer, micro_batch_size: int, seed: int):
    """The world's own pretraining stream (world.pretrain.PackedBatcher over its whole mixture, with
    its fresh texts every epoch: build.fresh_texts), micro-batches of `micro_batch_size` windows, in a
    new seeded order and with new fresh texts (stream 1000 + seed)."""
    from .world.build import fresh_texts
    from .world.config import WorldConfig
    from .world.pretrain import PackedBatcher, encoder

    wcfg = WorldConfig.from_dict(json.loads((world / "world.json").read_text())["config"])
    docs = _pretraining_docs(wcfg)
    encode = encoder(tokenizer)
    cfg = wcfg.replace(batch_size=micro_batch_size, seed=wcfg.seed + 1000 + seed)
    return PackedBatcher([encode(d) for d in docs], encode, cfg, fresh_texts(wcfg, stream=1000 + seed))


def continue_training(cfg, batches, batch: int, steps: int) -> dict:
    """Full FT of the base model on `batches` (a Batcher, or a function of the tokenizer that makes
    one) for `steps` optimizer steps (the medical runs' budget) at the trial's TrainConfig and method
    config, through the one loop; then the spec's probes."""
    import torch
    from transformers import set_seed

    from .methods import METHODS, SetupContext
    from .methods.base import prepared
    from .models import load_model, load_tokenizer
    from .train_loop import run_stage
    from .worker import probe_results

    set_seed(cfg.seed)
    t = cfg.train
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype="float32", device=torch.device("cpu"))
    b = batches(tok) if callable(batches) else batches
    ctx = SetupContext(tokenizer=tok, train=t, total_steps=steps, device=torch.device("cpu"), seed=cfg.seed,
                       data=asdict(cfg.data))
    setup = prepared(METHODS[cfg.method], model, cfg.method_cfg, ctx)
    run_stage(setup, b, t, lambda m, c: None, total_steps=steps)
    out = probe_results(setup.export(), tok, list(cfg.probes), batch, t.precision)
    setup.hooks.close()
    return {k: v for k, v in out.items() if "." not in k} | {"steps": steps}


def format_shift(rows: list[dict]) -> dict:
    return {"informational": True, "max_wikitext_delta_pct": max(r["wikitext/delta"] for r in rows),
            "max_triviaqa_drop_pp": max(-r["triviaqa/delta"] for r in rows), "runs": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smf_sweep.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="search_spaces/smoke.yaml", help="a spec on the embedded world")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override (e.g. world.steps=900)")
    ap.add_argument("--arm", default="full", help="the spec's full-finetuning arm (default: full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-seeds", default="0,1", metavar="S,...",
                    help="seeds of the converged-base control's runs, each at every rate (default: 0,1)")
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in MEDICAL_LRS), help="medical-task rates, comma-separated")
    ap.add_argument("--write", action="store_true", help="record the controls in the world's world.json")
    ap.add_argument("--record", type=Path, default=None, metavar="JSON",
                    help="also write them, with the world's key, to this file (the repository keeps the default "
                         "world's in tests/golden/world_calibration.json)")
    ap.add_argument("--reuse-medical", action="store_true",
                    help="keep the medical-task runs (no_spill_over, gradual_forgetting) recorded in world.json for "
                         "these settings and run the general-corpus controls only (after a change to those alone)")
    args = ap.parse_args(argv)

    from .spec import load_spec, resolve_world
    from .trial import _compute_base, probe_specs, worker_config
    from .worker import train_worker

    spec = resolve_world(load_spec(args.spec, args.set), progress=True)
    world = Path(spec.model).parent
    full = spec.methods[args.arm]
    lo, hi = full.search["lr"].low, full.search["lr"].high
    lrs = sorted({float(x) for x in args.lrs.split(",")} | {lo, hi})
    specs = probe_specs(spec)
    precision = spec.train.get("precision", "fp32")
    t0 = time.perf_counter()
    base = _compute_base(spec.model, specs, spec.probe_batch_size, False, precision)
    print(f"base: MedMCQA {base['medmcqa']:.4f}  TriviaQA {base['triviaqa']:.4f}  WikiText {base['wikitext']:.2f}", flush=True)
    params = dict(full.points[0]) if full.points else {}

    medical, steps = [], 0
    previous = json.loads((world / "world.json").read_text()).get("calibration") or {}
    if args.reuse_medical:
        how = previous.get("how") or {}
        same = {"spec": args.spec, "overrides": args.set, "arm": args.arm, "seed": args.seed, "medical_lrs": lrs}
        differ = [k for k, v in same.items() if how.get(k) != v]
        if "gradual_forgetting" not in previous or differ:
            print(f"error: --reuse-medical: world.json records no medical runs for these settings"
                  f" ({', '.join(differ) or 'none recorded'} differ): run without it", file=sys.stderr)
            return 2
        medical = previous["gradual_forgetting"]["runs"]
        from .tune import PlannedSteps
        steps = PlannedSteps(spec)({"method": args.arm, **params, "lr": lo, "seed": args.seed})
        print(f"medical runs: reused from world.json ({len(medical)} rates); {steps} steps a run", flush=True)
    for lr in ([] if args.reuse_medical else lrs):
        cfg = worker_config(spec, args.arm, {**params, "lr": lr}, args.seed)
        final = train_worker(replace(cfg, cache_dir=None))
        steps = final["train_steps"]
        after = {t: final[f"after/{t}"] for t in ("medmcqa", "triviaqa", "wikitext")}
        row = {"lr": lr, **_deltas(base, after)}
        medical.append(row)
        print(f"medical lr {lr:g}: " + "  ".join(f"{k} {v:+.1f}" for k, v in row.items() if k != "lr"), flush=True)

    from .batching import Batcher, text_examples

    general, shifted, examples = [], [], text_examples(general_texts(world))
    base_seeds = [int(x) for x in args.base_seeds.split(",")]
    for lr in (lo, math.sqrt(lo * hi), hi):
        runs = [("pretraining", general, s) for s in base_seeds] + [("format shift", shifted, args.seed)]
        for name, rows, seed in runs:
            cfg = worker_config(spec, args.arm, {**params, "lr": lr}, seed)
            t = cfg.train
            batches = (functools.partial(pretraining_batches, world, micro_batch_size=t.micro_batch_size, seed=seed)
                       if name == "pretraining" else
                       functools.partial(Batcher, examples, micro_batch_size=t.micro_batch_size, max_len=t.max_len,
                                         effective_batch=t.effective_batch, order=t.batch_order, seed=cfg.seed))
            after = continue_training(cfg, batches, spec.probe_batch_size, steps)
            row = {"lr": lr, "seed": seed, "steps": after.pop("steps"), **_deltas(base, after)}
            rows.append(row)
            print(f"{name} lr {lr:g} seed {seed}: " + "  ".join(f"{k} {v:+.1f}" for k, v in row.items()
                                                                  if k not in ("lr", "seed")), flush=True)

    info = json.loads((world / "world.json").read_text())
    from .data import load_medmcqa
    n_val = len(load_medmcqa(f"world:{world}", "validation"))          # single-choice rows: what the probe scores
    cal = {
        "converged_base": converged(general),
        "format_shift": format_shift(shifted),
        "no_spill_over": spill_over(medical, (lo, hi)),
        "gradual_forgetting": gradual(medical),
        "resolution": resolution(n_val, base["medmcqa"]),
        "build": {"passed": info["build_seconds"] <= 900, "build_seconds": info["build_seconds"]},
        "how": {"command": "python -m smf_sweep.calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
                "spec": args.spec, "overrides": args.set, "arm": args.arm, "seed": args.seed, "medical_lrs": lrs,
                "base_seeds": base_seeds,
                **({"medical_runs_from": (previous.get("how") or {}).get("command")} if args.reuse_medical else {}),
                "base": {t: base[t] for t in ("medmcqa", "triviaqa", "wikitext")},
                "seconds": round(time.perf_counter() - t0, 1)},
    }
    for name, c in cal.items():
        if name != "how":
            print(f"{'info' if c.get('informational') else 'PASS' if c['passed'] else 'FAIL'}  {name}: " +
                  ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()
                            if k not in ("passed", "runs", "informational")))
    if args.write:
        info["calibration"] = cal
        (world / "world.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"recorded in {world / 'world.json'}")
    if args.record:
        args.record.write_text(json.dumps({"world_key": info["key"], "content_hash": info["content_hash"],
                                           "built_on": machine(), "config": info["config"], "calibration": cal},
                                          indent=1) + "\n")
        print(f"recorded in {args.record}")
    return 0 if all(c["passed"] for c in controls(cal).values()) else 1


def machine() -> dict:
    """What a world's weights depend on besides its key: the CPU and the kernels torch picks for it.
    The build is deterministic on one kind of machine, not across kinds: CPU kernels of another
    instruction set round differently, and pretraining carries that into every weight (the machines
    since 2026-12-01 build the default world with other weights than those of 2026-11-30, and every
    trial on it gives other digits: README, "The embedded world")."""
    import platform

    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if ln.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor() or platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def controls(cal: dict) -> dict:
    """The pass/fail controls of a calibration record (not `how`, not the informational entries)."""
    return {k: c for k, c in cal.items() if k != "how" and not c.get("informational")}


if __name__ == "__main__":
    sys.exit(main())
