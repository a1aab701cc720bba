"""Sweeps side by side: hypervolume against trials and compute, the fronts found, and what early
stopping (scheduler.MOASHA) did to each method. Made for issue 16's acceptance (the same search with
and without early stopping, a few search seeds each), usable for any sweeps with the same objectives.

    python -m analysis.compare runs/es_on_s* runs/es_off_s* --out runs/es_compare
    python -m analysis.compare A B --groups "early stopping,baseline"

Writes into --out: compare.png (hypervolume by trials ended and by device-minutes, one line per sweep;
every sweep's finished trials and front) and compare.md (per sweep and per group: trials, compute,
final hypervolume, hypervolume per device-minute and per training token, the groups' ratios; per
search seed, the compute each sweep took to reach the hypervolume all of that seed's sweeps reached;
each method's trials by where they ended; the fronts' best gains; each method's own front's
hypervolume; whether the first group's fronts agree with the second's within its seed spread). A
sweep's group is --groups', else
"early stopping" when its spec (spec.json in the sweep dir) turned it on, else "no early stopping".
Exit status: 0 written, 1 a sweep without hypervolume progress, 2 bad source / unreachable store.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from analysis.source import SourceError, resolve

GROUP_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
LINESTYLES = ["-", "--", ":", "-."]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="sweep directories (each holds sweep.json)")
    p.add_argument("--groups", default=None, metavar="G1,G2,...",
                   help="one group name per SOURCE (default: by the sweep's early_stopping setting)")
    p.add_argument("--out", type=Path, default=Path("compare_out"), help="output directory (default: ./compare_out)")
    p.add_argument("--budget", type=float, default=None,
                   help="forgetting budget for each method's 'best gain within budget' (default: the first "
                        "sweep's hypervolume reference for forgetting, else 1.0)")
    a = p.parse_args(argv)
    if a.groups is not None:
        a.groups = [g.strip() for g in a.groups.split(",")]
        if len(a.groups) != len(a.sources):
            p.error(f"--groups has {len(a.groups)} names for {len(a.sources)} sources")
    return a


def spec_of(sweep_dir: Path | None) -> dict:
    """The sweep's frozen spec (spec.json), {} when the source is not a sweep dir or has none."""
    f = sweep_dir / "spec.json" if sweep_dir else None
    return json.loads(f.read_text()) if f and f.is_file() else {}


def default_group(spec: dict) -> str:
    return "early stopping" if (spec.get("search") or {}).get("early_stopping") else "no early stopping"


def ended_by(df, stopped):
    """Each trial's end as a label: 'finished', 'stopped at <rung>' or its status in lower case."""
    out = df["status"].str.lower()
    out[df["status"] == "FINISHED"] = "finished"
    rungs = df.loc[stopped, "stopped_at_rung"].astype(int).astype(str)
    out[stopped] = "stopped at step " + rungs
    return out


def per_sweep(name: str, group: str, sweep, budget: float, seed=None) -> dict:
    """One sweep's row: seed, trials ended, finished, stopped, compute, hypervolume, per-method ends."""
    from analysis.fronts import nondominated
    from analysis.runs import feasible, finished, stopped_early

    df, obj, prog = sweep.trials, sweep.objectives, sweep.progress
    search = df[df["stage"].fillna("search") == "search"]
    stopped = stopped_early(search)
    fin = finished(search, obj)
    fin = fin[feasible(fin, obj)]
    front = fin[nondominated(fin, obj.senses)] if len(fin) else fin
    hv = float(prog["hypervolume"].dropna().iloc[-1]) if prog["hypervolume"].notna().any() else float("nan")
    compute_min = float(prog["compute_s"].iloc[-1]) / 60.0 if len(prog) else float("nan")
    # training tokens (cost/tokens: what the optimizer saw), blind to start-up and probing
    tokens_m = float(search["cost/tokens"].sum()) / 1e6 if "cost/tokens" in search else float("nan")
    gain, forget = obj.names[0], "forgetting" if "forgetting" in fin else obj.names[1]
    best = {m: (float(g[g[forget] <= budget][gain].max()) if (g[forget] <= budget).any() else float("nan"))
            for m, g in fin.groupby("method")}
    own_hv = {m: obj.hypervolume(g.to_dict("records")) for m, g in fin.groupby("method")}   # each method's front
    return {"sweep": name, "group": group, "experiment": sweep.experiment_name, "seed": seed,
            "ended": len(prog), "finished": len(fin), "stopped": int(stopped.sum()),
            "compute_min": compute_min, "hypervolume": hv, "hv_per_min": hv / compute_min if compute_min else float("nan"),
            "tokens_m": tokens_m, "hv_per_mtok": hv / tokens_m if tokens_m else float("nan"),
            "ends": ended_by(search, stopped).groupby(search["method"]).value_counts().to_dict(),
            "front_methods": sorted(front["method"].unique()), "best_in_budget": best, "hv_by_method": own_hv,
            "progress": prog, "finished_trials": fin, "front": front, "gain": gain, "forget": forget,
            "stopped_trials": search[stopped]}


