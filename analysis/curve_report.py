"""table.md's curves section: checkpoint-level fronts, forgetting at equal gain, KL drift.

`analyse` computes everything once from the curve points (analysis.curves.load); `markdown` writes
it, curve_plots draws it. Without curve metrics the section is one line saying so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis import curves, equal_gain
from analysis.report import _md_table, num
from smf_sweep.objectives import GAIN, Objectives

MAX_FRONT = 10  # checkpoints listed per method's front; all are in curve_fronts.csv
MAX_TRIALS = 4  # chosen trials listed per equal-gain row; all are in equal_gain.csv
TITLE = "## Learning–forgetting curves (checkpoints)"


@dataclass
class Comparison:
    """Forgetting at equal gain, a seed's best trial chosen by `key` (curves.equal_gain_plan)."""
    key: str
    cols: list[str]
    best: pd.DataFrame      # equal_gain.best_per_seed
    summary: pd.DataFrame   # equal_gain.summarise over [key, *cols]


@dataclass
class CurveAnalysis:
    points: pd.DataFrame                 # curves.load
    n_trials: int                        # finished trials considered (with curves or not)
    front: pd.DataFrame                  # curves.fronts
    ranked_on: dict                      # the objectives checkpoints are ranked on, {name: mode}
    left_out: list                       # objectives without curves
    gains: list[float]
    gains_source: str
    comparisons: list[Comparison] = field(default_factory=list)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)
    agreement: pd.DataFrame = field(default_factory=pd.DataFrame)   # curves.agreement (with the trials' end points)


def analyse(points: pd.DataFrame, n_trials: int, obj: Objectives, gains: list[float] | None = None,
            trials: pd.DataFrame | None = None) -> CurveAnalysis:
    """Fronts, equal-gain comparisons (at `gains`, default equal_gain.default_gains), drift and, with
    the `trials` frame (their end points), the subset's agreement with the full probes."""
    source = "given with --gains"
    if gains is None:
        gains, source = equal_gain.default_gains(points), ("quartiles of the trials' highest curve gains, rounded;"
                                                           " choose with --gains")
    ranked_on, left_out = curves.senses(points, obj)
    comps = []
    for key, cols in curves.equal_gain_plan(obj):
        best = equal_gain.best_per_seed(points, gains, key, cols)
        comps.append(Comparison(key, cols, best, equal_gain.summarise(best, points, gains, [key, *cols])))
    target = obj.forgetting_metrics()[0]
    agree = curves.agreement(points, trials) if trials is not None else pd.DataFrame()
    return CurveAnalysis(points, n_trials, curves.fronts(points, obj), ranked_on, left_out, gains, source,
                         comps, curves.drift(points, target), agree)


def label(obj: Objectives, c: str) -> str:
    return "KL(base‖model) (nats/token)" if c == curves.KL else obj.label(c)


def _digits(c: str) -> int:
    return 4 if c.endswith("_nats") or c == curves.KL else 2


def _ci(mean: float, half: float, c: str) -> str:
    if not math.isfinite(mean):
        return "—"
    d = _digits(c)
    return f"{mean:.{d}f}" + (f" ± {half:.{d}f}" if math.isfinite(half) else "")


def _trial(tid, rid) -> str:
    return f"{tid} (`{rid}`)"


def _front_rows(a: CurveAnalysis, cols: list[str]) -> list:
    rows = []
    for m, g in a.front.groupby("front", sort=False):
        for _, r in g.head(MAX_FRONT).iterrows():
            rows.append([m, _trial(r["trial_id"], r["run_id"]), r["selector"] if isinstance(r["selector"], str) else "—",
                         "—" if pd.isna(r["seed"]) else int(r["seed"]), r["config"] or "—", int(r["step"])]
                        + [num(r[c], digits=_digits(c)) for c in cols])
        if len(g) > MAX_FRONT:
            rows.append([m, f"… and {len(g) - MAX_FRONT} more (curve_fronts.csv)"] + [""] * (4 + len(cols)))
    return rows


def _equal_gain_rows(c: Comparison) -> list:
    rows = []
    for _, r in c.summary.iterrows():
        n = int(r["n"])
        reached = f"{n} of {r['seeds']}" + (" (one seed: no interval)" if n == 1 else "")
        chosen = [f"{t}@{s:.1f}" for t, s in r["trials"]]
        listed = ", ".join(chosen[:MAX_TRIALS]) + (f", … {len(chosen) - MAX_TRIALS} more" if len(chosen) > MAX_TRIALS
                                                   else "")
        rows.append([r["method"], r["selector"] if isinstance(r["selector"], str) else "—", f"{r[GAIN]:g}", reached]
                    + [_ci(r[x], r[x + ":ci"], x) for x in [c.key, *c.cols]] + [listed or "—"])
    return rows


