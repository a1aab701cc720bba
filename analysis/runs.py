"""Read a sweep's MLflow runs into one pandas DataFrame, one row per trial.

Layout read (docs/contracts.md): one parent run (tag smf_sweep.role=sweep, metrics base/<task>, tag
smf_sweep.objectives), one child run per trial (tag smf_sweep.role=trial; tags method, selector,
trial_id, seed, spec_hash, stage, smf_sweep.default_point, failure_reason; params = the flattened
trial config; metrics <task>/{before,after,delta}, retrofit/<task>, medmcqa_gain_pp, forgetting,
<task>_drop_pp, <task>_nats, cost/*, constraint_violation). The parent run's step metrics
hypervolume and compute_s are the sweep's progress (`Sweep.progress`).

The sweep's objectives (names, directions, forgetting's weights, the probes' directions) are read
back from the parent run's tag, else sweep.json, else (stores logged before they were recorded)
the contracts' defaults: `Sweep.objectives`, an smf_sweep.objectives.Objectives.

Columns of the trials frame: see columns(objectives), plus `params.<dotted key>` per config param
and any other final (non `train/`) metric under its MLflow name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from analysis.source import PREFIX, Source, SourceError
from smf_sweep import objectives as O
from smf_sweep.objectives import Objectives

INFO = ["run_id", "parent_run_id", "run_name", "trial_id", "status", "failure_reason",
        "method", "algorithm", "selector", "seed", "default_point", "spec_hash", "stage", "start_time",
        "end_time", "config", "config_key"]


def probe_cols(obj: Objectives) -> list[str]:
    return [f(t) for t in obj.tasks for f in (O.before, O.after, O.delta)]


def retrofit_cols(obj: Objectives) -> list[str]:
    return [O.retrofit(t) for t in obj.tasks]


def columns(obj: Objectives) -> list[str]:
    """The trials frame's first columns: run info, the objectives and forgetting, the probes."""
    scores = [n for n in obj.metrics() if n not in probe_cols(obj)]
    return INFO + scores + probe_cols(obj) + retrofit_cols(obj)


PROGRESS = ["trials", O.COMPUTE, O.HYPERVOLUME, O.FRONT_SIZE]   # Sweep.progress's columns


COLUMNS = columns(Objectives())  # the default objectives' columns
# always shown in a trial's short config (when the trial has them), then whatever else varies
KEY_PARAMS = ["lr", "smf.selector", "smf.n_keys", "smf.top_t", "smf.k", "smf.insertion",
              "lora.rank", "lora.alpha"]
PAGE = 1000  # runs per search_runs page


@dataclass
class Sweep:
    """What analysis needs from one experiment."""
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    trials: pd.DataFrame  # every trial run, any status; columns COLUMNS + params.* + metrics
    parent_run_id: str | None = None
    base: dict = field(default_factory=dict)  # task -> base model value (acc fraction / ppl)
    base_source: str = ""  # "parent run" or "trials' <task>/before"
    spec_hash: str | None = None  # sweep.json's, when known
    objectives: Objectives = field(default_factory=Objectives)  # what the sweep optimised
    objectives_source: str = ""  # "parent run", "sweep.json" or "defaults (not recorded)"
    progress: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROGRESS))  # one row per ended search trial
    progress_source: str = ""  # "parent run" (logged by the sweep) or "recomputed from the trials"


def _experiment(client: MlflowClient, name: str, uri: str):
    exp = client.get_experiment_by_name(name)
    if exp is None and not name.startswith(PREFIX):
        exp = client.get_experiment_by_name(PREFIX + name)
    if exp is None and name.isdigit():
        try:
            exp = client.get_experiment(name)
        except MlflowException:
            exp = None
    if exp is None:
        raise SourceError(f"no MLflow experiment named {name!r} (or {PREFIX + name!r}, or with that"
                          f" id) at {uri}")
    return exp