def compute_to_reach(progress, target: float) -> float:
    """Device-minutes the sweep had spent when its front's hypervolume first reached `target`
    (at the end of the trial that got it there); nan when it never did."""
    hit = progress[progress["hypervolume"] >= target - 1e-9 * max(1.0, abs(target))]
    return float(hit["compute_s"].iloc[0]) / 60.0 if len(hit) else float("nan")


def to_target(rows: list[dict], groups: list[str]) -> list[dict]:
    """Per search seed whose sweeps span the first two groups: the target (the lowest final
    hypervolume among the seed's sweeps, so every one of them reached it, and 90 % of it) and each
    group's device-minutes to reach it (mean over the group's sweeps of that seed)."""
    import numpy as np

    out = []
    for seed in dict.fromkeys(r["seed"] for r in rows):
        rs = [r for r in rows if r["seed"] == seed and r["hypervolume"] == r["hypervolume"]]
        if not all(any(r["group"] == g for r in rs) for g in groups[:2]):
            continue
        target = min(r["hypervolume"] for r in rs)
        row = {"seed": seed, "target": target}
        for frac in (1.0, 0.9):
            for g in groups[:2]:
                row[(g, frac)] = float(np.mean([compute_to_reach(r["progress"], frac * target)
                                                for r in rs if r["group"] == g]))
        out.append(row)
    return out


def seed_means(rows: list[dict], a: str, b: str, value) -> list[tuple]:
    """(seed, mean of a's, mean of b's) per search seed with sweeps in both groups: `value(row)` over
    each group's sweeps of that seed, nan values left out (a paired comparison: both arms of a seed
    try the same configurations while TPE is random)."""
    import numpy as np

    out = []
    for seed in dict.fromkeys(r["seed"] for r in rows):
        va = [v for r in rows if r["seed"] == seed and r["group"] == a for v in [value(r)] if v == v]
        vb = [v for r in rows if r["seed"] == seed and r["group"] == b for v in [value(r)] if v == v]
        if va and vb:
            out.append((seed, float(np.mean(va)), float(np.mean(vb))))
    return out


def _ratio(x: float, y: float, b: str) -> str:
    """x ÷ y as "1.23×"; where y is 0 (b's fronts hold no point inside the reference) there is no ratio,
    and the text says why instead of printing inf or nan."""
    if y > 0:
        return f"{x / y:.2f}×"
    return f"none ({b}'s hypervolume is 0: no front point inside the reference)" if y == 0 else "none"


def per_seed(rows: list[dict], a: str, b: str, key: str = "hv_per_min") -> list[tuple]:
    """(seed, ratio) per search seed with sweeps in both groups: the mean `key` of a's sweeps of that
    seed ÷ b's (seed_means)."""
    return [(seed, ma / mb) for seed, ma, mb in seed_means(rows, a, b, lambda r: r[key]) if mb > 0]


def _per_seed_line(pairs: list[tuple], a: str, b: str) -> list[str]:
    """The per-seed ratios, their mean and its 95 % Student-t interval (n − 1 dof; none for one seed)."""
    from analysis.equal_gain import mean_ci

    if not pairs:
        return []
    each = ", ".join(f"{x:.2f}× (seed {s})" for s, x in pairs)
    mean, half, n = mean_ci([x for _, x in pairs])
    ci = (f"; mean {mean:.2f}×, 95 % Student-t interval {mean - half:.2f}–{mean + half:.2f}× over {n} seeds"
          if n > 1 else "; one seed: no interval")
    return ["", f"Per search seed, {a} ÷ {b} (hypervolume per device-minute): {each}{ci}."]