def markdown(a: CurveAnalysis, obj: Objectives) -> str:
    """The curves section of table.md (starts with a blank line)."""
    p = a.points
    if p.empty:
        return "\n".join(["", TITLE, "", none_note(a.n_trials)]) + "\n"
    n_runs = p["run_id"].nunique()
    lines = ["", TITLE, "",
             f"- {n_runs} of {a.n_trials} finished trials logged curves: {len(p)} evaluation points (step = the"
             f" trial's optimizer step, 0 = before its first; steps {int(p['step'].min())}–{int(p['step'].max())})."
             " Values are on a fixed small subset of each probe's data, relative to the base model on that subset:"
             " close to, not equal to, the final probes above.",
             "- curves.png: each trial's path in step order per method (end point large), the checkpoint front,"
             " KL drift against steps and forgetting against KL drift. Columns read: `curve/<name>`"
             " (see analysis/README.md)."]
    ranked = ", ".join(f"{obj.short(n)} {obj.arrow(n)}" for n in a.ranked_on)
    lines += ["", "### Checkpoint-level front per method", ""]
    if len(a.ranked_on) < 2:
        lines.append(f"Fewer than two objectives have curves ({ranked or 'none'}): no checkpoint front.")
    else:
        lines.append(f"Every evaluation point of every trial is a candidate; non-dominated on {ranked}"
                     + (f" ({', '.join(a.left_out)} left out: no per-checkpoint value)" if a.left_out else "")
                     + ("; points violating the constraints excluded" if obj.constraints else "")
                     + f"; best {obj.short(next(iter(a.ranked_on)))} first.")
        lines.append("")
        cols = list(dict.fromkeys([*a.ranked_on, curves.KL]))
        if a.front.empty:
            lines.append("No checkpoint meets the constraints.")
        else:
            lines += _md_table(["front", "trial (MLflow run)", "selector", "seed", "config", "step"]
                               + [label(obj, c) for c in cols], _front_rows(a, cols))
    lines += ["", "### Forgetting at equal gain", "",
              "At each gain level g each trial's curve is read where its gain first reaches g (linear"
              " interpolation in gain between the last point below g and the first at or above it; a trial that"
              " never reaches g counts nothing there). Per method (SMF per selector) and seed the trial with the"
              " lowest forgetting there is kept, with its per-probe values; then mean ± 95 % CI over seeds"
              " (Student t, n − 1 dof; one seed: no interval). trial@step: each seed's chosen trial and the"
              " (interpolated) step at which it reached g.",
              ""]
    if not a.gains:
        lines.append("No trial's gain rose above 0 along its curve: no gain level to compare at.")
    else:
        lines.append(f"Gain levels: {', '.join(f'{g:g}' for g in a.gains)} pp ({a.gains_source}).")
    for c in a.comparisons if a.gains else []:
        if len(a.comparisons) > 1:
            lines += ["", f"#### Chosen by {label(obj, c.key)} (nats: no single forgetting)"]
        lines.append("")
        lines += _md_table(["method", "selector", "gain (pp)", "seeds reaching g"]
                           + [label(obj, x) for x in [c.key, *c.cols]] + ["trial@step per seed"], _equal_gain_rows(c))
    if not a.agreement.empty:
        lines += ["", "### The curve subset against the full probes", "",
                  "A finished trial's last evaluation point is its trained model on the subset; its end point (above)"
                  " is the same model on the whole probe. A subset that samples the probe reads ratios near 1 (its"
                  " noise aside); the first items of a probe listed in some order need not (`curves.subset: first`)."
                  f" Ratios over the trials whose end value is at least {curves.NEAR_ZERO:g} in size.", ""]
        lines += _md_table(["metric", "trials", "median curve / end", "Spearman ρ", "mean curve − end"],
                           [[label(obj, r["metric"]), int(r["trials"]),
                             f"{num(r['median_ratio'], digits=2)} ({int(r['ratio_trials'])} trials)",
                             num(r["spearman"], digits=3), num(r["mean_diff"], digits=2)]
                            for _, r in a.agreement.iterrows()])
    lines += ["", "### KL drift as a predictor of forgetting", ""]
    if a.drift.empty:
        lines.append("No kl_general curves.")
    else:
        target = obj.short(obj.forgetting_metrics()[0])
        lines += _md_table(["method", "checkpoints", f"Spearman ρ(KL, {target})", f"Pearson r(KL, {target})"],
                           [[r["method"], int(r["points"]), num(r["spearman"], digits=2), num(r["pearson"], digits=2)]
                            for _, r in a.drift.iterrows()])
    return "\n".join(lines) + "\n"


def none_note(n_trials: int) -> str:
    return (f"No curve metrics (`curve/*`) in the {n_trials} finished trials (curves off): no curves.png,"
            " equal_gain.png or checkpoint fronts.")
