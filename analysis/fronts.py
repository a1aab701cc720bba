"""Non-dominated (Pareto) fronts of trials: pure logic, no plotting, no MLflow.

Dominance over objectives with directions (`senses`: {column: "max" | "min"}, the sweep's
objectives.Objectives.senses): trial q dominates p when q is at least as good on every objective
and strictly better on one (Optuna's `best_trials` rule). Exact duplicates therefore do not
dominate each other and are both on the front. Rows with a missing (NaN) objective are never on a
front and dominate nothing. `pareto_mask(df, gain, cost)` is the two-objective case (maximise
gain, minimise cost).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from smf_sweep.objectives import FORGETTING, GAIN

COST = FORGETTING  # the default objectives' names (objectives.Objectives()); a sweep's come from its run


def _mask(gain: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Non-dominated mask in O(n log n): sort by gain (desc), then cost (asc), sweep once.

    p is non-dominated iff its cost is the minimum of its equal-gain group (nobody with the same
    gain costs less) and strictly below every cost seen at a strictly higher gain.
    """
    n = len(gain)  # gain, cost: (n,)
    out = np.zeros(n, dtype=bool)
    ok = ~(np.isnan(gain) | np.isnan(cost))
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out
    order = idx[np.lexsort((cost[idx], -gain[idx]))]  # (m,) gain desc, ties by cost asc
    best_above = np.inf  # min cost over strictly higher gains
    i = 0
    while i < order.size:
        j = i
        g = gain[order[i]]
        while j < order.size and gain[order[j]] == g:
            j += 1
        group = order[i:j]  # equal gain; sorted by cost, so group[0] has the group's min cost
        c_min = cost[group[0]]
        if c_min < best_above:
            out[group[cost[group] == c_min]] = True
        best_above = min(best_above, c_min)
        i = j
    return out


def _mask_nd(better: np.ndarray) -> np.ndarray:
    """Non-dominated mask of (n, k) values where higher is better on every column; O(n² k)."""
    n = better.shape[0]
    ok = ~np.isnan(better).any(axis=1)  # (n,)
    out = np.zeros(n, dtype=bool)
    v = better[ok]  # (m, k)
    if v.shape[0] == 0:
        return out
    ge = (v[:, None, :] >= v[None, :, :]).all(axis=2)  # (m, m): row q >= row p everywhere
    gt = (v[:, None, :] > v[None, :, :]).any(axis=2)
    dominated = (ge & gt).any(axis=0)  # p is dominated by some q
    out[np.flatnonzero(ok)] = ~dominated
    return out


def _values(sub: pd.DataFrame, cols) -> np.ndarray:
    return np.column_stack([pd.to_numeric(sub[c], errors="coerce").to_numpy(dtype=float)
                            for c in cols]) if len(cols) else np.zeros((len(sub), 0))


def nondominated(df: pd.DataFrame, senses: Mapping[str, str], by: str | None = None) -> pd.Series:
    """Boolean Series (index of df): True where the row is non-dominated on `senses`' columns in
    their directions ({column: "max" | "min"}, any number of objectives).

    With `by` (e.g. "method"), each group of rows gets its own front; rows whose `by` value is
    missing form no front (False).
    """
    cols = list(senses)
    bad = [m for m in senses.values() if m not in ("max", "min")]
    if bad or not cols:
        raise ValueError(f"senses must map columns to 'max' or 'min', got {dict(senses)}")
    res = pd.Series(False, index=df.index, dtype=bool)
    if df.empty:
        return res
    groups = [(None, df)] if by is None else list(df.groupby(by, sort=True, dropna=True))
    sign = np.array([1.0 if senses[c] == "max" else -1.0 for c in cols])  # (k,): higher is better after it
    for _, sub in groups:
        better = _values(sub, cols) * sign  # (n, k)
        if len(cols) == 2:  # the O(n log n) sweep: gain = first column, cost = -second
            res.loc[sub.index] = _mask(better[:, 0], -better[:, 1])
        else:
            res.loc[sub.index] = _mask_nd(better)
    return res


def pareto_mask(df: pd.DataFrame, gain: str = GAIN, cost: str = COST,
                by: str | None = None) -> pd.Series:
    """Two objectives, gain maximised and cost minimised: `nondominated(df, {gain: max, cost: min})`."""
    return nondominated(df, {gain: "max", cost: "min"}, by)


def order_best_first(df: pd.DataFrame, senses: Mapping[str, str]) -> pd.DataFrame:
    """Rows sorted by the first objective in its direction (best first), ties by the next ones:
    the order of the printed front and of the confirm stage's choice (Objectives.rank_key)."""
    if df.empty:
        return df
    return df.sort_values(list(senses), ascending=[m == "min" for m in senses.values()], kind="stable")


def front_order(df: pd.DataFrame, gain: str = GAIN, cost: str = COST) -> pd.DataFrame:
    """The front's rows sorted for a step line: cost ascending (gain then ascends too)."""
    front = df[pareto_mask(df, gain, cost)]
    return front.sort_values([cost, gain], ascending=[True, True], kind="stable")
