"""One trial: base probes (cached) → Ray Train TorchTrainer running the method through THE loop →
probes of the result → before/after/delta per probe and the objectives.

    python -m smf_sweep.trial search_spaces/smoke.yaml --method lora [--set key=value ...] [--json]

The trial uses the method's `fixed` settings plus its first `points` entry (the study's setting)
unless --param overrides them. `run_trial` is also what each Ray Tune trial of a sweep calls."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .spec import Spec, SpecError, build_configs, load_spec, parse_assignment, resolve_world
from .trial_config import Sources, WorkerConfig


class TrialFailed(RuntimeError):
    """A trial that ended without valid objectives (diverged, or no probe results)."""


# ---- configuration -----------------------------------------------------------------------------
def probe_specs(spec: Spec) -> list[dict]:
    """ProbeSpec dicts for run_probes; a probe's source defaults to the spec's data for its task."""
    default = {"medmcqa": spec.data.task, "triviaqa": spec.data.triviaqa, "wikitext": spec.data.wikitext}

    def source(task: str, p) -> str:
        if p.source:
            return p.source
        if task == "wikitext" and p.variant == "harness" and default[task] in ("wikitext", "Salesforce/wikitext"):
            return "EleutherAI/wikitext_document_level"     # the harness scores documents, another hub dataset
        return default[task]

    return [{"task": t, "variant": p.variant, "source": source(t, p), "limit": p.limit,
             "options": dict(p.options)} for t, p in spec.probes.items()]


def cache_dir(spec: Spec) -> Path:
    """Caches shared by every trial of the sweep (retrofits, background statistics, base probes)."""
    return spec.sweep_dir() / "cache"


def worker_config(spec: Spec, arm: str, params: dict, seed: int) -> WorkerConfig:
    """What the trial's workers receive: arm `arm` of the spec at `params`, training seed `seed`."""
    from .objectives import Objectives
    from .probes import ProbeSpec

    mcfg, tcfg = build_configs(spec, arm, params)
    return WorkerConfig(model=spec.model, method=spec.algorithm(arm), arm=arm, method_cfg=mcfg, train=tcfg, seed=seed,
                        data=Sources(task=spec.data.task, retrofit=spec.data.retrofit),
                        probes=tuple(ProbeSpec(**p) for p in probe_specs(spec)),
                        probe_batch_size=spec.probe_batch_size, curves=spec.curves,
                        objectives=Objectives.from_spec(spec).to_json() if spec.curves.on else "",
                        cache_dir=cache_dir(spec),
                        threads=spec.threads_per_worker)


# ---- base probes, cached by (model, probe settings and versions, precision regime) ----------------
def probe_versions(specs: list[dict]) -> dict:
    """{task: the version its probe class declares} — part of the cache key: a changed probe never
    reuses base numbers of its old version."""
    from .probes import PROBES

    return {s["task"]: str(PROBES[f"{s['task']}:{s['variant']}"].version) for s in specs}


def base_probes(spec: Spec, progress: bool = True) -> dict:
    """{task: value, task.hib: higher_is_better, task.version: version} of the base model.

    Cached in the sweep's cache dir under a hash of the model and probe specs. Runs as a Ray task
    with a GPU when the spec's methods use GPUs, else in this process."""
    specs = probe_specs(spec)
    precision = spec.train.get("precision", "fp32")      # resolved by the spec (never "auto" here)
    key = hashlib.sha256(json.dumps([spec.model, specs, spec.probe_batch_size, precision, probe_versions(specs)],
                                    sort_keys=True).encode()).hexdigest()[:16]
    from .cache import get_or_create

    def build(tmp: Path):  # one process per key (concurrent sweeps/trials wait, then read)
        gpus = 1 if any(m.resources.gpus_per_worker > 0 for m in spec.methods.values()) else 0
        if gpus:
            import ray
            out = ray.get(ray.remote(num_gpus=1)(_compute_base).remote(spec.model, specs, spec.probe_batch_size, False,
                                                                          precision))
        else:
            out = _compute_base(spec.model, specs, spec.probe_batch_size, progress, precision)
        tmp.write_text(json.dumps(out, indent=1))

    path = get_or_create(cache_dir(spec) / "base_probes", f"{key}.json", build, file=True)
    return json.loads(path.read_text())


