"""Forgetting at equal gain: each method's least forgetting once it has learned as much as the others.

Pure logic on the long frame of curve points (analysis.curves.load: one row per trial run and
evaluation step); no MLflow, no plotting. The study compares methods at "the same level of
new-knowledge acquisition": for each gain level g (pp of MedMCQA),

1. per trial, its curve in step order is read at the FIRST point where gain reaches g (`at_gain`),
   interpolating every column linearly between the last point below g and the first at or above it;
2. per method (SMF split by selector) and seed, the trial with the lowest forgetting there is that
   seed's value (`best_per_seed`), carrying that trial's per-probe values;
3. over seeds: mean ± the 95 % Student-t half-width, n − 1 degrees of freedom (`summarise`).

The t quantile is computed here (`t_quantile`, exact for integer degrees of freedom) so that no new
dependency is needed.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from smf_sweep.objectives import GAIN

BY = ("method", "selector")  # a row of the comparison: the arm, and for SMF its selector
LEVEL = 0.95                 # two-sided confidence of the intervals over seeds


def at_gain(curve: pd.DataFrame, g: float, cols: list[str], gain: str = GAIN) -> dict | None:
    """One trial's curve read where its gain FIRST reaches g, or None when it never does.

    Rule: rows are sorted by `step`; rows without a finite gain are skipped. Let i be the first row
    with gain ≥ g. When i is the first row (the curve starts at or above g), the values are that
    row's. Otherwise every column c of `cols` (and `step`) is interpolated linearly in gain between
    row i−1 (the last point below g before the crossing) and row i:
    c = c[i−1] + w·(c[i] − c[i−1]), w = (g − gain[i−1]) / (gain[i] − gain[i−1]).
    A non-monotone curve counts its first crossing only; a NaN at either end gives NaN.
    Returns {"step": interpolated step, gain: g, **{c: value}}.
    """
    c = curve.sort_values("step", kind="stable")
    c = c[np.isfinite(pd.to_numeric(c[gain], errors="coerce").to_numpy(dtype=float))]
    gains = c[gain].to_numpy(dtype=float)          # (n,)
    hit = np.flatnonzero(gains >= g)
    if hit.size == 0:
        return None
    i = int(hit[0])
    a, b = c.iloc[i - 1 if i else i], c.iloc[i]
    w = (g - gains[i - 1]) / (gains[i] - gains[i - 1]) if i else 0.0
    out = {col: float(a[col]) + w * (float(b[col]) - float(a[col])) for col in ["step", *cols]}
    return {**out, gain: float(g)}


def best_per_seed(points: pd.DataFrame, gains: list[float], key: str, cols: list[str],
                  gain: str = GAIN) -> pd.DataFrame:
    """Per (method, selector, seed, gain level): the trial with the lowest `key` (forgetting) at
    that level (`at_gain`), with its `cols` (per-probe values) and interpolated step.

    Trials that never reach a level give nothing there; a trial whose `key` is NaN at the level is
    never chosen. Ties: the earlier (interpolated) step, then the run id. A missing seed (NaN) is
    one seed of its own; a missing selector (LoRA, full FT) is one group. Columns: method,
    selector, seed, gain level `gain`, run_id, trial_id, step, key, *cols.
    """
    rows = []
    keys = [*BY, "seed", "run_id", "trial_id"]
    for (m, s, seed, rid, tid), curve in points.groupby(keys, sort=False, dropna=False):
        for g in gains:
            r = at_gain(curve, g, [key, *cols], gain)
            if r is not None and math.isfinite(r[key]):
                rows.append({"method": m, "selector": s, "seed": seed, "run_id": rid, "trial_id": tid,
                             **r, gain: float(g)})
    out_cols = [*BY, "seed", gain, "run_id", "trial_id", "step", key, *cols]
    if not rows:
        return pd.DataFrame(columns=out_cols)
    df = pd.DataFrame(rows)[out_cols].sort_values([key, "step", "run_id"], kind="stable")
    best = df.groupby([*BY, "seed", gain], sort=False, dropna=False).head(1)
    return best.sort_values([*BY, gain, "seed"], kind="stable", na_position="first").reset_index(drop=True)


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t(p, df) for p in (0.5, 1) and an integer df ≥ 1, by bisection on the
    exact two-sided CDF (Abramowitz & Stegun 26.7.3-4). t(0.975, 1) = 12.706, 2 → 4.303, 3 → 3.182."""
    if not (0.5 < p < 1) or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    df, level = int(df), 2 * p - 1               # P(|T| <= t) = level
    lo, hi = 0.0, math.pi / 2                     # theta = atan(t / sqrt(df))
    for _ in range(200):
        th = (lo + hi) / 2
        if _two_sided(th, df) < level:
            lo = th
        else:
            hi = th
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def _two_sided(th: float, df: int) -> float:
    """P(|T| <= sqrt(df)·tan(th)) for T ~ t(df), df an integer."""
    s, c2 = math.sin(th), math.cos(th) ** 2
    if df % 2:  # odd: (2/π)[θ + sinθ(cosθ + (2/3)cos³θ + … + (2·4…(df−3))/(3·5…(df−2)) cos^(df−2)θ)]
        term = total = math.cos(th) if df > 1 else 0.0
        for j in range(1, df - 2, 2):
            term *= (j + 1) / (j + 2) * c2
            total += term
        return 2 / math.pi * (th + s * total)
    term = total = 1.0  # even: sinθ(1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + … up to cos^(df−2)θ)
    for j in range(0, df - 3, 2):
        term *= (j + 1) / (j + 2) * c2
        total += term
    return s * total


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % Student-t interval, n) of the finite values: half-width =
    t(0.975, n−1)·s/√n with s the sample standard deviation (n−1); NaN when n < 2 (no interval)."""
    v = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = t_quantile((1 + LEVEL) / 2, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return float(v.mean()), half, n


def summarise(best: pd.DataFrame, points: pd.DataFrame, gains: list[float], cols: list[str],
              gain: str = GAIN) -> pd.DataFrame:
    """One row per (method, selector) with curves and gain level: `seeds` = the group's seeds with
    curves, `n` = those that reached the level, and for each column c of `cols`: c (mean over the
    seeds' best), `c:ci` (95 % half-width; NaN for n < 2); `trials` = [(trial id, step)] chosen."""
    rows = []
    for (m, s), grp in points.groupby(list(BY), sort=False, dropna=False):
        seeds = grp["seed"].nunique(dropna=False)
        mine = best[_same(best["method"], m) & _same(best["selector"], s)]
        for g in gains:
            at = mine[mine[gain] == g]
            r = {"method": m, "selector": s, gain: float(g), "seeds": int(seeds), "n": len(at),
                 "trials": list(zip(at["trial_id"], at["step"]))}
            for c in cols:
                r[c], r[c + ":ci"], _ = mean_ci(at[c]) if c in at else (math.nan, math.nan, 0)
            rows.append(r)
    return pd.DataFrame(rows, columns=[*BY, gain, "seeds", "n", "trials",
                                       *[x for c in cols for x in (c, c + ":ci")]])


def _same(col: pd.Series, v) -> pd.Series:
    return col.isna() if pd.isna(v) else col == v


def default_gains(points: pd.DataFrame, gain: str = GAIN) -> list[float]:
    """Gain levels from the data: the quartiles (25, 50, 75 %) of the trials' highest gains along
    their curves, rounded to a 1-2-5 step of a tenth of the upper quartile; levels ≤ 0 dropped."""
    top = points.groupby("run_id")[gain].max().dropna()
    top = top[top > 0]
    if top.empty:
        return []
    q = np.quantile(top.to_numpy(dtype=float), [0.25, 0.5, 0.75])
    step = _nice(q[-1] / 10)
    levels = sorted({round(round(x / step) * step, 10) for x in q})
    return [float(x) for x in levels if x > 0]


def _nice(x: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above x (x > 0)."""
    e = 10.0 ** math.floor(math.log10(x))
    return max(m * e for m in (1, 2, 5) if m * e <= x * (1 + 1e-12))


def parse_gains(text: str) -> list[float]:
    """'5,10,15' -> [5.0, 10.0, 15.0] (sorted, unique); ValueError on anything else."""
    try:
        out = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"gain levels must be numbers separated by commas (pp), got {text!r}") from None
    if not out or not all(math.isfinite(x) for x in out):
        raise ValueError(f"gain levels must be finite numbers separated by commas (pp), got {text!r}")
    return out