def front_spread(rows: list[dict], a: str, b: str, methods: list[str]) -> list[dict]:
    """Do a's fronts agree with b's within b's seed spread? For the overall front's hypervolume and
    each method's own front's (hv_by_method; 0 for a method the sweep drew but finished none of,
    nan where it never drew it): per search seed with sweeps in both groups, the difference a − b
    of the groups' means over that seed's sweeps; b's spread, the sample standard deviation of its
    per-seed values (two seeds or more); `within` when every difference is no larger than it."""
    import numpy as np

    def value(r, m):
        if m is None:
            return r["hypervolume"]
        drew = any(k[0] == m for k in r["ends"])
        return r["hv_by_method"].get(m, 0.0 if drew else float("nan"))

    out = []
    for m in [None, *methods]:
        means = seed_means(rows, a, b, lambda r: value(r, m))
        diffs = [(seed, ma - mb) for seed, ma, mb in means]
        base = [mb for _, _, mb in means]
        spread = float(np.std(base, ddof=1)) if len(base) > 1 else float("nan")
        out.append({"front": m or "all methods", "diffs": diffs, "spread": spread,
                    "within": bool(diffs) and spread == spread and all(abs(d) <= spread + 1e-9 for _, d in diffs)})
    return out


def _front_spread_lines(rows: list[dict], a: str, b: str, methods: list[str]) -> list[str]:
    """compare.md's section on whether the fronts agree within the baseline's seed spread."""
    check = front_spread(rows, a, b, methods)
    if not any(c["diffs"] for c in check):
        return []
    lines = ["", "## Do the fronts agree within the seed spread?", "",
             f"Per search seed, the hypervolume of {a}'s front minus {b}'s (the overall front, then each method's own);"
             f" the spread is the standard deviation of {b}'s values over the seeds. A front agrees when every seed's"
             " difference is within it.", "",
             "| front | difference per seed | spread over seeds | agrees |", "|---|---|---|---|"]
    for c in check:
        each = ", ".join(f"{d:+.3g} (seed {s})" for s, d in c["diffs"]) or "—"
        spread = "—" if c["spread"] != c["spread"] else f"{c['spread']:.3g} ({len(c['diffs'])} seeds)"
        verdict = "—" if c["spread"] != c["spread"] else ("yes" if c["within"] else "**no**")
        lines.append(f"| {c['front']} | {each} | {spread} | {verdict} |")
    return lines


def _mean_spread(xs) -> str:
    import numpy as np

    xs = [x for x in xs if x == x]
    if not xs:
        return "—"
    return f"{np.mean(xs):.4g} ({min(xs):.4g}–{max(xs):.4g})" if len(xs) > 1 else f"{xs[0]:.4g}"


