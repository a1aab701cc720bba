"""table.md: the paper-style table (base row, best trials per method), exclusions, selectors, memory."""
from __future__ import annotations

import math

import pandas as pd

from analysis.fronts import nondominated, order_best_first
from analysis.runs import Sweep, feasible, stopped_early
from analysis.summary import (CONTROLS, METHOD_ORDER, SELECTOR_ORDER, aggregate, best, by_value,
                              ordered, within, with_retrofit_deltas)
from smf_sweep.objectives import COST_S, FORGETTING, HYPERVOLUME, Objectives, task_label

MAX_LISTED = 4  # trials listed per table row; the rest are in fronts.csv / MLflow
N_KEYS, TOP_T = "params.smf.n_keys", "params.smf.top_t"


def head(obj: Objectives) -> list:
    """The main table's columns: per probe its value (accuracies in %) and Δ, then forgetting (under
    nats: each forgetting probe's component)."""
    cols = ["row", "method", "config", "n"]
    for t, p in obj.probes:
        metric = p.metric or ("acc" if p.higher_is_better else "ppl")
        cols += [f"{task_label(t)} {metric}" + (" (%)" if p.higher_is_better else ""),
                 "Δ (pp)" if p.higher_is_better else "Δ (%)"]
    return cols + [c if c == FORGETTING else obj.label(c) for c in obj.forgetting_metrics()] + ["trials (MLflow run)"]


HEAD = head(Objectives())  # the default objectives' columns


def num(mean, std=math.nan, n: int = 1, scale: float = 1.0, digits: int = 1,
        sign: bool = False) -> str:
    """'12.3', '+1.2 ± 0.4' (std shown when n > 1), '—' when missing."""
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    s = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    if n > 1 and std is not None and math.isfinite(float(std)):
        s += f" ± {std * scale:.{digits}f}"
    return s


def _reasons(bad: pd.DataFrame) -> list:
    """Why each excluded trial is excluded: its failure reason, or where MO-ASHA stopped it."""
    stopped = stopped_early(bad)
    rung = bad.get("stopped_at_rung", pd.Series(index=bad.index, dtype=float))
    step = bad.get("stopped_at_step", pd.Series(index=bad.index, dtype=float)).fillna(rung)
    return [f"stopped early at rung {r:g} (step {st:g})" if s else f
            for s, r, st, f in zip(stopped, rung, step, bad["failure_reason"])]


def _text(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)


def _md_table(head: list, rows: list) -> list:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return out


def _cells(r: pd.Series, obj: Objectives, pre: str = "") -> list:
    """Probe cells of an aggregate row; pre='retrofit/' reads the retrofit checkpoint's probes."""
    def ms(col, **kw):
        return num(r.get(col), r.get(col + ":std"), int(r["n"]), **kw)
    cells = []
    for t in obj.tasks:
        acc = obj.higher_is_better(t)
        value = f"retrofit/{t}" if pre else f"{t}/after"
        d = f"retrofit/{t}/delta" if pre else f"{t}/delta"
        cells += [ms(value, scale=100 if acc else 1, digits=1 if acc else 2),
                  ms(d, digits=1 if acc else 2, sign=True)]
    return cells


def _listed(r: pd.Series) -> str:
    items = r["trials"]
    if len(items) <= MAX_LISTED:
        return ", ".join(items)
    return ", ".join(items[:MAX_LISTED - 1]) + f", … and {len(items) - MAX_LISTED + 1} more"


