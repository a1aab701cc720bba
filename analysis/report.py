"""table.md: the paper-style table (base row, best trials per method), exclusions, selectors, memory."""
from __future__ import annotations

import math

import pandas as pd

from analysis.fronts import COST, GAIN, pareto_mask
from analysis.runs import Sweep
from analysis.summary import (CONTROLS, METHOD_ORDER, SELECTOR_ORDER, aggregate, best, by_value,
                              ordered, with_retrofit_deltas)

MAX_LISTED = 4  # trials listed per table row; the rest are in fronts.csv / MLflow
HEAD = ["row", "method", "config", "n", "MedMCQA acc (%)", "Δ (pp)", "WikiText ppl", "Δ (%)",
        "TriviaQA acc (%)", "Δ (pp)", "forgetting", "trials (MLflow run)"]
N_KEYS, TOP_T = "params.smf.n_keys", "params.smf.top_t"


def num(mean, std=math.nan, n: int = 1, scale: float = 1.0, digits: int = 1,
        sign: bool = False) -> str:
    """'12.3', '+1.2 ± 0.4' (std shown when n > 1), '—' when missing."""
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    s = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    if n > 1 and std is not None and math.isfinite(float(std)):
        s += f" ± {std * scale:.{digits}f}"
    return s


def _text(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)


def _md_table(head: list, rows: list) -> list:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return out


def _cells(r: pd.Series, pre: str = "", post: str = "") -> list:
    """Probe cells of an aggregate row; pre='retrofit/' reads the retrofit checkpoint's probes."""
    def ms(col, **kw):
        return num(r.get(col), r.get(col + ":std"), int(r["n"]), **kw)
    cells = []
    for t, kind in (("medmcqa", "acc"), ("wikitext", "ppl"), ("triviaqa", "acc")):
        value = f"retrofit/{t}" if pre else f"{t}/after"
        d = f"retrofit/{t}/delta" if pre else f"{t}/delta"
        cells += [ms(value, scale=100 if kind == "acc" else 1, digits=1 if kind == "acc" else 2),
                  ms(d, digits=1 if kind == "acc" else 2, sign=True)]
    return cells


def _listed(r: pd.Series) -> str:
    items = r["trials"]
    if len(items) <= MAX_LISTED:
        return ", ".join(items)
    return ", ".join(items[:MAX_LISTED - 1]) + f", … and {len(items) - MAX_LISTED + 1} more"


def _main_rows(sweep: Sweep, agg: pd.DataFrame, methods: list, df: pd.DataFrame,
               budget: float) -> list:
    b = sweep.base
    base_from = f"parent run `{sweep.parent_run_id}`" if sweep.base_source == "parent run" \
        else (sweep.base_source or "not logged")
    rows = [["base model", "—", "—", "—",
             num(b.get("medmcqa"), scale=100), "0", num(b.get("wikitext"), digits=2), "0",
             num(b.get("triviaqa"), scale=100), "0", "0", base_from]]
    for m in methods:
        if agg.empty or not (agg["method"] == m).any():
            n_bad = int((df["method"] == m).sum())
            rows.append([f"{m}: no finished trials", m, "—", "—"] + ["—"] * 7
                        + [f"{n_bad} trial(s) excluded"])
            continue
        picks = [("best gain", best(agg, m)), (f"best with forgetting ≤ {budget:g}",
                                               best(agg, m, budget))]
        for label, r in picks:
            if r is None:
                rows.append([f"{m}: {label}", m, "none within budget", "—"] + ["—"] * 8)
                continue
            seeds = int(r["n"])
            rows.append([f"{m}: {label}", m, r["config"] or "—", seeds] + _cells(r)
                        + [num(r[COST], r.get(COST + ":std"), seeds, digits=2), _listed(r)])
            if pd.notna(r.get("retrofit/medmcqa")) or pd.notna(r.get("retrofit/triviaqa")):
                rows.append(["  ↳ its retrofit checkpoint", m, "", seeds] + _cells(r, "retrofit/")
                            + ["—", "(retrofit probes, before the SMF stage)"])
    return rows


