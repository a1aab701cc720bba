"""Pareto fronts, plots and the paper-style table of one sweep, read from MLflow.

    python -m analysis.pareto runs/smoke                       # a sweep directory (sweep.json)
    python -m analysis.pareto smf_sweep/smoke --tracking-uri sqlite:////abs/mlflow.db
    python -m analysis.pareto smoke --tracking-uri http://127.0.0.1:5000 --out figs --budget 0.5
    python -m analysis.pareto runs/smoke --cost --constraint 'cost/device_s<=600'

Writes into --out: pareto.png, pareto.html, fronts.csv, table.md, selectors.png, memory.png,
hypervolume.png, and, when the trials logged learning–forgetting curves (`curve/*` step metrics),
curves.png, equal_gain.png, curve_fronts.csv, equal_gain.csv (table.md gains a curves section; without
curves it says so in one line). The objectives, forgetting's definition and the constraints are the sweep's (as it
recorded them); --cost adds compute as one more objective and --constraint adds constraints, for
this analysis only (hypervolume.png stays the sweep's own).
Exit status: 0 written, 1 nothing to analyse (no finished trials), 2 bad source / unreachable store.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from analysis.source import SourceError, resolve

FILES = ["pareto.png", "pareto.html", "fronts.csv", "table.md", "selectors.png", "memory.png", "hypervolume.png"]
CURVE_FILES = ["curves.png", "equal_gain.png", "curve_fronts.csv", "equal_gain.csv"]  # when trials logged curves


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m analysis.pareto", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Files written: " + ", ".join(FILES) + "; with curves: " + ", ".join(CURVE_FILES))
    p.add_argument("source", metavar="SOURCE",
                   help="a sweep directory (holds sweep.json and, by default, mlflow.db) or an "
                        "MLflow experiment name or id (with --tracking-uri)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: <sweep dir>/analysis, or ./analysis_out)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store: sqlite:////abs/path/mlflow.db or http://127.0.0.1:PORT "
                        "(default: sweep.json's, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="forgetting budget for 'best within budget' (forgetting <= budget; "
                        "default 1.0, the study's 'within ~1 point')")
    p.add_argument("--cost", action="store_true",
                   help="rank by one more objective, the trials' compute (cost/device_s, minimised): "
                        "fronts of gain, forgetting and device-seconds")
    p.add_argument("--constraint", action="append", default=[], metavar="METRIC<=B|METRIC>=B",
                   help="one more constraint beside the sweep's, e.g. 'cost/device_s<=600' or "
                        "'triviaqa/delta>=-1': infeasible trials are shown hollow, on no front; repeatable")
    p.add_argument("--ignore-param", action="append", default=[], metavar="KEY",
                   help="a param to leave out when grouping trials into configs (seeds are always"
                        " left out); repeatable, e.g. a per-trial output path")
    p.add_argument("--gains", default=None, metavar="G1,G2,...",
                   help="gain levels (pp of MedMCQA) at which forgetting is compared across methods, e.g. "
                        "'5,10,15' (default: the quartiles of the trials' highest curve gains, rounded)")
    p.add_argument("--no-curves", action="store_true",
                   help="skip the learning-forgetting curves (one metric-history request per trial and "
                        "curve metric): no curves.png, equal_gain.png, nor their table.md section")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[Path]:
    from analysis.equal_gain import parse_gains
    from smf_sweep.objectives import Constraint

    try:
        extra = [Constraint.parse_text(c) for c in args.constraint]
    except ValueError as e:
        raise SourceError(f"--constraint: {e}") from None
    try:
        gains = parse_gains(args.gains) if args.gains is not None else None
    except ValueError as e:
        raise SourceError(f"--gains: {e}") from None
    src = resolve(args.source, args.tracking_uri)  # cheap checks before the heavy imports
    if src.note:
        print(f"note: {src.note}")
    # MLflow's REST client retries a failing server for minutes by default; a CLI should not
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from analysis import interactive, plots, report, runs, summary  # heavy: mlflow, matplotlib

    from smf_sweep.objectives import COST_S

    sweep = runs.load(src, frozenset(args.ignore_param))
    recorded = sweep.objectives
    obj = recorded.with_objective(COST_S, "min") if args.cost else recorded
    try:
        obj = obj.with_constraints(extra)
    except ValueError as e:
        raise SourceError(f"--constraint: {e}") from None
    if obj != recorded:
        sweep.objectives_source += " + " + " ".join((["--cost"] if args.cost else []) +
                                                    [f"--constraint {c}" for c in extra])
    sweep.objectives = obj
    df = sweep.trials
    if COST_S in obj.recorded() and COST_S not in df:
        df[COST_S] = float("nan")
    fin = runs.finished(df, obj)
    counts = summary.status_counts(df, fin)
    excluded = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "finished") or "none"
    print(f"{sweep.experiment_name}: {len(df)} trials, {len(fin)} finished, excluded: {excluded}")
    print(f"objectives ({sweep.objectives_source}): {obj.describe()}")
    if fin.empty:
        raise NothingToDo(f"no finished trials in experiment {sweep.experiment_name!r} at "
                          f"{sweep.tracking_uri} ({len(df)} trial runs; excluded: {excluded})")
    out = args.out or (src.sweep_dir / "analysis" if src.sweep_dir else Path("analysis_out"))
    out.mkdir(parents=True, exist_ok=True)
    methods = summary.ordered(df["method"].unique(), summary.METHOD_ORDER)
    title = f"{sweep.experiment_name}: {len(fin)} finished trials ({excluded} excluded)"
    plots.pareto_png(fin, methods, title, out / "pareto.png", args.budget, obj)
    interactive.pareto_html(fin, methods, title, out / "pareto.html", args.budget, obj)
    summary.fronts_table(fin, obj).to_csv(out / "fronts.csv", index=False)
    table = report.markdown(sweep, fin, counts, args.budget)
    paths = [out / f for f in FILES]
    if args.no_curves:
        from analysis.curve_report import TITLE
        table += f"\n{TITLE}\n\nSkipped (--no-curves).\n"
    else:
        table, written = _curves(sweep, fin, obj, gains, out, table)
        paths += written
    for stale in {out / f for f in CURVE_FILES} - set(paths):  # an earlier run's, now misleading
        stale.unlink(missing_ok=True)
    (out / "table.md").write_text(table)
    plots.selectors_png(fin, sweep.experiment_name, out / "selectors.png", obj)
    plots.memory_png(fin, sweep.experiment_name, out / "memory.png", obj)
    plots.hypervolume_png(sweep.progress, recorded, sweep.experiment_name, out / "hypervolume.png",
                          sweep.progress_source)
    print("wrote " + ", ".join(str(p) for p in paths))
    return paths


def _curves(sweep, fin, obj, gains, out: Path, table: str) -> tuple[str, list[Path]]:
    """The curves section appended to table.md, and the curve figures and CSVs when trials have curves."""
    import pandas as pd

    from analysis import curve_plots, curve_report, curves

    a = curve_report.analyse(curves.load(sweep.tracking_uri, fin, obj), len(fin), obj, gains, trials=fin)
    table += curve_report.markdown(a, obj)
    if a.points.empty:
        print("note: " + curve_report.none_note(len(fin)))
        return table, []
    curve_plots.curves_png(a, obj, sweep.experiment_name, out / "curves.png")
    a.front.to_csv(out / "curve_fronts.csv", index=False)
    pd.concat([c.best.assign(chosen_by=c.key) for c in a.comparisons], ignore_index=True).to_csv(
        out / "equal_gain.csv", index=False)
    written = [out / "curves.png", out / "curve_fronts.csv", out / "equal_gain.csv"]
    if a.gains:
        curve_plots.equal_gain_png(a, obj, sweep.experiment_name, out / "equal_gain.png")
        written.append(out / "equal_gain.png")
    else:
        print("note: no trial's gain rose above 0 along its curve: no equal_gain.png")
    return table, written


class NothingToDo(Exception):
    """The source is fine but holds nothing to analyse."""


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NothingToDo as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