def _main_rows(sweep: Sweep, agg: pd.DataFrame, methods: list, df: pd.DataFrame,
               budget: float) -> list:
    b, obj = sweep.base, sweep.objectives
    base_from = f"parent run `{sweep.parent_run_id}`" if sweep.base_source == "parent run" \
        else (sweep.base_source or "not logged")
    width = len(head(obj))
    cells = []
    for t in obj.tasks:
        acc = obj.higher_is_better(t)
        cells += [num(b.get(t), scale=100 if acc else 1, digits=1 if acc else 2), "0"]
    k = len(obj.forgetting_metrics())
    rows = [["base model", "—", "—", "—"] + cells + ["0"] * k + [base_from]]
    first = obj.short(obj.names[0])
    for m in methods:
        if agg.empty or not (agg["method"] == m).any():
            n_bad = int((df["method"] == m).sum())
            rows.append([f"{m}: no finished trials", m, "—", "—"] + ["—"] * (width - 5)
                        + [f"{n_bad} trial(s) excluded"])
            continue
        picks = [(f"best {first}", best(agg, m, obj=obj)),
                 (f"best with forgetting ≤ {budget:g}", best(agg, m, budget, obj))]
        for label, r in picks:
            if r is None:
                rows.append([f"{m}: {label}", m, "none within budget", "—"] + ["—"] * (width - 4))
                continue
            seeds = int(r["n"])
            rows.append([f"{m}: {label}", m, r["config"] or "—", seeds] + _cells(r, obj)
                        + [num(r.get(c), r.get(c + ":std"), seeds, digits=4 if c.endswith("_nats") else 2)
                           for c in obj.forgetting_metrics()] + [_listed(r)])
            if any(pd.notna(r.get(f"retrofit/{t}")) for t in obj.tasks):
                rows.append(["  ↳ its retrofit checkpoint", m, "", seeds] + _cells(r, obj, "retrofit/")
                            + ["—"] * k + ["(retrofit probes, before the SMF stage)"])
    return rows


def _stat(r, c: str, n: int) -> str:
    """Mean ± std of a column; signed unless it is forgetting."""
    return num(r[c], r[c + ":std"], n, digits=2, sign=c != FORGETTING)


def _label(obj: Objectives, c: str) -> str:
    return obj.label(c) if c != FORGETTING else "forgetting"


def _selector_rows(smf: pd.DataFrame, budget: float, obj: Objectives) -> list:
    if smf.empty or smf["selector"].isna().all():
        return []
    on_front = smf[nondominated(smf, obj.senses)]
    agg = aggregate(smf, obj)
    rows = []
    stats = by_value(smf, "selector", obj).set_index("selector")
    first = obj.names[0]
    for s in ordered(smf["selector"].unique(), SELECTOR_ORDER):
        r = stats.loc[s]
        n = int(r["trials"])
        ok = agg[(agg["selector"] == s)]
        sub = order_best_first(ok[within(ok, budget, obj) & feasible(ok, obj)], obj.senses)
        top = sub.iloc[0] if len(sub) else None
        rows.append([s, "control" if s in CONTROLS else "selector", n, int(r["configs"])]
                    + [_stat(r, c, n) for c in obj.metrics()]
                    + ["—" if top is None else f"{num(top[first], digits=2, sign=True)} ({top['config']})",
                       int((on_front["selector"] == s).sum())])
    return rows


def _value_rows(smf: pd.DataFrame, col: str, slots: bool, obj: Objectives) -> list:
    if col not in smf or smf[col].isna().all():
        return []
    rows = []
    for _, r in by_value(smf, col, obj).iterrows():
        n = int(r["trials"])
        v = r[col]
        label = f"{v:g}" if isinstance(v, float) else str(v)
        extra = [f"{int(v) ** 2:,}"] if slots else []
        rows.append([label] + extra + [n] + [_stat(r, c, n) for c in obj.metrics()[:2]])
    return rows


def _progress_lines(sweep: Sweep, df: pd.DataFrame) -> list:
    """The hypervolume after the last search trial and the compute spent, per method too."""
    obj, prog, out = sweep.objectives, sweep.progress, []
    hv = pd.to_numeric(prog.get(HYPERVOLUME, pd.Series(dtype=float)), errors="coerce").dropna()
    if len(hv):
        ref = ", ".join(f"{n} {v:g}" for n, v in obj.reference if v is not None)     # --cost's has none
        out.append(f"- hypervolume of the search's front: {hv.iloc[-1]:.4g} after {int(prog['trials'].iloc[-1])} "
                   f"ended trials (reference point {ref}; {sweep.progress_source}; hypervolume.png)")
    if COST_S in df and df[COST_S].notna().any():
        per = df.groupby("method")[COST_S].sum()
        out.append(f"- compute: {df[COST_S].sum() / 3600:.3g} device-hours over all trial runs (finished and failed; "
                   + ", ".join(f"{m} {v / 3600:.3g}" for m, v in per.items()) + ")")
    return out


