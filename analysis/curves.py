"""Learning–forgetting curves: every trial's probes along its training, read from MLflow step metrics.

Trials log `curve/<name>` step metrics on their run (step = the trial's train optimizer step; step 0
= before its first step, after the method's own setup stages; the last = the end of training), on a
fixed small subset of each probe's data, relative to the base model on the same subset:
`curve/medmcqa_gain_pp` (pp), `curve/forgetting` (the sweep's definition; absent under nats),
`curve/<task>/delta` (pp; WikiText: % of base), `curve/triviaqa_drop_pp`, `curve/wikitext_nats`,
`curve/kl_general` (KL(base‖model), nats/token, on a fixed batch of general text) and the raw subset
values `curve/medmcqa`, `curve/triviaqa`, `curve/wikitext` (smf_sweep/curves.py logs them; any other
`curve/` metric, e.g. `curve/seconds`, comes along as a column of its own).

`load` turns them into one long frame, one row per (trial run, step); each metric's column is its
name without `curve/`, so the curve columns carry the trials frame's metric names (gain, forgetting,
`<task>/delta`, components) and `nondominated(points, senses)` ranks checkpoints like trials. The
raw subset values are columns `medmcqa`, `triviaqa`, `wikitext`. Trials without curve metrics (curves
off) have no rows.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from analysis.fronts import nondominated, order_best_first
from analysis.runs import feasible
from analysis.source import SourceError
from analysis.summary import METHOD_ORDER, ordered
from smf_sweep.objectives import COSTS, FORGETTING, GAIN, Objectives, delta, drop_pp, nats

PREFIX = "curve/"
KL = "kl_general"  # KL(base‖model) in nats/token on a fixed batch of general text
NAMES = [GAIN, FORGETTING, delta("medmcqa"), delta("triviaqa"), delta("wikitext"), drop_pp("triviaqa"),
         nats("wikitext"), KL, "medmcqa", "triviaqa", "wikitext"]   # the contract's curves, without `curve/`
INFO = ["run_id", "trial_id", "method", "algorithm", "selector", "seed", "stage", "default_point",
        "config", "config_key"]                      # taken from the trials frame (analysis.runs)
READERS = 8  # concurrent get_metric_history calls (one per run and key)


def curve_keys(trials: pd.DataFrame) -> dict[str, list[str]]:
    """{run id: its `curve/*` keys}: the curve metrics whose last value the run has (the trials
    frame keeps every final value, curves' too); runs without any are left out."""
    cols = [c for c in trials.columns if c.startswith(PREFIX)]
    out = {}
    for rid, vals in zip(trials["run_id"], trials[cols].itertuples(index=False)):
        keys = [c for c, v in zip(cols, vals) if pd.notna(v)]
        if keys:
            out[rid] = keys
    return out


def history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """A step metric's values by step; a step logged twice (a retried report) keeps the last."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return pd.Series({m.step: m.value for m in hist}, dtype=float)


def load(tracking_uri: str, trials: pd.DataFrame, obj: Objectives | None = None) -> pd.DataFrame:
    """The long frame of curve points of `trials` (a trials frame, analysis.runs; usually the
    finished ones): INFO, `step`, NAMES (NaN where not logged), any other `curve/` metric without
    its prefix, the trials' `params.*`; and, for each constraint on a cost (`cost/*`, which has no
    curve: a checkpoint costs no more than its trial), the trial's final value, so that runs.feasible
    judges a checkpoint by its own values and its trial's cost.
    Rows: trials in the frame's order, steps ascending. Empty (same columns) when no trial has curves.
    """
    obj = obj or Objectives()
    keys = curve_keys(trials)
    todo = [(rid, k) for rid, ks in keys.items() for k in ks]
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        with ThreadPoolExecutor(READERS) as ex:
            series = list(ex.map(lambda rk: history(client, *rk), todo))
    except MlflowException as e:
        raise SourceError(f"MLflow at {tracking_uri}: {e.message.splitlines()[0]}")
    per_run: dict[str, dict] = {}
    for (rid, k), s in zip(todo, series):
        per_run.setdefault(rid, {})[k[len(PREFIX):]] = s
    extra = sorted({k for d in per_run.values() for k in d} - set(NAMES))
    names = NAMES + extra
    params = [c for c in trials.columns if c.startswith("params.")]
    final = list(dict.fromkeys(c.metric for c in obj.constraints if c.metric in COSTS and c.metric in trials))
    info = trials.set_index("run_id")
    parts = []
    for rid, d in per_run.items():
        pts = pd.DataFrame(d).sort_index().reindex(columns=names)
        pts.index.name = "step"
        pts = pts.reset_index()
        row = info.loc[rid]
        for c in [*INFO[1:], *params, *final]:
            pts[c] = row[c] if c in row else np.nan
        pts["run_id"] = rid
        parts.append(pts)
    cols = [*INFO, "step", *names, *params, *final]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def senses(points: pd.DataFrame, obj: Objectives) -> tuple[dict[str, str], list[str]]:
    """The objectives a checkpoint can be ranked on (those with a curve holding values), in their
    directions; and the objectives left out (no curve: cost/device_s under --cost)."""
    has = {c for c in points.columns if c not in INFO and c not in COSTS and points[c].notna().any()}
    keep = {n: m for n, m in obj.senses.items() if n in has}
    return keep, [n for n in obj.senses if n not in keep]


def axes(points: pd.DataFrame, obj: Objectives) -> tuple[str, str] | None:
    """(y, x) of the curves plot: the first two objectives with curves (default: gain, forgetting;
    under nats: gain, wikitext_nats); None when fewer than two have curves."""
    s, _ = senses(points, obj)
    return (list(s)[0], list(s)[1]) if len(s) >= 2 else None


def fronts(points: pd.DataFrame, obj: Objectives) -> pd.DataFrame:
    """Checkpoint-level fronts: every evaluation point of every trial is a candidate; per method
    (column `front`), the feasible points non-dominated on the objectives that have curves
    (`senses`), best first objective first. Empty when fewer than two objectives have curves."""
    s, _ = senses(points, obj)
    if len(s) < 2 or points.empty:
        return points.iloc[:0].assign(front=pd.Series(dtype=object))
    ok = points[feasible(points, obj)]
    parts = []
    for m in ordered(ok["method"].unique(), METHOD_ORDER):
        sub = ok[ok["method"] == m]
        parts.append(order_best_first(sub[nondominated(sub, s)], s).assign(front=m))
    if not parts:
        return points.iloc[:0].assign(front=pd.Series(dtype=object))
    out = pd.concat(parts, ignore_index=True)
    return out[["front"] + [c for c in out.columns if c != "front"]]


def equal_gain_plan(obj: Objectives) -> list[tuple[str, list[str]]]:
    """[(forgetting column a seed's best trial is chosen by, the columns carried from that trial)]:
    forgetting, carrying each forgetting probe's damage (accuracy drop in pp, perplexity Δ in % of
    base) and kl_general; under nats no single forgetting exists, so each component is chosen by
    on its own (one comparison per component)."""
    damage = [drop_pp(t) if obj.higher_is_better(t) else delta(t) for t, _ in obj.weighted()]
    return [(k, [c for c in dict.fromkeys([*damage, KL]) if c != k]) for k in obj.forgetting_metrics()]


def drift(points: pd.DataFrame, target: str) -> pd.DataFrame:
    """KL drift as a predictor of forgetting: per method and over all points, the rank (Spearman)
    and linear (Pearson) correlation of kl_general with `target` over the checkpoints having both."""
    rows = []
    d = points[[c for c in ("method", KL, target) if c in points]].dropna()
    groups = [(m, d[d["method"] == m]) for m in ordered(d["method"].unique(), METHOD_ORDER)] if KL in d else []
    for m, g in groups + ([("all methods", d)] if KL in d and len(groups) > 1 else []):
        x, y = g[KL].astype(float), g[target].astype(float)
        ok = len(g) > 2 and x.nunique() > 1 and y.nunique() > 1
        rows.append({"method": m, "points": len(g), "spearman": x.corr(y, "spearman") if ok else np.nan,
                     "pearson": x.corr(y) if ok else np.nan})
    return pd.DataFrame(rows, columns=["method", "points", "spearman", "pearson"])


AGREE = [GAIN, FORGETTING, delta("triviaqa"), delta("wikitext")]   # curve and end point both (gain: MedMCQA Δ)
NEAR_ZERO = 1.0   # |end value| below this (pp, %): left out of the ratio, whose size it would blow up


def agreement(points: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The curve subset against the full probes. A finished trial's last curve point is its trained
    model on the subset, its end point the same model on the whole probe: per metric both have, over
    the trials having both, the median ratio curve / end (trials whose |end| >= NEAR_ZERO), Spearman ρ
    and the mean difference curve − end. A subset that is a sample of the probe reads ratios near 1;
    the head of a probe listed in some order need not (curves.subset)."""
    cols = ["metric", "trials", "median_ratio", "ratio_trials", "spearman", "mean_diff"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    last = points.sort_values("step").groupby("run_id").tail(1).set_index("run_id")
    ends = trials.set_index("run_id")
    rows = []
    for n in [n for n in AGREE if n in last and n in ends]:
        both = pd.DataFrame({"curve": last[n], "end": ends[n]}).dropna().astype(float)
        if both.empty:
            continue
        big = both[both["end"].abs() >= NEAR_ZERO]
        ok = len(both) > 2 and both["curve"].nunique() > 1 and both["end"].nunique() > 1
        rows.append({"metric": n, "trials": len(both),
                     "median_ratio": (big["curve"] / big["end"]).median() if len(big) else np.nan,
                     "ratio_trials": len(big),
                     "spearman": both["curve"].corr(both["end"], "spearman") if ok else np.nan,
                     "mean_diff": (both["curve"] - both["end"]).mean()})
    return pd.DataFrame(rows, columns=cols)
