"""What MO-ASHA would have stopped: its rule (smf_sweep.scheduler) replayed on a finished sweep's curves.

    python -m analysis.replay_rungs runs/world_study --grace 40 --eta 3
    python -m analysis.replay_rungs runs/world_study --grace 20 --eta 3 --csv replay.csv
    python -m analysis.replay_rungs runs/es_off_s1 --grace 40 --epsilon medmcqa_gain_pp=6,forgetting=3
    python -m analysis.replay_rungs runs/world_study --grace 40 --budget 20 --per-method
    python -m analysis.replay_rungs runs/es_off_s4 --grace 40 --budget 20 --grace-per-method smf=120
    python -m analysis.replay_rungs runs/es_off_s4 --grace 40 --budget 20 --tie-break eps_net

Before turning `search.early_stopping` on, check a rung schedule on a sweep that ran without it: the
finished trials arrive at each rung in the order they started (the sweep's own order, as Tune starts
them) and each is judged with the rule the scheduler applies (scheduler.survives: non-dominated sorting
of the curve's objectives at the rung, crowding distance (or --tie-break eps_net, MO-ASHA's own ε-net
order: search.early_stopping.tie_break), keep the leading ⌊n/η⌋; with --epsilon, the
noise margins of search.early_stopping.epsilon; with --per-method, each trial against its own
method's only, as search.early_stopping.per_method; with --grace-per-method, a method's first rung, as
search.early_stopping.grace_per_method). Prints, per method (SMF per selector), how many trials would
stop at each rung (then each method whose trials span several arms, all together), how many of
those are on the sweep's final front (finished trials, full probes):
the front points this schedule would have lost, and the hypervolume of the arm's own front with
its finished trials against with all of them (does the schedule drop a method that starts slow?);
then the front's hypervolume with every trial against with the trials the replay lets finish, and
the optimizer steps the replay would have run (a stopped trial runs to its rung) as a share of all,
and the compute it would have spent (estimated: a stopped trial costs its cost/device_s up to the
wall time of the point it is judged at) with the hypervolume per device-minute against the sweep's.
A trial's point at a rung is its first curve point at or after the rung's step.
Exit status: 0 printed, 1 no finished trial with curves, 2 bad source.
"""
from __future__ import annotations

import argparse
import sys

from analysis.source import SourceError, resolve
from smf_sweep.rungs import TIE_BREAKS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.replay_rungs", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("source", metavar="SOURCE", help="a sweep directory (holds sweep.json)")
    p.add_argument("--grace", type=int, required=True, help="the first rung, optimizer steps")
    p.add_argument("--eta", type=float, default=3.0, help="rung growth and the kept share 1/η (default 3)")
    p.add_argument("--epsilon", type=_margins, default={}, metavar="NAME=MARGIN,...",
                   help="noise margins per objective, as search.early_stopping.epsilon (default: none, MO-ASHA exactly)")
    p.add_argument("--per-method", action="store_true",
                   help="judge each trial against its own method's trials only (search.early_stopping.per_method)")
    p.add_argument("--grace-per-method", type=_firsts, default={}, metavar="METHOD=STEPS,...",
                   help="a method's first rung, a rung of the grace's ladder (search.early_stopping.grace_per_method)")
    p.add_argument("--tie-break", choices=TIE_BREAKS, default="crowding",
                   help="inside a front: crowding distance (default) or MO-ASHA's ε-net order "
                        "(search.early_stopping.tie_break)")
    p.add_argument("--budget", type=float, default=None,
                   help="the hypervolume's forgetting reference (default: the sweep's own reference point)")
    p.add_argument("--csv", default=None, help="also write one row per trial (where it would stop) to this file")
    return p.parse_args(argv)