def _all_runs(client: MlflowClient, exp_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _as_bool(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def _as_int(v):
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _row(run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    method = tags.get("method") or params.get("method")            # the arm (its name in the spec)
    algorithm = tags.get("algorithm") or method                    # the registered method it runs
    selector = tags.get("selector") or (params.get("smf.selector") if algorithm == "smf" else None)
    seed = tags.get("seed", params.get("seed"))
    row = {
        "run_id": run.info.run_id,
        "parent_run_id": tags.get(O.PARENT_TAG),
        "run_name": run.info.run_name,
        "trial_id": tags.get("trial_id") or run.info.run_name,
        "status": run.info.status,
        "failure_reason": tags.get(O.FAILURE_TAG),
        "stopped_at_rung": _as_int(tags.get(O.STOPPED_AT_RUNG)),   # stopped early by scheduler.MOASHA (KILLED)
        "stopped_at_step": _as_int(tags.get(O.STOPPED_AT_STEP)),
        "method": method,
        "algorithm": algorithm,
        "selector": selector,
        "seed": _as_int(seed),
        "default_point": _as_bool(tags.get(O.DEFAULT_POINT_TAG, "false")),
        "spec_hash": tags.get("spec_hash"),
        "stage": tags.get(O.STAGE_TAG, "search"),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
    for k, v in metrics.items():
        if not k.startswith("train/"):  # per-step curves: their last value means nothing here
            row[k] = v
    row["_params"] = dict(params)
    return row


def _fill_derived(df: pd.DataFrame, obj: Objectives) -> None:
    """Missing deltas from before/after, missing gain and forgetting from deltas, as the sweep's
    objectives define them (directions, forgetting's weights)."""
    for t in obj.tasks:
        for c in (O.before(t), O.after(t), O.delta(t)):
            if c not in df:
                df[c] = np.nan
        df[O.delta(t)] = df[O.delta(t)].fillna(obj.delta(t, df[O.before(t)], df[O.after(t)]))
    derived = obj.scores({t: df[O.delta(t)] for t in obj.tasks})
    for c, v in derived.items():
        df[c] = df[c].fillna(v) if c in df else v
    for c in retrofit_cols(obj):
        if c not in df:
            df[c] = np.nan


def _is_seed(key: str) -> bool:
    return key == "seed" or key.endswith(".seed")


def _configs(df: pd.DataFrame, ignore: frozenset = frozenset()) -> None:
    """config_key (all params but seeds, `ignore` and other methods' params) and a short `config`."""
    methods = {m for m in df["method"].dropna().unique()}
    algorithms = {a for a in df["algorithm"].dropna().unique()}
    own = []
    for a, p in zip(df["algorithm"], df["_params"]):      # params are named by algorithm: smf.n_keys
        others = tuple(f"{o}." for o in algorithms if o != a)
        own.append({k: v for k, v in p.items() if not _is_seed(k) and k != "method"
                    and k not in ignore and not k.startswith(others)})
    df["config_key"] = [f"{m}|" + ";".join(f"{k}={v}" for k, v in sorted(p.items()))
                        for m, p in zip(df["method"], own)]
    varying: dict = {}
    for m in methods:
        ps = [p for p, mm in zip(own, df["method"]) if mm == m]
        keys = set().union(*ps) if ps else set()
        varying[m] = {k for k in keys if len({p.get(k) for p in ps}) > 1}
    cfg = []
    for m, p in zip(df["method"], own):
        keys = [k for k in KEY_PARAMS if k in p]
        keys += sorted(k for k in varying.get(m, ()) if k not in keys)
        cfg.append(" ".join(f"{k}={p[k]}" for k in keys))
    df["config"] = cfg


def _param_columns(df: pd.DataFrame) -> pd.DataFrame:
    raw = pd.DataFrame(list(df["_params"]), index=df.index)
    cols = {}
    for k in sorted(raw.columns):
        s = raw[k].where(raw[k].notna() & (raw[k] != "None"))
        num = pd.to_numeric(s, errors="coerce")
        if num.notna().sum() != s.notna().sum():
            cols[f"params.{k}"] = s.astype(object)  # text (selector, method, paths)
        elif s.dropna().astype(str).str.fullmatch(r"[+-]?\d+").all():
            cols[f"params.{k}"] = num.astype("Int64")  # n_keys=128, not 128.0, beside NaN rows
        else:
            cols[f"params.{k}"] = num
    return pd.concat([df.drop(columns="_params"), pd.DataFrame(cols, index=df.index)], axis=1)


def trials_frame(runs: list, ignore: frozenset = frozenset(), obj: Objectives | None = None) -> pd.DataFrame:
    """Trial runs -> DataFrame (columns(obj) first, then params.*, then other metrics).

    ignore: params left out of config_key/config (e.g. a per-trial output path that would keep
    seeds of one config from being grouped); they stay as params.* columns.
    obj: the sweep's objectives (default: the contracts' defaults).
    """
    obj = obj or Objectives()
    first = columns(obj)
    if not runs:
        df = pd.DataFrame(columns=first)
        return df
    df = pd.DataFrame([_row(r) for r in runs])
    for c in ("start_time", "end_time"):
        df[c] = pd.to_datetime(df[c], unit="ms", utc=True)
    _fill_derived(df, obj)
    _configs(df, ignore)
    df = _param_columns(df)
    df = df.sort_values(["start_time", "trial_id"], kind="stable").reset_index(drop=True)
    rest = [c for c in df.columns if c not in first]
    return df[first + sorted(c for c in rest if c.startswith("params."))
              + sorted(c for c in rest if not c.startswith("params."))]


def _pick_parent(parents: list, trials: list, spec_hash: str | None = None):
    """The parent run of sweep.json's spec hash, else the one most trials point at."""
    if not parents:
        return None
    same = [p for p in parents if spec_hash and p.data.tags.get("spec_hash") == spec_hash]
    refs = pd.Series([r.data.tags.get(O.PARENT_TAG) for r in trials]).value_counts()
    return max(same or parents, key=lambda p: (refs.get(p.info.run_id, 0), p.info.start_time or 0))


def objectives_of(parent, src: Source) -> tuple[Objectives, str]:
    """The sweep's objectives: the parent run's tag, else sweep.json's, else the defaults."""
    text = parent.data.tags.get(O.OBJECTIVES_TAG) if parent is not None else None
    try:
        if text:
            return Objectives.from_json(text), "parent run"
        if src.objectives:
            return Objectives.from_dict(src.objectives), "sweep.json"
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"the sweep's recorded objectives cannot be read: {e}")
    return Objectives(), "defaults (not recorded with this sweep)"


def load(src: Source, ignore: frozenset = frozenset()) -> Sweep:
    client = MlflowClient(tracking_uri=src.tracking_uri)
    try:
        exp = _experiment(client, src.experiment, src.tracking_uri)
        runs = _all_runs(client, exp.experiment_id)
    except MlflowException as e:
        raise SourceError(f"MLflow at {src.tracking_uri}: {e.message.splitlines()[0]}")
    role = lambda r: r.data.tags.get(O.ROLE_TAG)  # noqa: E731
    parents = [r for r in runs if role(r) == O.ROLE_SWEEP]
    trials = [r for r in runs if role(r) == O.ROLE_TRIAL]
    if not trials and not any(role(r) for r in runs):  # a store logged without role tags
        trials = [r for r in runs if "method" in r.data.tags or "method" in r.data.params]
    parent = _pick_parent(parents, trials, src.spec_hash)
    obj, obj_source = objectives_of(parent, src)
    df = trials_frame(trials, ignore, obj)
    base, base_source = {}, ""
    if parent is not None:
        base = {t: parent.data.metrics[O.base(t)] for t in obj.tasks
                if O.base(t) in parent.data.metrics}
        base_source = "parent run"
    missing = [t for t in obj.tasks if t not in base]
    for t in missing:  # every trial probes the same base model first
        before = df[O.before(t)].dropna() if O.before(t) in df else pd.Series(dtype=float)
        if len(before):
            base[t] = float(before.median())
            base_source = (base_source + ", " if base_source else "") + f"trials' {t}/before"
    base = {t: v for t, v in base.items() if v is not None and math.isfinite(v)}
    prog = logged_progress(client, parent.info.run_id) if parent is not None else pd.DataFrame(columns=PROGRESS)
    prog_source = "parent run"
    if prog.empty and len(df):
        prog, prog_source = progress_of(df, obj), "recomputed from the trial runs"
    return Sweep(src.tracking_uri, exp.experiment_id, exp.name, df,
                 parent.info.run_id if parent is not None else None, base, base_source,
                 src.spec_hash, obj, obj_source, prog, prog_source)


def finished(df: pd.DataFrame, obj: Objectives | None = None) -> pd.DataFrame:
    """Trials usable for fronts: MLflow status FINISHED with every objective (and forgetting or,
    under nats, its components, which the budget reads) finite. Infeasible ones are among them
    (`feasible` tells them apart): they are shown, never on a front."""
    obj = obj or Objectives()
    ok = df["status"] == "FINISHED"
    for c in dict.fromkeys([*obj.names, *obj.forgetting_metrics()]):
        ok &= np.isfinite(pd.to_numeric(df[c], errors="coerce")) if c in df else False
    return df[ok]


def stopped_early(df: pd.DataFrame) -> pd.Series:
    """Boolean Series: the trials scheduler.MOASHA stopped at a rung (KILLED, tag stopped_at_rung)."""
    rung = df["stopped_at_rung"] if "stopped_at_rung" in df else pd.Series(np.nan, index=df.index)
    return (df["status"] == "KILLED") & rung.notna()


def feasible(df: pd.DataFrame, obj: Objectives | None = None) -> pd.Series:
    """Boolean Series: the rows where every constraint of the objectives holds (all of them when
    there are none; a missing constraint metric is not feasible)."""
    obj = obj or Objectives()
    num = {c.metric: pd.to_numeric(df[c.metric], errors="coerce") for c in obj.constraints if c.metric in df}
    return pd.Series(obj.feasible(num), index=df.index, dtype=bool)


def progress_of(df: pd.DataFrame, obj: Objectives) -> pd.DataFrame:
    """The search's progress recomputed from its trial runs, in the order they ended (finished,
    failed, and stopped early, whose compute counts and whose values do not, as no finished trial's;
    objectives.Objectives.progress): what the sweep logs on its parent run."""
    stopped = stopped_early(df)
    ended = df[(df["status"].isin(["FINISHED", "FAILED"]) | stopped) & (df["stage"].fillna("search") == "search")]
    ended = ended.sort_values(["end_time", "start_time"], kind="stable")
    cols = [c for c in obj.recorded() if c in ended]
    rows = [{k: float(v) for k, v in r.items() if pd.notna(v) and (not s or k in O.COSTS)}
            for r, s in zip(ended[cols].to_dict("records"), stopped[ended.index])]
    return pd.DataFrame(obj.progress(rows), columns=PROGRESS)


def logged_progress(client: MlflowClient, parent_id: str) -> pd.DataFrame:
    """The parent run's hypervolume, compute_s and front_size histories by step (the last value of
    a step logged twice, e.g. after a retry); empty when the sweep logged none."""
    series = {}
    for key in (O.HYPERVOLUME, O.COMPUTE, O.FRONT_SIZE):
        hist = client.get_metric_history(parent_id, key)
        series[key] = pd.Series({m.step: m.value for m in sorted(hist, key=lambda m: (m.step, m.timestamp))},
                                dtype=float)
    if series[O.COMPUTE].empty:
        return pd.DataFrame(columns=PROGRESS)
    out = pd.DataFrame(series).reindex(columns=PROGRESS[1:])
    out.index.name = "trials"
    return out.reset_index().sort_values("trials").reset_index(drop=True)
