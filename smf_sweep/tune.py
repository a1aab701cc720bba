"""The sweep: Ray Tune + Optuna (multi-objective) over methods and their knobs, one Ray Train run
per trial, MLflow records, resumable.

    python -m smf_sweep.tune search_spaces/smoke.yaml              # the embedded world, a CPU, minutes
    ray job submit --working-dir . -- python -m smf_sweep.tune search_spaces/pareto.yaml

Re-running the same command resumes the sweep (finished trials are not repeated). The sweep
directory (<storage>/<name>/) holds the frozen spec, Ray Tune's state, the Optuna study
(optuna.db), caches and, by default, the MLflow store (mlflow.db)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from .spec import Spec, SpecError, build_configs, load_spec, resolve_world

# The objectives (names, directions, forgetting's weights) are the spec's: objectives.Objectives.from_spec(spec).


# ---- the search space (define-by-run: a method's knobs are sampled only for that method) --------
class SearchSpace:
    """Optuna define-by-run space; picklable (Tune checkpoints the searcher)."""

    def __init__(self, methods: dict[str, dict]):
        self.methods = methods          # {method: {param: Param as dict}}

    def __call__(self, trial) -> None:
        method = trial.suggest_categorical("method", sorted(self.methods))
        for k, p in self.methods[method].items():
            name = f"{method}.{k}"
            if p["type"] == "choice":
                trial.suggest_categorical(name, p["values"])
            elif p["type"] in ("uniform", "loguniform"):
                trial.suggest_float(name, p["low"], p["high"], log=p["type"] == "loguniform")
            else:
                trial.suggest_int(name, int(p["low"]), int(p["high"]), log=p["type"] == "logint")


def space_of(spec: Spec) -> SearchSpace:
    return SearchSpace({m: {k: dataclasses.asdict(p) for k, p in ms.search.items()} for m, ms in spec.methods.items()})


def points_of(spec: Spec) -> list[dict]:
    """The spec's first points (the study's settings) as Optuna parameter dicts."""
    return [{"method": m, **{f"{m}.{k}": v for k, v in pt.items()}} for m, ms in spec.methods.items() for pt in ms.points]


def trial_params(config: dict) -> tuple[str, dict, int | None]:
    config = config.get("point", config)          # confirm stage: {"point": {...}} from a grid
    method = config["method"]
    params = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith(method + ".")}
    return method, params, config.get("seed")


def make_searcher(spec: Spec):
    """Ray's OptunaSearch over the spec's objectives (objectives.Objectives: names and modes in
    Optuna's order, `forgetting` expanded under nats) and constraints: a finished trial's constraint
    values go onto its Optuna trial (Trial.set_constraint, Optuna 5's mechanism; the samplers'
    `constraints_func` is deprecated) before it is told, so TPE/NSGA-II treat it as infeasible and
    `study.best_trials` leaves it out. A trial stopped early (scheduler.MOASHA) is told as the spec
    says (search.early_stopping.optuna; SafeOptunaSearch._tell_stopped): PRUNED by default."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from .objectives import Objectives
    from .scheduler import EARLY_STOPPED as STOPPED, STOPPED_AT_RUNG, STOPPED_AT_STEP

    obj = Objectives.from_spec(spec)

    class SafeOptunaSearch(OptunaSearch):
        """OptunaSearch that never leaves a study trial RUNNING: an errored trial, or one whose last
        result lacks a finite objective (e.g. it failed after intermediate training reports), is
        told FAIL. (Ray's own version tells [None, None] as COMPLETE, which Optuna rejects.) A
        finished trial's constraint values (Objectives.violations: <= 0 holds) are set first. A
        trial the scheduler stopped (`early_stopped` in its last result) is told by _tell_stopped.

        Why PRUNED is the default for a stopped trial: Optuna's multi-objective studies cannot be
        pruned the usual way (Trial.report/should_prune are single-objective), but tell(PRUNED)
        works, and multi-objective TPE puts a pruned trial without intermediate values below every
        complete one (its "bad" group once enough trials completed): it learns the region is worse
        without ever seeing the rung's numbers as final ones. COMPLETE with the rung's values would
        compare a partly trained trial on probe subsets with finished ones: a trial stopped early has
        forgotten little, so TPE would count it among the best and sample more like it, and it could
        join study.best_trials (summarize's front leaves stopped trials out either way)."""

        def on_trial_result(self, trial_id, result):
            """A failing trial's driver reports why before it raises (sweep_trial); Tune then calls
            on_trial_complete(error=True) without a result, so the reason is kept here till then."""
            if isinstance(result, dict) and result.get("failure_reason"):
                self.__dict__.setdefault("_failure_reasons", {})[trial_id] = str(result["failure_reason"])
            super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            if not error and (result or {}).get(STOPPED):
                return self._tell_stopped(trial_id, result)
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            vals = [(result or {}).get(m) for m in metrics]
            reason = self.__dict__.get("_failure_reasons", {}).pop(trial_id, None) or (result or {}).get("failure_reason")
            bad = [m for m, v in zip(metrics, vals) if not isinstance(v, (int, float)) or not math.isfinite(v)]
            if error or bad:
                if not reason:
                    reason = ("the trial errored without reporting a reason (its process died?); Tune's error.txt in "
                              "the trial's directory under <sweep dir>/tune has the trace" if error else
                              f"its final result has no finite {', '.join(bad)}: {[(result or {}).get(m) for m in bad]}")
                ot = self._ot_trials[trial_id]
                try:            # user attr failure_reason of the FAIL trial (study.trials_dataframe shows it)
                    ot.set_user_attr("failure_reason", str(reason)[:5000])
                except Exception as e:  # noqa: BLE001 — the FAIL below matters more than its note
                    print(f"warning: could not record trial {trial_id}'s failure reason in Optuna: {e}", file=sys.stderr)
                self._ot_study.tell(ot, state=optuna.trial.TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
            checker = self.__dict__.get("_smf_objectives")
            if checker is not None and checker.constraints:
                ot = self._ot_trials[trial_id]
                for key, value in checker.violations(result).items():
                    ot.set_constraint(key, value)
            super().on_trial_complete(trial_id, result, error)

        def _tell_stopped(self, trial_id, result):
            """A trial the scheduler stopped (scheduler.MOASHA; its last result holds the rung and
            the objectives there): user attrs `smf_sweep.stopped_at_rung`, `smf_sweep.stopped_at_step`
            and `smf_sweep.rung_values` (the objectives at the rung, the study's order), then the
            spec's state (search.early_stopping.optuna): PRUNED (no values: multi-objective TPE ranks
            it below every complete trial, NSGA-II ignores it, no front holds it), COMPLETE with the
            rung's values (and its constraints at the rung), or FAIL (the samplers ignore it)."""
            ot = self._ot_trials[trial_id]
            vals = [result.get(m) for m in self.metric]
            rung = {"smf_sweep.stopped_at_rung": int(result[STOPPED_AT_RUNG]),
                    "smf_sweep.stopped_at_step": int(result.get(STOPPED_AT_STEP, result[STOPPED_AT_RUNG])),
                    "smf_sweep.rung_values": json.dumps(dict(zip(self.metric, vals)))}
            for k, v in rung.items():
                ot.set_user_attr(k, v)
            state = self.__dict__.get("_smf_stopped_as", "pruned")
            finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals)
            if state == "complete" and finite:
                checker = self.__dict__.get("_smf_objectives")
                if checker is not None and checker.constraints:
                    for key, value in checker.violations(result).items():
                        ot.set_constraint(key, value)
                self._ot_study.tell(ot, [float(v) for v in vals], state=optuna.trial.TrialState.COMPLETE)
            else:
                if state == "complete":            # no finite values at the rung: nothing to tell as values
                    ot.set_user_attr("failure_reason", f"stopped early without finite objectives: {vals}")
                self._ot_study.tell(ot, state=optuna.trial.TrialState.PRUNED if state == "pruned"
                                    else optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)

        def restore(self, checkpoint_path: str):
            """After Tune restores the searcher, find study trials still RUNNING that no restored
            Tune trial owns: a driver that was stopped had asked for them after Tune's last
            experiment checkpoint, so nothing would ever finish them. Tell them FAIL (tagged) and
            enqueue their parameters again, so the resumed sweep runs them."""
            super().restore(checkpoint_path)
            owned = {t.number for t in self._ot_trials.values()}
            for t in self._ot_study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
                if t.number not in owned:
                    self._ot_study._storage.set_trial_system_attr(
                        t._trial_id, "smf_sweep.lost", "driver stopped before Tune recorded the trial; re-queued")
                    self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    self._ot_study.enqueue_trial(t.params)

    samplers = {"tpe": lambda s: optuna.samplers.TPESampler(seed=s),
                "random": lambda s: optuna.samplers.RandomSampler(seed=s),
                "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s)}
    storage = f"sqlite:///{spec.sweep_dir() / 'optuna.db'}"
    searcher = SafeOptunaSearch(space=space_of(spec), metric=list(obj.names), mode=list(obj.modes),
                                sampler=samplers[spec.search.sampler](spec.search.seed),
                                storage=optuna.storages.RDBStorage(storage), study_name=f"{spec.name}-{spec.spec_hash()}",
                                points_to_evaluate=points_of(spec) or None)
    searcher._smf_objectives = obj        # saved with the searcher's state (OptunaSearch.save pickles __dict__)
    es = spec.search.early_stopping
    searcher._smf_stopped_as = es.optuna if es is not None else "pruned"   # a stopped trial's Optuna state
    return searcher


# ---- early stopping (scheduler.MOASHA) -------------------------------------------------------------
class TrialCost:
    """A trial's cost metrics (objectives.COSTS) from its arm's resources: `cost/device_s` = wall
    seconds × workers × GPUs per worker (CPUs when it has no GPU), `cost/tokens` when known.
    Picklable (the scheduler holds one)."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, config: dict, seconds: float, tokens: float | None = None) -> dict:
        from .objectives import COST_S, COST_TOKENS, device_seconds

        arm = config.get("point", config).get("method")
        if arm not in self.spec.methods:
            return {}
        r = self.spec.methods[arm].resources
        out = {COST_S: device_seconds(seconds, r.workers, r.gpus_per_worker, r.cpus_per_worker)}
        if tokens is not None:
            out[COST_TOKENS] = float(tokens)
        return out


class PlannedSteps:
    """A trial's optimizer steps as its worker will count them (worker.train_worker:
    `TrainConfig.total_steps(steps_per_epoch)`, steps per epoch = training examples // effective
    batch, batching.Batcher), from the spec and the trial's config. The training rows are those of
    data.medmcqa_train_subset, counted once per (source, train_limit). MO-ASHA keeps a trial's rungs
    below it and warns when a finished trial's `train_steps` differs."""

    def __init__(self, spec: Spec):
        self.spec, self.rows = spec, {}

    def __call__(self, config: dict) -> int:
        from .data import medmcqa_train_subset

        method, params, seed = trial_params(config)
        _, tcfg = build_configs(self.spec, method, params)
        key = (self.spec.data.task, tcfg.train_limit)
        if key not in self.rows:
            seed = self.spec.seeds[0] if seed is None else seed
            self.rows[key] = len(medmcqa_train_subset(self.spec.data.task, seed=seed, limit=tcfg.train_limit))
        return tcfg.total_steps(self.rows[key] // tcfg.effective_batch)


RUNGS = "rungs.json"        # MO-ASHA's rungs, in the sweep directory (scheduler.MOASHA: state)


def make_scheduler(spec: Spec, state: Path | None = None):
    """The search's Tune scheduler: MO-ASHA (scheduler.MOASHA) over the spec's objectives (the same
    objectives.Objectives as make_searcher's, so scheduler and searcher agree on the metrics and
    their directions; Tune's own single metric/mode stay unset) when `search.early_stopping` is set,
    else None (Tune's FIFO: every trial runs to its end). `state`: the file its rungs are kept in, so a
    resumed sweep judges against them (a stale one is removed: this is a fresh scheduler)."""
    es = spec.search.early_stopping
    if es is None:
        return None
    from .objectives import Objectives
    from .scheduler import MOASHA

    if state is not None:
        Path(state).unlink(missing_ok=True)
    return MOASHA(Objectives.from_spec(spec), grace=es.grace, eta=es.eta, tie_break=es.tie_break,
                  epsilon=es.epsilon, per_method=es.per_method,
                  grace_per_method=es.grace_per_method, total_steps=PlannedSteps(spec), cost=TrialCost(spec),
                  state=state)


# ---- one Tune trial ------------------------------------------------------------------------------
def sweep_trial(config: dict, spec: Spec, base: dict) -> None:
    """The Tune function (driver) of one trial: a Ray Train run, then the final report.

    A trial that fails reports why first (`failure_reason`: the exception's type and message and its
    innermost frames, failures.describe_error) and then raises TrialFailed with that reason: Tune's
    searcher and callbacks are told of an error without its text, but they see results, so the
    reason reaches Optuna (SafeOptunaSearch: user attr failure_reason) and MLflow (tag
    failure_reason), and Tune's own error (error.txt, Result.error) ends with it.

    Its cost goes with either report (objectives.COSTS): `cost/device_s` = the Ray Train run's wall
    seconds (`trial_seconds`; a failed trial: this driver's) × workers × GPUs per worker (CPUs when
    it has no GPU), `cost/tokens` = the loop's train/tokens, `cost/peak_memory_bytes` = the worker's
    train/peak_memory_bytes where it reports one; and, with constraints, `constraint_violation`."""
    from ray import tune

    from .failures import describe_error
    from .objectives import COST_MEMORY, COST_TOKENS, VIOLATION, Objectives
    from .trial import TrialFailed, run_trial

    def cost(arm: str | None, seconds: float, m: dict) -> dict:
        out = TrialCost(spec)({"method": arm}, seconds)
        for key, name in (("train/tokens", COST_TOKENS), ("train/peak_memory_bytes", COST_MEMORY)):
            if out and isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool):
                out[name] = float(m[key])
        return out

    t0, method = time.perf_counter(), None
    try:
        method, params, seed = trial_params(config)
        seed = spec.seeds[0] if seed is None else seed
        name = f"train-{tune.get_context().get_trial_id()}"     # stable: a restarted trial resumes its run
        out = run_trial(spec, method, params, seed, base, name=name, in_tune=True)
    except Exception as e:
        reason = str(e) if isinstance(e, TrialFailed) else describe_error(e)   # TrialFailed: already a reason
        try:
            report_last({"failure_reason": reason, "trial_failed": 1, **cost(method, time.perf_counter() - t0, {})})
        except Exception:  # noqa: BLE001 — the raise below still carries the reason
            pass
        raise TrialFailed(reason) from e
    out.update(cost(method, out.get("trial_seconds", time.perf_counter() - t0), out))
    obj = Objectives.from_spec(spec, base)
    if obj.constraints:
        out[VIOLATION] = obj.violation(out)
    report_last({**out, "trial_done": 1})


def report_last(metrics: dict, *, timeout_s: float = 60.0, settle_s: float = 0.25) -> None:
    """tune.report(metrics) from a trial's driver as the trial's last result, after every report
    of its Ray Train run has reached Tune.

    The run's worker reports reach Tune through TuneReportCallback: the Train controller puts each
    in the Tune session's inter-actor queue (a blocking put, done before `fit()` returns or raises),
    and the Tune actor's main thread moves it to the session's result queue when it next polls.
    That thread polls the inter-actor queue, then the result queue, 0.2 s each, so a driver report
    made right after `fit()` can overtake a worker report still waiting in the inter-actor queue
    (seen in CI: the worker's placement-group report, sent at start-up, reached the controller in the
    same poll as the worker's error and became the failed trial's last result, without its
    `failure_reason`; a finished trial's last result could likewise be its worker's final one,
    without objectives, and Optuna would record it FAIL). So this waits until both queues stay
    empty for `settle_s` (the main thread moves an item from one to the other without blocking in
    between), at most `timeout_s`. Ray internals (the session's `_inter_actor_queue` and
    `result_queue`, Ray 2.60); outside a Tune session with them it only reports."""
    from ray import tune
    from ray.train._internal.session import get_session

    session = get_session()
    inter = getattr(session, "_inter_actor_queue", None)
    results = getattr(session, "result_queue", None)
    if inter is not None and results is not None:
        end, quiet_since = time.monotonic() + timeout_s, None
        while time.monotonic() < end:
            if inter.empty() and results.empty():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    break
            else:
                quiet_since = None
            time.sleep(0.05)
    tune.report(metrics)


class Describe:
    """MLflow params and tags of a trial config (picklable, for the Tune callback)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.points = points_of(spec)

    def __call__(self, config: dict) -> tuple[dict, dict]:
        from .tracking import flatten

        method, params, seed = trial_params(config)
        seed = self.spec.seeds[0] if seed is None else seed
        mcfg, tcfg = build_configs(self.spec, method, params)
        p = {"method": method, "seed": str(seed), "lr": str(tcfg.lr),
             **flatten(dataclasses.asdict(mcfg), f"{self.spec.algorithm(method)}."),   # smf.n_keys for every SMF arm
             **{k: v for k, v in flatten(tcfg.to_dict(), "train.").items() if k != "train.lr"}}   # lr: above
        config = config.get("point", config)
        point = {k: v for k, v in config.items() if k == "method" or k.startswith(method + ".")}
        tags = {"method": method, "algorithm": self.spec.algorithm(method), "seed": str(seed),
                "spec_hash": self.spec.spec_hash(),
                "smf_sweep.default_point": str(point in self.points).lower(),
                "stage": config.get("stage", "search")}
        if hasattr(mcfg, "selector"):
            tags["selector"] = mcfg.selector
        return p, tags


# ---- where trial drivers run, and how often a trial is retried --------------------------------------
DRIVER_SHARE = 0.001        # of search.driver_resource per trial driver: a node declaring 1 takes 1000 drivers


def driver_resources(spec: Spec) -> dict:
    """What one trial's driver (the Tune function) reserves. It only drives its Ray Train run: no
    CPU (a token of memory, as Ray rejects an empty bundle), so trials are placed by their workers'
    resources; a fractional CPU here would leave 1.98 of 2 CPUs and the second trial's whole-CPU
    worker would wait forever. With `search.driver_resource`, also a sliver of that custom resource,
    which only nodes that are never preempted declare (cluster/*.yaml): the driver, and the Train
    controller Ray attaches to the driver's node, survive a spot worker's preemption, so Train's own
    retries (search.max_failures) restart the lost workers from the checkpoint."""
    res: dict = {"cpu": 0, "memory": 64 * 2 ** 20}
    if spec.search.driver_resource:
        res[spec.search.driver_resource] = DRIVER_SHARE
    return res


def check_driver_resource(spec: Spec) -> None:
    """Before any trial starts: the connected cluster must have the drivers' resource, else every
    trial would stay PENDING forever (or until an autoscaler that cannot make it gives up)."""
    name = spec.search.driver_resource
    if not name:
        return
    import ray

    have = ray.cluster_resources()
    if have.get(name, 0) >= DRIVER_SHARE:
        return
    custom = sorted(k for k in have if k not in ("CPU", "GPU", "memory", "object_store_memory")
                    and not k.startswith(("node:", "accelerator_type:")))
    raise SpecError(f"{spec.source_file}: search.driver_resource: the Ray cluster has no resource {name!r} "
                    f"(its custom resources: {', '.join(custom) or 'none'}). Trial drivers need {DRIVER_SHARE} of it: "
                    f"declare it on the head and on-demand nodes (ray start --resources '{{\"{name}\": 1}}'; "
                    "cluster/*.yaml and cluster.local do), or set search.driver_resource: null "
                    "(--set search.driver_resource=null) to let drivers run on any node")


def tune_run_config(spec: Spec, name: str, storage: Path, callbacks: list, progress: bool):
    """The RunConfig of both Tuners (search and confirm). `search.trial_retries`: Tune restarts a
    failed trial with the same trial id, hence the same Ray Train run name (sweep_trial), so the
    Train run resumes from its last checkpoint; the searcher and the MLflow logger hear of the trial
    only once it finally completes or errors (a retry reuses its MLflow run)."""
    from ray import tune

    return tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=spec.search.trial_retries),
                          verbose=1 if progress else 0)


# ---- the sweep -----------------------------------------------------------------------------------
def run_sweep(spec: Spec, *, progress: bool = True) -> dict:
    import ray
    from ray import tune

    from .janitor import PlacementGroupJanitor
    from .tracking import MLflowTrialLogger, SweepTracker, check_tracking_uri
    from .trial import base_probes

    from .preflight import check_sweep_dir, preflight, write_frozen_spec

    check_sweep_dir(spec)                 # the sweep dir holds one spec: another is refused, naming the keys
    for w in preflight(spec):             # the spec against its model's config (no weights), before Ray
        print(f"warning: {w}", file=sys.stderr, flush=True)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")   # training reports lack objectives
    sweep = spec.sweep_dir()
    sweep.mkdir(parents=True, exist_ok=True)
    uri = spec.tracking_uri or f"sqlite:///{sweep / 'mlflow.db'}"
    check_tracking_uri(uri)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                 include_dashboard=False if not os.environ.get("RAY_ADDRESS") else None)
    check_driver_resource(spec)           # before the world is built and any trial starts
    spec = resolve_world(spec, progress=progress)
    frozen = write_frozen_spec(spec)      # <sweep dir>/spec.json: later submissions must match it (check_sweep_dir)
    experiment = f"smf_sweep/{spec.name}"
    (sweep / "sweep.json").write_text(json.dumps({"name": spec.name, "tracking_uri": uri, "experiment_name": experiment,
                                                  "spec_hash": spec.spec_hash()}, indent=1))
    base = base_probes(spec, progress=progress)
    tracker = SweepTracker(uri, experiment, spec.name, spec.spec_hash())
    tracker.log_sweep(spec.to_dict(), base, frozen)

    trainable = tune.with_resources(tune.with_parameters(sweep_trial, spec=spec, base=base), driver_resources(spec))
    logger = MLflowTrialLogger({"uri": uri, "experiment": experiment, "sweep": spec.name,
                                "spec_hash": spec.spec_hash()}, Describe(spec))
    path = sweep / "tune" / spec.name
    n = len(points_of(spec)) + spec.search.trials
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming sweep from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=make_searcher(spec), scheduler=make_scheduler(spec, sweep / RUNGS),
                                        num_samples=n,
                                        max_concurrent_trials=spec.search.concurrency),
            run_config=tune_run_config(spec, spec.name, sweep / "tune", [logger, PlacementGroupJanitor()], progress))
    grid = tuner.fit()
    summary = summarize(spec, grid, uri)
    if (spec.confirm.top and summary["front"]) or (spec.confirm.points and points_of(spec)):
        summary["confirm"] = confirm(spec, summary["front"], trainable, logger, sweep, progress)
    return summary


def confirm_choice(spec: Spec, front: list[dict]) -> list[dict]:
    """The configs the confirm stage re-runs: the first `confirm.top` of the search's Pareto front
    (summarize's, i.e. Optuna's), ordered by the spec's first objective in its direction (ties: the
    next objectives); then, with `confirm.points`, every study point not among them (as {"params": …}:
    the seeds of a point give the equal-gain comparison its interval)."""
    from .objectives import Objectives

    best = sorted(front, key=Objectives.from_spec(spec).rank_key)[: spec.confirm.top]
    if spec.confirm.points:
        chosen = [r["params"] for r in best]
        best += [{"params": p} for p in points_of(spec) if p not in chosen]
    return best


def confirm(spec: Spec, front: list[dict], trainable, logger, sweep: Path, progress: bool) -> dict:
    """Re-run the `confirm.top` Pareto-optimal configs (`confirm_choice`: best first objective
    first), and with `confirm.points` every study point, with each of `confirm.seeds`: a grid of fixed configs in a second Tune experiment
    (resumable too), tagged stage=confirm in MLflow, so analysis can report mean ± std over seeds."""
    from ray import tune

    from .janitor import PlacementGroupJanitor

    best = confirm_choice(spec, front)
    points = [{**r["params"], "seed": seed, "stage": "confirm"} for r in best for seed in spec.confirm.seeds]
    path = sweep / "tune" / f"{spec.name}-confirm"
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(trainable, param_space={"point": tune.grid_search(points)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=spec.search.concurrency),
                           run_config=tune_run_config(spec, f"{spec.name}-confirm", sweep / "tune",
                                                      [logger, PlacementGroupJanitor()], progress))
    grid = tuner.fit()
    ok = [r for r in grid if r.error is None]
    print(f"confirm stage: {len(ok)} of {len(points)} re-runs finished ({len(best)} configs × seeds {spec.confirm.seeds}: "
          f"trials {', '.join(str(r.get('trial_id') or r['params']) for r in best)})")
    return {"configs": len(best), "runs": len(points), "finished": len(ok),
            "trials": [r.get("trial_id", "") for r in best]}


def summarize(spec: Spec, grid, uri: str) -> dict:
    """The search's outcome, ranked by the spec's objectives (objectives.Objectives): trials
    finished, and the Pareto front as Optuna sees it (`study.best_trials` of the sweep's study, in the
    spec's directions; infeasible trials, by the spec's constraints, are on no front), best first
    objective first; the front's hypervolume (objectives.Objectives.hypervolume) and the compute
    spent (cost/device_s). Also where the records are (sweep dir, MLflow experiment, the UI command
    and the URL of the experiment's runs table: `where_to_look`)."""
    from .objectives import COST_S, EXPERIMENT_PREFIX, Objectives
    from .scheduler import EARLY_STOPPED
    from .tracking import runs_url, ui_command

    obj = Objectives.from_spec(spec)
    rows, times = [], {"trial": 0.0, "setup": 0.0, "train": 0.0, "probe": 0.0}
    compute = 0.0
    for r in grid:
        m = r.metrics or {}
        if isinstance(m.get(COST_S), (int, float)):
            compute += m[COST_S]
        if isinstance(m.get("trial_seconds"), (int, float)):
            times["trial"] += m["trial_seconds"]
            for k in ("setup", "train", "probe"):
                times[k] += m.get(f"time.{k}_s", 0.0)
        cfg = dict(r.config or {})
        method = cfg.get("method")
        status = "stopped" if r.error is None and m.get(EARLY_STOPPED) else \
            "ok" if r.error is None and obj.values(m) is not None else "failed"
        rows.append({"trial_id": m.get("trial_id", ""), "method": method, "status": status,
                     "params": {k: v for k, v in cfg.items() if k == "method" or k.startswith(f"{method}.")},
                     **{k: m.get(k) for k in obj.recorded()},
                     "config": json.dumps({k: v for k, v in cfg.items() if k != "method"}, default=str)})
    done = [r for r in rows if r["status"] == "ok"]
    feasible = [r for r in done if obj.feasible(r)]
    front, source = study_front(spec, obj, done)
    if front is None:                     # no study (e.g. a sweep without a searcher): the same rule on Tune's results
        from analysis.fronts import nondominated
        import pandas as pd

        mask = nondominated(pd.DataFrame(feasible, columns=list(obj.names)), obj.senses) if feasible else []
        front, source = [r for r, on in zip(feasible, mask) if on], "Tune's results (no Optuna study found)"
    front = sorted(front, key=obj.rank_key)
    arrows = ", ".join(f"{n} {obj.arrow(n)}" for n in obj.names)
    stopped = sum(r["status"] == "stopped" for r in rows)
    early = f", {stopped} stopped early (never on the front)" if stopped else ""
    print(f"\n{len(done)} of {len(rows)} trials finished{early}; Pareto-optimal ({arrows}; from {source}):")
    if front:
        import pandas as pd

        cols = ["trial_id", "method", *obj.metrics(), "config"]
        print(pd.DataFrame(front).reindex(columns=cols).to_string(index=False, float_format=lambda x: f"{x:+.2f}"))
    print(f"objectives: {obj.describe()}")
    if obj.constraints:
        print(f"constraints: {len(done) - len(feasible)} of {len(done)} finished trials infeasible (never on the front)")
    hv = obj.hypervolume(done)
    if hv is not None:
        ref = ", ".join(f"{n} {v:g}" for n, v in obj.reference)
        print(f"hypervolume of the front: {hv:.4g} (reference point: {ref})")
    if compute:
        print(f"compute: {compute:.0f} device-seconds (wall s × workers × GPUs, or CPUs, per worker)")
    if times["trial"]:
        work = times["setup"] + times["train"] + times["probe"]
        print(f"\ntime inside trials: {times['trial']:.0f} s = training {times['train']:.0f} s + probing "
              f"{times['probe']:.0f} s + model/data/method setup {times['setup']:.0f} s + Ray Train start/stop "
              f"and reporting {times['trial'] - work:.0f} s ({100 * (times['trial'] - work) / times['trial']:.0f} %)")
    sweep = spec.sweep_dir()
    experiment = EXPERIMENT_PREFIX + spec.name
    exp_id = _experiment_id(uri, experiment)
    return {"trials": len(rows), "finished": len(done), "front": front, "objectives": obj.to_dict(),
            "sweep_dir": str(sweep), "tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id,
            "mlflow_ui": ui_command(uri), "runs_url": runs_url(uri, exp_id) if exp_id else None,
            "seconds_in_trials": times, "hypervolume": hv, "compute_s": compute,
            "feasible": len(feasible), "stopped": stopped}


def study_front(spec: Spec, obj, done: list[dict]) -> tuple[list[dict] | None, str]:
    """Optuna's Pareto front of the sweep's study (the one make_searcher opened), each best trial
    matched to its Tune trial (same parameters and objective values) for its trial id and metrics;
    trials stopped early are left out (with early_stopping.optuna: complete the study holds their
    values at a rung, not finished ones). (None, why) when there is no such study."""
    import optuna

    db = spec.sweep_dir() / "optuna.db"
    name = f"{spec.name}-{spec.spec_hash()}"
    if not db.is_file():
        return None, ""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except KeyError:
        return None, ""
    want = [optuna.study.StudyDirection.MAXIMIZE if m == "max" else optuna.study.StudyDirection.MINIMIZE
            for m in obj.modes]
    if list(study.directions) != want:
        raise SpecError(f"Optuna study {name} optimises {[d.name for d in study.directions]}, the spec "
                        f"{list(zip(obj.names, obj.modes))}")
    best = study.best_trials
    if any("smf_sweep.stopped_at_rung" in t.user_attrs for t in best):
        # told COMPLETE at a rung (early_stopping.optuna: complete): best_trials' rule on the others
        from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
        from optuna.study.study import _is_constrained_optimization

        trials = [t for t in study.get_trials(deepcopy=False) if "smf_sweep.stopped_at_rung" not in t.user_attrs]
        best = _get_pareto_front_trials_by_trials(trials, study.directions, _is_constrained_optimization(trials))
    unused, front = list(done), []
    for t in sorted(best, key=lambda t: t.number):
        match = next((r for r in unused if r["params"] == t.params and all(
            math.isclose(r[n], v, rel_tol=1e-12, abs_tol=1e-12) for n, v in zip(obj.names, t.values))), None)
        if match is not None:
            unused.remove(match)
        row = dict(match) if match else {"trial_id": "", "method": t.params.get("method"), "status": "ok",
                                         "params": dict(t.params), "config": json.dumps(
                                             {k: v for k, v in t.params.items() if k != "method"}, default=str)}
        row.update({n: v for n, v in zip(obj.names, t.values)}, optuna_trial=t.number)
        front.append(row)
    return front, f"Optuna study {name}, best_trials"


def _experiment_id(uri: str, experiment: str) -> str | None:
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        return exp.experiment_id if exp else None
    except Exception:                      # the records are written; a lookup that fails only costs the URL
        return None


def where_to_look(summary: dict) -> str:
    """The sweep's last lines: its directory, the analysis command, the MLflow UI and the URL of
    the experiment's table of trial runs."""
    uri, lines = summary["tracking_uri"], [f"sweep dir:  {summary['sweep_dir']}",
                                           f"analysis:   python -m analysis.pareto {summary['sweep_dir']}"]
    if summary.get("mlflow_ui"):
        lines.append(f"MLflow UI:  {summary['mlflow_ui']}")
    else:
        lines.append(f"MLflow UI:  the server {uri}")
    if summary.get("runs_url"):
        lines.append(f"trial runs: {summary['runs_url']}   (experiment {summary['experiment']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smf_sweep.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="sweep spec YAML (search_spaces/*.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key, dotted (e.g. search.trials=4); repeatable")
    ap.add_argument("--storage", help="parent directory of the sweep dir (overrides the spec's storage); "
                                      "on a cluster, a shared path")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (e.g. http://127.0.0.1:5000); default: "
                                           "sqlite:///<sweep dir>/mlflow.db")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    sets = list(args.set)
    if args.storage:
        sets.append(f"storage={args.storage}")
    if args.tracking_uri:
        sets.append(f"tracking_uri={args.tracking_uri}")
    from .tracking import TrackingError, check_tracking_uri
    try:
        spec = load_spec(args.spec, sets)
        check_tracking_uri(spec.tracking_uri or "")
    except (SpecError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        summary = run_sweep(spec, progress=not args.quiet)
    except SpecError as e:                # e.g. search.driver_resource missing on the cluster
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\nsweep wall time: {summary['wall_seconds']:.0f} s")
    print(where_to_look(summary), flush=True)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0 if summary["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