def _margins(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"NAME=MARGIN, got {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"NAME=MARGIN, got {part!r}")
    return out


def _firsts(text: str) -> dict[str, int]:
    try:
        return {m: int(v) for m, v in _margins(text).items()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"METHOD=STEPS, got {text!r}") from None


def replay(points, trials, obj, grace: int, eta: float, epsilon: dict[str, float] | None = None,
           per_method: bool = False, grace_per_method: dict[str, int] | None = None, tie_break: str = "crowding"):
    """trials (finished, with curves) in start order → {run_id: rung it would stop at, or None}.
    A method in `grace_per_method` is first judged at that rung (one of the ladder's, else ValueError)."""
    from smf_sweep.objectives import margins
    from smf_sweep.rungs import budgets, off_ladder
    from smf_sweep.scheduler import survives

    eps = margins(obj.names, epsilon)
    senses = [1.0 if m == "min" else -1.0 for m in obj.modes]
    last = int(points["step"].max())
    rungs = budgets(grace, eta, last - 1)                     # a rung at the last step judges nothing
    firsts = grace_per_method or {}
    for m, b in firsts.items():
        if off_ladder(grace, eta, b) is not None:
            raise ValueError(f"grace_per_method: {m}'s {b} is not a rung of grace {grace}, η {eta:g}")
    seen: dict[int, dict[str, tuple]] = {b: {} for b in rungs}
    methods = dict(zip(trials["run_id"], trials["method"])) if (per_method or firsts) else {}
    out = {}
    for rid in trials["run_id"]:
        pts = points[points["run_id"] == rid].sort_values("step")
        out[rid] = None
        for b in rungs:
            if b < firsts.get(methods.get(rid), grace):
                continue
            at = pts[pts["step"] >= b].head(1)
            if at.empty or at[list(obj.names)].isna().any(axis=None):
                break
            seen[b][rid] = tuple(s * float(at[n].iloc[0]) for s, n in zip(senses, obj.names))
            if not survives(seen[b], rid, eta, eps, methods if per_method else None, tie_break):
                out[rid] = b
                break
    return rungs, out


def replayed_cost(client, fin, points, obj) -> tuple[float, float] | None:
    """(device-seconds of the finished trials, device-seconds of the same with the replay's stops):
    a stopped trial costs its own `cost/device_s` × the share of its run's wall time (MLflow's start
    to end) that had passed when it logged the curve point it is judged at (the first at or after
    its rung), as a live stop records Tune's time_total_s at that point. None without costs."""
    import pandas as pd

    if "cost/device_s" not in fin or fin["cost/device_s"].isna().any():
        return None
    key = "curve/" + obj.names[0]
    total = replay = 0.0
    for r in fin.to_dict("records"):
        cost = float(r["cost/device_s"])
        total += cost
        if pd.isna(r["stopped_at"]):
            replay += cost
            continue
        steps = points[(points["run_id"] == r["run_id"]) & (points["step"] >= r["stopped_at"])]["step"]
        if steps.empty or pd.isna(r["start_time"]) or pd.isna(r["end_time"]):
            return None
        at = {m.step: m.timestamp for m in client.get_metric_history(r["run_id"], key)}.get(int(steps.min()))
        start, end = r["start_time"].timestamp() * 1e3, r["end_time"].timestamp() * 1e3
        if at is None or not end > start:
            return None
        replay += cost * min(1.0, max(0.0, (at - start) / (end - start)))
    return total, replay


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        src = resolve(args.source)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    from analysis import curves
    from analysis.fronts import nondominated
    from analysis.runs import feasible, finished, load

    try:
        sweep = load(src)
    except SourceError as e:                  # an experiment name with no such experiment, …
        print(f"error: {e}", file=sys.stderr)
        return 2
    obj = sweep.objectives
    fin = finished(sweep.trials, obj).sort_values("start_time", kind="stable")
    points = curves.load(sweep.tracking_uri, fin, obj)
    fin = fin[fin["run_id"].isin(points["run_id"])]
    if fin.empty:
        print("error: no finished trial with curves", file=sys.stderr)
        return 1
    try:
        rungs, stop = replay(points, fin, obj, args.grace, args.eta, args.epsilon, args.per_method,
                             args.grace_per_method, args.tie_break)
    except ValueError as e:
        flag = "--grace-per-method" if str(e).startswith("grace_per_method") else "--epsilon"
        print(f"error: {flag}: {str(e).split(': ', 1)[-1]}", file=sys.stderr)
        return 2
    ok = fin[feasible(fin, obj)]
    front = set(ok[nondominated(ok, obj.senses)]["run_id"])
    fin = fin.assign(arm=[m if not isinstance(s, str) else f"{m} {s}" for m, s in zip(fin["method"], fin["selector"])],
                     stopped_at=[stop[r] for r in fin["run_id"]], on_front=fin["run_id"].isin(front))
    print(f"{sweep.experiment_name}: {len(fin)} finished trials with curves, replayed in start order; "
          f"rungs at steps {', '.join(map(str, rungs))} (grace {args.grace}, η {args.eta:g}"
          + "".join(f", ε {n} {v:g}" for n, v in args.epsilon.items()) + (", per method" if args.per_method else "")
          + "".join(f", {m} from {b}" for m, b in args.grace_per_method.items())
          + ("" if args.tie_break == "crowding" else f", ties by {args.tie_break}") + ")")
    import dataclasses

    ref = obj if args.budget is None else dataclasses.replace(
        obj, reference=tuple((n, obj.default_reference(n, args.budget)) for n in obj.names))

    def row(label: str, g) -> list:
        """A table row: where g's trials stop, finish, sit on the front, and g's own front kept of all."""
        recs = g.to_dict("records")
        kept = ref.hypervolume([r for r in recs if pd.isna(r["stopped_at"])])
        return [label, len(g), *[int((g["stopped_at"] == b).sum()) for b in rungs], int(g["stopped_at"].isna().sum()),
                int(g["on_front"].sum()), int((g["on_front"] & g["stopped_at"].notna()).sum()),
                f"{kept:.4g} of {ref.hypervolume(recs):.4g}"]

    head = ["arm", "trials", *[f"stop @{b}" for b in rungs], "finish", "on the front", "front points stopped",
            "its hypervolume kept"]
    rows = [row(arm, g) for arm, g in fin.groupby("arm", sort=True)]
    rows += [row(f"{m}, all", g) for m, g in fin.groupby("method", sort=True)
             if g["arm"].nunique() > 1]                       # SMF's selectors together: the method's own front
    rows.append(row("all", fin))
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    rows_all = fin.to_dict("records")
    kept = [r for r in rows_all if pd.isna(r["stopped_at"])]
    total = int(points["step"].max())
    steps = sum(total if pd.isna(r["stopped_at"]) else r["stopped_at"] for r in rows_all)
    hv_all, hv_kept = ref.hypervolume(rows_all), ref.hypervolume(kept)
    refs = ", ".join(f"{n} {v:g}" for n, v in ref.reference if v is not None)
    print(f"hypervolume (reference {refs}): {hv_all:.4g} with all {len(rows_all)} trials, {hv_kept:.4g} with the "
          f"{len(kept)} the replay lets finish ({hv_kept / hv_all:.0%} of it) at {steps / (total * len(rows_all)):.0%}"
          f" of the optimizer steps" if hv_all else f"hypervolume (reference {refs}): 0 with every trial")
    from mlflow.tracking import MlflowClient

    cost = replayed_cost(MlflowClient(tracking_uri=sweep.tracking_uri), fin, points, obj)
    if cost is not None and hv_all and cost[1] > 0:
        (full, cut), ratio = cost, (hv_kept / cost[1]) / (hv_all / cost[0])
        print(f"compute (estimated): {full / 60:.1f} device-minutes with every trial, {cut / 60:.1f} with the replay's"
              f" stops (a stopped trial: its cost up to the point it is judged at); hypervolume per device-minute"
              f" {ratio:.2f}× the sweep's")
    if args.csv:
        cols = ["trial_id", "arm", "config", "seed", "stopped_at", "on_front", *obj.names]
        pd.DataFrame(fin[cols]).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