def table(rows: list[dict], budget: float) -> str:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["# Sweeps compared", "", "## Per sweep", "",
             "| sweep | group | trials ended | finished | stopped early | compute (device-min) | hypervolume |"
             " hypervolume per device-min | training tokens (M) | hypervolume per M tokens | methods on the front |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sweep']} | {r['group']} | {r['ended']} | {r['finished']} | {r['stopped']} | "
                     f"{r['compute_min']:.1f} | {r['hypervolume']:.4g} | {r['hv_per_min']:.4g} | "
                     f"{r['tokens_m']:.3g} | {r['hv_per_mtok']:.4g} | {', '.join(r['front_methods'])} |")
    lines += ["", "## Per group (mean, min–max over its sweeps)", "",
              "| group | sweeps | compute (device-min) | hypervolume | hypervolume per device-min |", "|---|---|---|---|---|"]
    per_min, per_tok = {}, {}
    for g in groups:
        rs = [r for r in rows if r["group"] == g]
        per_min[g] = [r["hv_per_min"] for r in rs]
        per_tok[g] = [r["hv_per_mtok"] for r in rs]
        lines.append(f"| {g} | {len(rs)} | {_mean_spread([r['compute_min'] for r in rs])} | "
                     f"{_mean_spread([r['hypervolume'] for r in rs])} | {_mean_spread(per_min[g])} |")
    if len(groups) >= 2:
        import numpy as np

        a, b = groups[0], groups[1]
        ratio = _ratio(np.mean(per_min[a]), np.mean(per_min[b]), b)
        lines += ["", f"Hypervolume per device-minute, {a} ÷ {b}: **{ratio}** (ratio of the groups' means)."]
        lines += _per_seed_line(per_seed(rows, a, b), a, b)
        if all(x == x for x in per_tok[a] + per_tok[b]):
            ratio = _ratio(np.mean(per_tok[a]), np.mean(per_tok[b]), b)
            lines += ["", f"Hypervolume per training token, {a} ÷ {b}: {ratio} (the same ratio with compute counted"
                          " as the tokens the optimizer saw: blind to each trial's start-up and probes, the fixed costs"
                          " a long trial on a GPU makes small)."]
        lines += _to_target_lines(to_target(rows, groups), a, b)
    lines += ["", "## How each method's trials ended", "",
              "| sweep | method | " + " | ".join(["ended"]) + " |", "|---|---|---|"]
    for r in rows:
        by_method: dict = {}
        for (m, end), n in sorted(r["ends"].items()):
            by_method.setdefault(m, []).append(f"{n} {end}")
        for m, ends in by_method.items():
            lines.append(f"| {r['sweep']} | {m} | {', '.join(ends)} |")
    lines += ["", "## Stopped trials whose configuration another sweep ran to the end", "",
              "Sweeps of one search seed (spec.json's search.seed) try the same configurations while the"
              " sampler is random (TPE's first 10 trials): a stopped trial that the other sweep finished on"
              " its front is a front point early stopping lost (inside the hypervolume's reference or not).", "",
              "| stopped in | finished in | stopped trials | of them finished there | on its front there |",
              "|---|---|---|---|---|"]
    for r in rows:
        for o in rows:
            if o is r or o["group"] == r["group"] or not len(r["stopped_trials"]) or r["seed"] != o["seed"]:
                continue
            keys = r["stopped_trials"]["config_key"]
            ran = keys[keys.isin(o["finished_trials"]["config_key"])]
            lost = r["stopped_trials"][keys.isin(o["front"]["config_key"])]
            lost_txt = ", ".join(f"{m} {c} (stopped at step {int(g)})" for m, c, g in
                                 zip(lost["method"], lost["config"], lost["stopped_at_rung"])) or "none"
            lines.append(f"| {r['sweep']} | {o['sweep']} | {len(keys)} | {len(ran)} | {len(lost)}: {lost_txt} |")
    methods = sorted({m for r in rows for m in r["best_in_budget"]})
    lines += ["", f"## Best gain with forgetting ≤ {budget:g}, per method (finished trials)", "",
              "| sweep | group | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for r in rows:
        vals = [r["best_in_budget"].get(m, float("nan")) for m in methods]
        lines.append(f"| {r['sweep']} | {r['group']} | " + " | ".join("—" if v != v else f"{v:+.1f}" for v in vals) + " |")
    lines += ["", "## Each method's own front: its hypervolume (finished trials)", "",
              "The hypervolume of the front of one method's finished trials alone, against the sweeps' reference point:"
              " a method whose best trials early stopping stopped (a slow starter) loses it here even where another"
              " method's front covers them in the overall one.", "",
              "| sweep | group | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for r in rows:
        vals = [r["hv_by_method"].get(m, float("nan")) for m in methods]
        lines.append(f"| {r['sweep']} | {r['group']} | " + " | ".join("—" if v != v else f"{v:.4g}" for v in vals) + " |")
    if len(groups) >= 2:
        lines += _front_spread_lines(rows, groups[0], groups[1], methods)
    return "\n".join(lines) + "\n"


def _to_target_lines(tt: list[dict], a: str, b: str) -> list[str]:
    """compare.md's section on compute to equal hypervolume (a time-to-target comparison)."""
    import numpy as np

    if not tt:
        return []
    lines = ["", "## Compute to reach the same hypervolume", "",
             "Per search seed, the target is the lowest final hypervolume among that seed's sweeps, so every"
             " one of them reached it: the device-minutes each spent until its front first reached the target"
             " (and 90 % of it). Unlike hypervolume per device-minute, this does not reward a sweep for"
             f" ending early with less. Speed-up: {b}'s minutes ÷ {a}'s.", "",
             f"| search seed | target hypervolume | {a} | {b} | speed-up | at 90 %: {a} | {b} | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in tt:
        cells = []
        for frac in (1.0, 0.9):
            ma, mb = r[(a, frac)], r[(b, frac)]
            cells += [f"{ma:.1f}", f"{mb:.1f}", f"{mb / ma:.2f}×" if ma else "—"]
        lines.append(f"| {r['seed']} | {r['target']:.4g} | " + " | ".join(cells) + " |")
    for frac, label in ((1.0, "the target"), (0.9, "90 % of it")):
        ma, mb = np.mean([r[(a, frac)] for r in tt]), np.mean([r[(b, frac)] for r in tt])
        lines += ["", f"Device-minutes to reach {label}, {b} ÷ {a}: **{mb / ma:.2f}×** (ratio of the means over"
                      f" {len(tt)} seed{'s' if len(tt) > 1 else ''})."]
    return lines


def figure(rows: list[dict], path: Path, budget: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from analysis.curve_plots import spans_decades

    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), dpi=100)
    seen: dict = {}
    for r in rows:
        gi = groups.index(r["group"])
        k = seen[r["group"]] = seen.get(r["group"], -1) + 1
        style = dict(color=GROUP_COLORS[gi % len(GROUP_COLORS)], ls=LINESTYLES[k % len(LINESTYLES)], lw=1.8)
        p = r["progress"]
        label = f"{r['sweep']} ({r['group']})"
        axes[0].step(p["trials"], p["hypervolume"], where="post", label=label, **style)
        axes[1].step(p["compute_s"] / 60.0, p["hypervolume"], where="post", label=label, **style)
        fin, front = r["finished_trials"], r["front"].sort_values(r["forget"])
        axes[2].scatter(fin[r["forget"]], fin[r["gain"]], s=14, color=style["color"], alpha=0.5)
        axes[2].step(front[r["forget"]], front[r["gain"]], where="post", label=label, **style)
    axes[0].set_xlabel("search trials ended")
    axes[1].set_xlabel("compute (device-minutes: wall × CPUs or GPUs)")
    for ax in axes[:2]:
        ax.set_ylabel("hypervolume of the front")
    wide = spans_decades(pd.concat([r["finished_trials"][r["forget"]] for r in rows]))
    if wide:                                   # a wrecked model's forgetting (×100) would flatten the rest
        axes[2].set_xscale("symlog", linthresh=1.0)
    axes[2].axvline(budget, color="0.5", ls=":", lw=1.0, label=f"forgetting = {budget:g}")
    axes[2].set_xlabel("forgetting  ← better" + (" (symlog)" if wide else ""))
    axes[2].set_ylabel("MedMCQA gain (pp)  better →")
    axes[2].set_title("finished trials and each sweep's front")
    for ax in axes:
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sources = [resolve(s) for s in args.sources]
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from analysis.runs import load

    rows = []
    for i, (name, src) in enumerate(zip(args.sources, sources)):
        try:
            sweep = load(src)
        except SourceError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        if sweep.progress.empty:
            print(f"error: {name}: no hypervolume progress (no ended search trial)", file=sys.stderr)
            return 1
        spec = spec_of(src.sweep_dir)
        group = args.groups[i] if args.groups else default_group(spec)
        if args.budget is None:                 # the damage the sweep's hypervolume counts up to
            ref = dict(sweep.objectives.reference).get("forgetting")
            args.budget = float(ref) if ref is not None else 1.0
        rows.append(per_sweep(Path(name).name, group, sweep, args.budget, (spec.get("search") or {}).get("seed")))
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows, args.budget)
    (args.out / "compare.md").write_text(text)
    figure(rows, args.out / "compare.png", args.budget)
    print(text)
    print(f"wrote {args.out / 'compare.md'} and {args.out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