def _compute_base(model_id: str, specs: list[dict], batch_size: int, progress: bool, precision: str) -> dict:
    """Probes of the base model in the sweep's precision regime: fp32 weights (as the trials'
    workers load them) under the regime's autocast."""
    from .models import default_device, load_model, load_tokenizer
    from .precision import autocast
    from .probes import run_probes

    tok = load_tokenizer(model_id)
    device = default_device()
    model = load_model(model_id, dtype="float32", device=device)
    with autocast(device, precision):
        results = run_probes(model, tok, specs, batch_size=batch_size, progress=progress)
    out = {"precision": precision}
    for task, r in results.items():
        out[task], out[f"{task}.hib"], out[f"{task}.version"], out[f"{task}.n"] = r.value, r.higher_is_better, r.version, r.n
    return out


# ---- objectives ---------------------------------------------------------------------------------
def check_comparable(base: dict, final: dict) -> None:
    """Refuse a delta between numbers of different probe versions or precision regimes."""
    bad = [f"{k[len('after/'):-len('.version')]}: base v{base.get(k[len('after/'):])} vs after v{v}"
           for k, v in final.items() if k.startswith("after/") and k.endswith(".version")
           and str(base.get(k[len("after/"):])) != str(v)]
    if "precision" in base and "train/precision" in final and base["precision"] != final["train/precision"]:
        bad.append(f"precision: base {base['precision']} vs trial {final['train/precision']}")
    if bad:
        raise TrialFailed("before and after are not comparable (" + "; ".join(bad) + ")")


def outcome(spec: Spec, base: dict, after: dict) -> dict:
    """Per probe before/after/delta, `medmcqa_gain_pp`, `forgetting` (by the spec's definition:
    mean or worst of the forgetting probes' damage, maybe clamped; none under `nats`) and each
    forgetting probe's damage in its own unit (`<task>_drop_pp`, `<task>_nats`), all through the
    spec's `Objectives` (smf_sweep/objectives.py; directions as the base probes recorded them)."""
    from . import objectives as O

    obj = O.Objectives.from_spec(spec, base)
    out, deltas = {}, {}
    for task in spec.probes:
        if task not in after:
            raise TrialFailed(f"probe {task!r} returned no result")
        b, a = base[task], after[task]
        deltas[task] = obj.delta(task, b, a)
        out.update({O.before(task): b, O.after(task): a, O.delta(task): deltas[task]})
    out.update(obj.scores(deltas))
    bad = [k for k, v in out.items() if not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise TrialFailed(f"non-finite results {bad}: {{{', '.join(f'{k}: {out[k]}' for k in bad)}}}")
    return out


# ---- running one trial through Ray Train --------------------------------------------------------
def scaling_config(res):
    """Ray Train's ScalingConfig for a method's `resources`. Several workers (DeepSpeed ZeRO) go on
    one node (STRICT_PACK): their collectives then never cross nodes over TCP."""
    import ray.train

    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
    return ray.train.ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker,
                                   placement_strategy="STRICT_PACK" if res.workers > 1 else "PACK")