def _selector_rows(smf: pd.DataFrame, budget: float) -> list:
    if smf.empty or smf["selector"].isna().all():
        return []
    on_front = smf[pareto_mask(smf)]
    agg = aggregate(smf)
    rows = []
    stats = by_value(smf, "selector").set_index("selector")
    for s in ordered(smf["selector"].unique(), SELECTOR_ORDER):
        r = stats.loc[s]
        n = int(r["trials"])
        sub = agg[(agg["selector"] == s) & (agg[COST] <= budget)]
        top = sub.sort_values([GAIN, COST], ascending=[False, True]).iloc[0] if len(sub) else None
        rows.append([s, "control" if s in CONTROLS else "selector", n, int(r["configs"]),
                     num(r[GAIN], r[GAIN + ":std"], n, digits=2, sign=True),
                     num(r[COST], r[COST + ":std"], n, digits=2),
                     num(r["triviaqa/delta"], r["triviaqa/delta:std"], n, digits=2, sign=True),
                     num(r["wikitext/delta"], r["wikitext/delta:std"], n, digits=2, sign=True),
                     "—" if top is None else f"{num(top[GAIN], digits=2, sign=True)}"
                                             f" ({top['config']})",
                     int((on_front["selector"] == s).sum())])
    return rows


def _value_rows(smf: pd.DataFrame, col: str, slots: bool) -> list:
    if col not in smf or smf[col].isna().all():
        return []
    rows = []
    for _, r in by_value(smf, col).iterrows():
        n = int(r["trials"])
        v = r[col]
        label = f"{v:g}" if isinstance(v, float) else str(v)
        extra = [f"{int(v) ** 2:,}"] if slots else []
        rows.append([label] + extra + [n, num(r[GAIN], r[GAIN + ":std"], n, digits=2, sign=True),
                                       num(r[COST], r[COST + ":std"], n, digits=2)])
    return rows


def markdown(sweep: Sweep, fin: pd.DataFrame, counts: dict, budget: float) -> str:
    df = sweep.trials
    fin = with_retrofit_deltas(fin, sweep.base)
    agg = aggregate(fin)
    methods = ordered(df["method"].unique(), METHOD_ORDER)
    excluded = {k: v for k, v in counts.items() if k != "finished"}
    lines = [f"# Pareto summary: {sweep.experiment_name}", "",
             f"- store: `{sweep.tracking_uri}`, experiment id {sweep.experiment_id}, parent run "
             f"`{sweep.parent_run_id or 'none found'}`",
             f"- trials: {counts['finished']} finished (used)"
             + "".join(f", {v} {k} (excluded)" for k, v in excluded.items()),
             "- objectives: MedMCQA gain in pp (maximise) and forgetting (minimise; by default the"
             " mean of the TriviaQA drop in pp and the WikiText perplexity increase in %);"
             f" forgetting budget ≤ {budget:g}",
             "- a row is one config (all params but the seed): mean ± std over its n trials"
             " (seeds); 'best' = highest mean gain (ties: lower forgetting)"]
    hashes = df["spec_hash"].dropna().unique()
    if len(hashes) > 1 or (sweep.spec_hash and len(hashes) == 1 and hashes[0] != sweep.spec_hash):
        lines.append(f"- **warning**: trials come from spec hashes {sorted(hashes)}"
                     f" (sweep.json: {sweep.spec_hash}); their numbers may not be comparable")
    lines += ["", "## Base model and best trials per method", ""]
    lines += _md_table(HEAD, _main_rows(sweep, agg, methods, df, budget))
    bad = df.drop(index=fin.index)
    lines += ["", f"## Excluded trials ({len(bad)})", ""]
    if len(bad):
        lines += _md_table(["trial", "method", "status", "reason", "MLflow run"],
                           [[t, _text(m), s, _text(r), f"`{rid}`"] for t, m, s, r, rid in
                            zip(bad["trial_id"], bad["method"], bad["status"],
                                bad["failure_reason"], bad["run_id"])])
    else:
        lines.append("None.")
    smf = fin[fin["algorithm"] == "smf"]        # every SMF arm (the study's recipe, ours, zero_values)
    lines += ["", "## Row selectors (SMF)", "",
              "All finished SMF trials per selector (configs differ between trials, so read"
              " differences of means as indicative); tf and random are controls.", ""]
    rows = _selector_rows(smf, budget)
    lines += _md_table(["selector", "kind", "trials", "configs", "gain (pp)", "forgetting",
                        "TriviaQA Δ (pp)", "WikiText Δ (%)",
                        f"best gain, forgetting ≤ {budget:g}", "trials on SMF front"], rows) \
        if rows else ["No finished SMF trials."]
    lines += ["", "## Memory size and top-t (SMF)", ""]
    rows = _value_rows(smf, N_KEYS, slots=True)
    lines += _md_table(["smf.n_keys", "slots per layer", "trials", "gain (pp)", "forgetting"],
                       rows) + [""] if rows else ["No SMF trials with smf.n_keys.", ""]
    rows = _value_rows(smf, TOP_T, slots=False)
    lines += _md_table(["smf.top_t", "trials", "gain (pp)", "forgetting"], rows) \
        if rows else ["No SMF trials with smf.top_t."]
    return "\n".join(lines) + "\n"