def markdown(sweep: Sweep, fin: pd.DataFrame, counts: dict, budget: float) -> str:
    df, obj = sweep.trials, sweep.objectives
    fin = with_retrofit_deltas(fin, sweep.base, obj)
    agg = aggregate(fin, obj)
    methods = ordered(df["method"].unique(), METHOD_ORDER)
    excluded = {k: v for k, v in counts.items() if k != "finished"}
    first, rest = obj.names[0], obj.names[1:]
    ties = ", ".join(f"{'higher' if obj.mode(n) == 'max' else 'lower'} {obj.short(n)}" for n in rest)
    lines = [f"# Pareto summary: {sweep.experiment_name}", "",
             f"- store: `{sweep.tracking_uri}`, experiment id {sweep.experiment_id}, parent run "
             f"`{sweep.parent_run_id or 'none found'}`",
             f"- trials: {counts['finished']} finished (used)"
             + "".join(f", {v} {k} (excluded)" for k, v in excluded.items()),
             f"- objectives: {obj.describe()} (as recorded: {sweep.objectives_source});"
             f" forgetting = {obj.forgetting_definition()}; forgetting budget ≤ {budget:g}"
             + ("" if obj.scalar else " for each probe in its unit (" + ", ".join(
                 f"{obj.short(c)} ≤ {obj.budget_for(c, budget):.4g}" for c in obj.forgetting_metrics()) + ")"),
             "- a row is one config (all params but the seed): mean ± std over its n trials"
             f" (seeds); 'best' = {'highest' if obj.mode(first) == 'max' else 'lowest'} mean"
             f" {obj.short(first)}" + (f" (ties: {ties})" if ties else "")]
    if obj.constraints:
        bad = int((~feasible(fin, obj)).sum())
        lines.append(f"- constraints: {', '.join(str(c) for c in obj.constraints)} — {bad} of {len(fin)} finished"
                     " trials infeasible (shown hollow; on no front, never 'best')")
    lines += _progress_lines(sweep, df)
    hashes = df["spec_hash"].dropna().unique()
    if len(hashes) > 1 or (sweep.spec_hash and len(hashes) == 1 and hashes[0] != sweep.spec_hash):
        lines.append(f"- **warning**: trials come from spec hashes {sorted(hashes)}"
                     f" (sweep.json: {sweep.spec_hash}); their numbers may not be comparable")
    lines += ["", "## Base model and best trials per method", ""]
    lines += _md_table(head(obj), _main_rows(sweep, agg, methods, df, budget))
    bad = df.drop(index=fin.index)
    lines += ["", f"## Excluded trials ({len(bad)})", ""]
    if len(bad):
        lines += _md_table(["trial", "method", "status", "reason", "MLflow run"],
                           [[t, _text(m), s, _text(r), f"`{rid}`"] for t, m, s, r, rid in
                            zip(bad["trial_id"], bad["method"], bad["status"], _reasons(bad), bad["run_id"])])
    else:
        lines.append("None.")
    smf = fin[fin["algorithm"] == "smf"]        # every SMF arm (the study's recipe, ours, zero_values)
    lines += ["", "## Row selectors (SMF)", "",
              "All finished SMF trials per selector (configs differ between trials, so read"
              " differences of means as indicative); tf and random are controls.", ""]
    rows = _selector_rows(smf, budget, obj)
    lines += _md_table(["selector", "kind", "trials", "configs"] + [_label(obj, c) for c in obj.metrics()]
                       + [f"best {obj.short(first)}, forgetting ≤ {budget:g}", "trials on SMF front"], rows) \
        if rows else ["No finished SMF trials."]
    lines += ["", "## Memory size and top-t (SMF)", ""]
    two = [_label(obj, c) for c in obj.metrics()[:2]]
    rows = _value_rows(smf, N_KEYS, True, obj)
    lines += _md_table(["smf.n_keys", "slots per layer", "trials"] + two,
                       rows) + [""] if rows else ["No SMF trials with smf.n_keys.", ""]
    rows = _value_rows(smf, TOP_T, False, obj)
    lines += _md_table(["smf.top_t", "trials"] + two, rows) \
        if rows else ["No SMF trials with smf.top_t."]
    return "\n".join(lines) + "\n"
