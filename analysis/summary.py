"""Tables from the trials frame: fronts, per-config aggregates over seeds, best picks, counts.

No plotting. Accuracies are fractions in MLflow and shown here in %; deltas keep the contracts'
units (pp for accuracies, % of base for perplexity). Every ranking (fronts, "best") follows the
sweep's objectives (`obj`, an smf_sweep.objectives.Objectives; default: the contracts' defaults).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fronts import nondominated, order_best_first
from analysis.runs import feasible, probe_cols, retrofit_cols, stopped_early
from smf_sweep.objectives import Objectives

METHOD_ORDER = ["smf", "lora", "full"]
SELECTOR_ORDER = ["kl", "tfidf", "tf", "random"]
CONTROLS = {"tf", "random"}  # SMF_SPEC.md §4: selectors that only show whether selection matters


def retro_deltas(obj: Objectives) -> list[str]:
    return [f"retrofit/{t}/delta" for t in obj.tasks]


def metrics(obj: Objectives) -> list[str]:
    """Columns aggregated over seeds: objectives, forgetting, probes, retrofit probes, what the
    constraints read, the costs."""
    return list(dict.fromkeys(obj.metrics() + probe_cols(obj) + retrofit_cols(obj) + retro_deltas(obj)
                              + obj.recorded()))


def ordered(values, order: list) -> list:
    """Known names in `order` first, then the rest sorted."""
    vals = {v for v in values if isinstance(v, str)}
    return [v for v in order if v in vals] + sorted(vals - set(order))


def status_counts(df: pd.DataFrame, fin: pd.DataFrame) -> dict:
    """{"finished": used, "failed": n, "stopped early": n, ...}: every trial counted once (a trial
    scheduler.MOASHA stopped is "stopped early", not "killed")."""
    c = {"finished": len(fin)}
    rest = df.drop(index=fin.index)
    status = rest["status"].where(~stopped_early(rest), "stopped early")
    for s, n in status.value_counts().items():
        key = "finished without objectives" if s == "FINISHED" else str(s).lower()
        c[key] = int(n)
    return c


def fronts_table(fin: pd.DataFrame, obj: Objectives | None = None) -> pd.DataFrame:
    """Non-dominated feasible trials (on the sweep's objectives, in their directions; infeasible
    ones, by its constraints, are on no front, as in Optuna's best_trials) per method
    (front=<method>) and over all methods (front=overall); within a front, best first objective
    first, as the sweep's printed front and its confirm stage."""
    obj = obj or Objectives()
    fin = fin[feasible(fin, obj)]
    parts = []
    for m in ordered(fin["method"].unique(), METHOD_ORDER):
        sub = fin[fin["method"] == m]
        parts.append(order_best_first(sub[nondominated(sub, obj.senses)], obj.senses).assign(front=m))
    parts.append(order_best_first(fin[nondominated(fin, obj.senses)], obj.senses).assign(front="overall"))
    out = pd.concat(parts, ignore_index=True)
    out = out.sort_values("front", kind="stable", key=lambda s: s.map(_front_rank))
    return out[["front"] + [c for c in out.columns if c != "front"]].reset_index(drop=True)


def _front_rank(name: str) -> int:
    order = METHOD_ORDER + ["overall"]
    return order.index(name) if name in order else len(METHOD_ORDER)


def with_retrofit_deltas(fin: pd.DataFrame, base: dict, obj: Objectives | None = None) -> pd.DataFrame:
    obj = obj or Objectives()
    out = fin.copy()
    for t in obj.tasks:
        b = base.get(t, np.nan)
        out[f"retrofit/{t}/delta"] = obj.delta(t, b, out[f"retrofit/{t}"])
    return out


def aggregate(fin: pd.DataFrame, obj: Objectives | None = None) -> pd.DataFrame:
    """One row per config (method + params but seed): mean and std of every metric, n seeds."""
    cols = [c for c in metrics(obj or Objectives()) if c in fin]
    rows = []
    for key, g in fin.groupby("config_key", sort=False):
        r = {"config_key": key, "method": g["method"].iloc[0], "selector": g["selector"].iloc[0],
             "config": g["config"].iloc[0], "n": len(g),
             "default_point": bool(g["default_point"].any()),
             "trials": [f"{t} (`{rid}`)" for t, rid in zip(g["trial_id"], g["run_id"])],
             "run_ids": list(g["run_id"])}
        for c in cols:
            v = pd.to_numeric(g[c], errors="coerce")
            r[c] = v.mean()
            r[c + ":std"] = v.std(ddof=1) if v.notna().sum() > 1 else np.nan
        rows.append(r)
    return pd.DataFrame(rows)


def best(agg: pd.DataFrame, method: str, budget: float | None = None,
         obj: Objectives | None = None) -> pd.Series | None:
    """The method's config with the best mean first objective in its direction (default: the
    highest gain) among those whose means meet the constraints, within the forgetting budget when
    given (Objectives.within_budget: mean forgetting <= budget; under nats every component within
    the budget in its unit).

    Ties: the next objectives in their directions, then more seeds.
    """
    obj = obj or Objectives()
    sub = agg[agg["method"] == method]
    sub = sub[feasible(sub, obj)]
    if budget is not None:
        sub = sub[within(sub, budget, obj)]
    if sub.empty:
        return None
    return order_best_first(sub.assign(_neg_n=-sub["n"]), {**obj.senses, "_neg_n": "min"}).iloc[0]


def within(df: pd.DataFrame, budget: float, obj: Objectives) -> pd.Series:
    """Boolean Series: forgetting within the budget (Objectives.within_budget); missing: not."""
    cols = {n: pd.to_numeric(df[n], errors="coerce") for n in obj.forgetting_metrics() if n in df}
    return pd.Series(obj.within_budget(cols, budget), index=df.index, dtype=bool)


def mean_std(g: pd.DataFrame, col: str) -> tuple[float, float, int]:
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return (v.mean() if len(v) else np.nan, v.std(ddof=1) if len(v) > 1 else np.nan, len(v))


def by_value(fin: pd.DataFrame, col: str, obj: Objectives | None = None) -> pd.DataFrame:
    """Per value of a param column: trials, mean/std of the objectives, forgetting and the
    forgetting probes' deltas (for selectors, memory)."""
    rows = []
    for v, g in fin.groupby(col, sort=True, dropna=True):
        r = {col: v, "trials": len(g), "configs": g["config_key"].nunique()}
        for c in (obj or Objectives()).metrics():
            r[c], r[c + ":std"], _ = mean_std(g, c)
        rows.append(r)
    return pd.DataFrame(rows)
