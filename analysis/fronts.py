"""Non-dominated (Pareto) fronts of trials: pure logic, no plotting, no MLflow.

Dominance (maximise gain, minimise cost): trial q dominates p when gain_q >= gain_p and
cost_q <= cost_p with at least one strict. Exact duplicates therefore do not dominate each other
and are both on the front. Rows with a missing (NaN) gain or cost are never on a front and
dominate nothing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

GAIN = "medmcqa_gain_pp"  # maximise (contracts.md)
COST = "forgetting"  # minimise (contracts.md)


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


def pareto_mask(df: pd.DataFrame, gain: str = GAIN, cost: str = COST,
                by: str | None = None) -> pd.Series:
    """Boolean Series (index of df): True where the row is non-dominated.

    With `by` (e.g. "method"), each group of rows gets its own front; rows whose `by` value is
    missing form no front (False).
    """
    res = pd.Series(False, index=df.index, dtype=bool)
    if df.empty:
        return res
    if by is None:
        groups = [(None, df)]
    else:
        groups = list(df.groupby(by, sort=True, dropna=True))
    for _, sub in groups:
        g = pd.to_numeric(sub[gain], errors="coerce").to_numpy(dtype=float)
        c = pd.to_numeric(sub[cost], errors="coerce").to_numpy(dtype=float)
        res.loc[sub.index] = _mask(g, c)
    return res


def front_order(df: pd.DataFrame, gain: str = GAIN, cost: str = COST) -> pd.DataFrame:
    """The front's rows sorted for a step line: cost ascending (gain then ascends too)."""
    front = df[pareto_mask(df, gain, cost)]
    return front.sort_values([cost, gain], ascending=[True, True], kind="stable")