def run_trial(spec: Spec, method: str, params: dict, seed: int, base: dict, *, name: str,
              in_tune: bool = False, train_fn: Callable[[WorkerConfig], dict] | None = None) -> dict:
    """Train through TorchTrainer (restarted workers resume from the last checkpoint), return the
    trial's outcome and training summary. Raises TrialFailed on divergence.

    `train_fn(config)` is each worker's function (default worker.train_worker); tests pass a
    wrapper of it (tests/fixtures/worker_hooks.py), which Ray pickles by reference."""
    import functools

    import ray.train
    from ray.train.torch import TorchTrainer

    from .worker import train_worker

    res = spec.methods[method].resources
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback
        callbacks.append(TuneReportCallback())
    # the WorkerConfig travels bound to the function (train_loop_config must be a dict: Ray Train's
    # run state validates it as one)
    trainer = TorchTrainer(
        functools.partial(train_fn or train_worker, worker_config(spec, method, params, seed)),
        scaling_config=scaling_config(res),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(spec.sweep_dir() / "train"), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=spec.search.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:     # Ray Train's TrainingFailedError: the worker's own exception is inside it
        from .failures import describe_error
        raise TrialFailed(describe_error(e)) from e
    m = dict(result.metrics or {})
    if m.get("diverged"):
        raise TrialFailed(m.get("failure_reason", "diverged"))
    after = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("after/") and "." not in k}
    check_comparable(base, m)
    out = outcome(spec, base, after)
    out.update({k: v for k, v in m.items() if k.startswith(("retrofit/", "train/", "info.", "time.")) and
                isinstance(v, (int, float, str))})
    out.update({"trainable_params": m.get("trainable_params"), "train_steps": m.get("train_steps"),
                "trial_seconds": time.perf_counter() - t0, "method": method, "seed": seed})
    return out


def trial_params(spec: Spec, method: str, overrides: list[str]) -> dict:
    """The arm's first point ← `--param key=value`s (read as --set reads them), validated."""
    ms = spec.methods[method]
    params = dict(ms.points[0]) if ms.points else {}
    params.update(parse_assignment(o, "--param") for o in overrides)
    try:
        build_configs(spec, method, params)      # validate now, before Ray starts
    except (TypeError, ValueError) as e:
        raise SpecError(f"--param {' '.join(overrides) or '(none)'} for method {method}: {e}") from None
    return params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smf_sweep.trial", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="sweep spec YAML (search_spaces/*.yaml)")
    ap.add_argument("--method", required=True, help="method to run (a key of the spec's methods)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key, dotted (e.g. search.concurrency=1); repeatable")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a method or train field for this trial (e.g. lr=1e-4, top_t=64); repeatable")
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: the spec's first)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
        if args.method not in spec.methods:
            raise SpecError(f"{args.spec}: methods.{args.method}: not in this spec; it has "
                            f"{', '.join(spec.methods)}")
        params = trial_params(spec, args.method, args.param)
        from .preflight import preflight
        for w in preflight(spec, arm=args.method, params=params):   # this trial against the model's config
            print(f"warning: {w}", file=sys.stderr)
    except (SpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray

    spec = resolve_world(spec)
    seed = spec.seeds[0] if args.seed is None else args.seed
    base = base_probes(spec)
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    name = f"trial-{args.method}-" + hashlib.sha256(json.dumps([params, seed, spec.spec_hash()],
                                                               sort_keys=True, default=str).encode()).hexdigest()[:10]
    try:
        out = run_trial(spec, args.method, params, seed, base, name=name)
    except Exception as e:     # TrialFailed (run_trial's reason), or anything else: its type, message, frames
        from .failures import describe_error
        reason = str(e) if isinstance(e, TrialFailed) else describe_error(e)
        print(f"trial failed: {reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"status": "failed", "failure_reason": reason}))
        return 1
    print(format_outcome(spec, out, params, base))
    if args.json:
        print(json.dumps({"status": "finished", "params": params, **out}, default=str))
    return 0


def format_outcome(spec: Spec, out: dict, params: dict, base: dict) -> str:
    lines = [f"{out['method']} {params} seed {out['seed']}  ({out['trial_seconds']:.0f} s)",
             f"{'probe':<10}{'before':>10}{'after':>10}{'delta':>10}"]
    for t in spec.probes:
        unit = "pp" if base[f"{t}.hib"] else "%"
        lines.append(f"{t:<10}{out[f'{t}/before']:>10.4g}{out[f'{t}/after']:>10.4g}{out[f'{t}/delta']:>+9.2f}{unit}")
    from .objectives import Objectives

    objs = Objectives.from_spec(spec).names            # forgetting, or its per-probe parts under `nats`
    lines.append("   ".join(f"{k} {out[k]:+.3g}" if abs(out[k]) < 1 else f"{k} {out[k]:+.2f}" for k in objs if k in out))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
