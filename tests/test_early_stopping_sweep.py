"""A real sweep with multi-objective early stopping (issue 16, item 1): `tune.run_sweep` on the
embedded world (Ray Tune + Train, Optuna on SQLite, MLflow on SQLite), LoRA points one at a time,
curve points every 4 steps, MO-ASHA with grace 4 and η 2 (rungs 4 and 8 of 16 steps). The points'
rates differ tenfold, so at a rung some trial is dominated by an earlier one and stops (which one is
the world's answer, not the test's: on the first world the highest rate wrecked the model, on the
default world the lowest rates gain nothing in 4 steps). Checked: a stopped trial is TERMINATED (not
ERROR) in Tune, PRUNED in Optuna with its rung, KILLED in MLflow with tag stopped_at_rung and its
rung's objectives, trained no further than its rung's point; the rung's rule, replayed on the logged
curves, stops exactly the stopped trials and continues every finished one at each rung; a trial
after a stop still starts on one CPU (the janitor freed the stopped Train run's placement group) and
nothing is left RUNNING or reserved."""
from __future__ import annotations

import json

import pytest

from tests.test_objectives import SMOKE

pytestmark = pytest.mark.slow
STEPS, GRACE, ETA = 16, 4, 2
POINTS = [{"rank": 16, "alpha": 32, "lr": 1.0e-3}, {"rank": 4, "alpha": 32, "lr": 3.0e-4},
          {"rank": 16, "alpha": 32, "lr": 3.0e-3}, {"rank": 4, "alpha": 8, "lr": 1.0e-4}]
SETS = [f"train.max_steps={STEPS}", "train.warmup_steps=2", "train.log_every=4",
        "curves={every: 4, limit: 32, kl_texts: 2, kl_len: 64}",
        f"search.early_stopping={{grace: {GRACE}, eta: {ETA}}}", "search.trials=0", "search.concurrency=1",
        "methods.smf.points=[]", "methods.full.points=[]", f"methods.lora.points={json.dumps(POINTS)}",
        "probes.medmcqa.limit=320", "probes.wikitext.limit=32", "probes.triviaqa.limit=64"]


@pytest.fixture(scope="module")
def sweep(world, tmp_path_factory):
    import ray
    from ray.tune import ExperimentAnalysis
    from ray.util.placement_group import placement_group_table

    from smf_sweep.spec import load_spec
    from smf_sweep.tune import run_sweep

    spec = load_spec(SMOKE, [f"storage={tmp_path_factory.mktemp('es')}", *SETS])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)   # one CPU: a leaked group would hang trial 4
    try:
        summary = run_sweep(spec, progress=False)
        groups = {gid: g["state"] for gid, g in placement_group_table().items()}
        tune = {t.trial_id: (t.status, dict(t.last_result), t.error_file)      # Tune's saved experiment state
                for t in ExperimentAnalysis(str(spec.sweep_dir() / "tune" / spec.name)).trials}
    finally:
        ray.shutdown()
    return {"spec": spec, "summary": summary, "groups": groups, "tune": tune}


def _runs(summary):
    from mlflow import MlflowClient

    c = MlflowClient(summary["tracking_uri"])
    runs = c.search_runs([summary["experiment_id"]], "tags.`smf_sweep.role` = 'trial'",
                         order_by=["attributes.start_time ASC"])
    return c, runs


def _curve(c, run, name: str) -> dict[int, float]:
    return {m.step: m.value for m in c.get_metric_history(run.info.run_id, f"curve/{name}")}


def _rung_entries(c, runs, r, rung: int, obj) -> dict[str, tuple]:
    """What the scheduler saw when `r` reached `rung` (one trial at a time): the objectives (minimised)
    of r and of every earlier trial that reached the rung, at its first curve point at or past it."""
    entries = {}
    for o in runs[:runs.index(r) + 1]:
        pts = {n: _curve(c, o, n) for n in obj.names}
        at = [s for s in sorted(pts[obj.names[0]]) if rung <= s < STEPS]
        reached = o is r or o.info.status == "FINISHED" or int(o.data.tags["stopped_at_rung"]) >= rung
        if at and reached:
            entries[o.data.tags["trial_id"]] = tuple((-1 if m == "max" else 1) * pts[n][at[0]]
                                                     for n, m in zip(obj.names, obj.modes))
    return entries


@pytest.mark.timeout(1200)
def test_a_dominated_trial_is_stopped_and_recorded_everywhere(sweep):
    import optuna

    from smf_sweep.objectives import Objectives
    from smf_sweep.scheduler import survives

    spec, summary = sweep["spec"], sweep["summary"]
    obj = Objectives.from_spec(spec)
    c, runs = _runs(summary)
    assert len(runs) == 4 and [r.data.params["lr"] for r in runs] == [str(p["lr"]) for p in POINTS]
    stopped = [r for r in runs if r.info.status == "KILLED"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert stopped and len(stopped) + len(finished) == 4, [(r.data.tags["trial_id"], r.info.status) for r in runs]
    assert runs[0] in finished                                   # alone at its rungs: fewer than η entries
    assert summary["stopped"] == len(stopped) and summary["finished"] == len(finished)

    # Tune: TERMINATED (no error), the stop in its last result (the scheduler's record)
    for r in runs:
        status, last, error = sweep["tune"][r.data.tags["trial_id"]]
        assert status == "TERMINATED" and not error
        assert bool(last.get("early_stopped")) == (r in stopped)
        if r in stopped:
            assert last["stopped_at_rung"] == int(r.data.tags["stopped_at_rung"]) and last["done"]
            assert last["curve/step"] == last["stopped_at_step"]

    # Optuna: PRUNED with the rung (search.early_stopping.optuna's default), the rest COMPLETE
    storage = f"sqlite:///{spec.sweep_dir() / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)             # <name>-<hash of the world-resolved spec>
    study = optuna.load_study(study_name=name, storage=storage)
    by_lr = {t.params["lora.lr"]: t for t in study.trials}
    assert len(study.trials) == 4 and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for r in runs:
        t = by_lr[float(r.data.params["lr"])]
        if r in stopped:
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert t.user_attrs["smf_sweep.stopped_at_rung"] == int(r.data.tags["stopped_at_rung"])
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and "smf_sweep.stopped_at_rung" not in t.user_attrs

    # MLflow: KILLED, the rung's objectives as final metrics, no curve point after the stop
    for r in stopped:
        rung, step = int(r.data.tags["stopped_at_rung"]), int(r.data.tags["stopped_at_step"])
        assert rung in (GRACE, GRACE * ETA) and rung <= step < STEPS and "failure_reason" not in r.data.tags
        curves = {n: _curve(c, r, n) for n in obj.names}
        assert max(curves[obj.names[0]]) == step                 # it trained no further than the judged point
        for n in obj.names:
            assert r.data.metrics[n] == pytest.approx(curves[n][step])
        assert r.data.metrics["cost/device_s"] > 0
        # the rule, replayed on the logged curves, stops it at its rung and continued it before
        for k in (GRACE, GRACE * ETA):
            if k <= rung:
                entries = _rung_entries(c, runs, r, k, obj)
                assert survives(entries, r.data.tags["trial_id"], ETA) == (k < rung), (k, entries)
    for r in finished:
        assert r.data.metrics["train_steps"] == STEPS and "stopped_at_rung" not in r.data.tags
        for k in (GRACE, GRACE * ETA):                           # … and continues it at every rung
            assert survives(_rung_entries(c, runs, r, k, obj), r.data.tags["trial_id"], ETA), k

    # the rungs' file (what a resumed driver reads back): every trial's point at each rung it reached
    kept = json.loads((spec.sweep_dir() / "rungs.json").read_text())
    for k in (GRACE, GRACE * ETA):
        want = {}
        for r in runs:
            want.update(_rung_entries(c, runs, r, k, obj))
        assert {t: tuple(v) for t, v in kept["rungs"][str(k)].items()} == pytest.approx(want), k

    # a trial after a stop ran on the one CPU; nothing is reserved or RUNNING
    first = runs.index(stopped[0])
    assert first < 3, "a trial starts after the first stop"
    assert runs[first + 1].info.start_time > runs[first].info.end_time
    assert [s for s in sweep["groups"].values() if s != "REMOVED"] == [], sweep["groups"]
    assert not [r for r in runs if r.info.status == "RUNNING"]

    # the parent run: one progress point per ended trial, the stopped trials' compute counted
    parent = c.search_runs([summary["experiment_id"]], "tags.`smf_sweep.role` = 'sweep'")[0]
    compute = sorted(c.get_metric_history(parent.info.run_id, "compute_s"), key=lambda m: m.step)
    assert [m.step for m in compute] == [1, 2, 3, 4]
    assert compute[-1].value == pytest.approx(sum(r.data.metrics["cost/device_s"] for r in runs))


def test_analysis_reads_stopped_trials_as_stopped_and_counts_their_compute(sweep):
    """analysis: a stopped trial is "stopped early" (not "killed") with its rung, on no front, its
    reason in table.md's excluded trials; the progress recomputed from the trial runs (what analysis
    falls back to without the parent's) counts its compute as the sweep logged it."""
    from analysis.report import _reasons
    from analysis.runs import finished, load, progress_of, stopped_early
    from analysis.source import resolve
    from analysis.summary import status_counts

    s = load(resolve(str(sweep["spec"].sweep_dir())))
    df, obj = s.trials, s.objectives
    stopped = stopped_early(df)
    assert stopped.sum() == sweep["summary"]["stopped"] >= 1
    fin = finished(df, obj)
    assert not (stopped & df.index.isin(fin.index)).any()
    counts = status_counts(df, fin)
    assert counts["stopped early"] == stopped.sum() and "killed" not in counts, counts
    for reason, rung in zip(_reasons(df[stopped]), df.loc[stopped, "stopped_at_rung"]):
        assert reason.startswith(f"stopped early at rung {rung:g} (step "), reason
    recomputed = progress_of(df, obj)
    assert list(recomputed["compute_s"]) == pytest.approx(list(s.progress["compute_s"]))
    assert list(recomputed["hypervolume"]) == pytest.approx(list(s.progress["hypervolume"]))


def test_compare_reports_the_sweep_with_its_stops(sweep, tmp_path):
    """analysis.compare on the real sweep (twice, as two groups): its per-sweep row counts the ended,
    finished and stopped trials, the compute the sweep logged and the training tokens its trials
    logged; equal sweeps have a ratio of 1.00 by either cost;
    each method's trials are listed by where they ended; the figure is written."""
    from analysis.compare import main
    from analysis.runs import load
    from analysis.source import resolve

    d = str(sweep["spec"].sweep_dir())
    assert main([d, d, "--groups", "a,b", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "compare.md").read_text()
    s, summary = load(resolve(d)), sweep["summary"]
    minutes = s.progress["compute_s"].iloc[-1] / 60
    row = f"| {sweep['spec'].name} | a | 4 | {summary['finished']} | {summary['stopped']} | {minutes:.1f} |"
    assert row in text, text
    hv = s.progress["hypervolume"].dropna()
    # equal sweeps: 1.00, unless their front holds nothing inside the reference (the smoke sweep's
    # outcome depends on the world this machine built: tests/test_golden.py)
    ratio = "1.00×" if len(hv) and hv.iloc[-1] > 0 else "none (b's hypervolume is 0: no front point inside the reference)"
    assert f"a ÷ b: **{ratio}**" in text, text
    search = s.trials[s.trials["stage"].fillna("search") == "search"]
    tokens_m = search["cost/tokens"].sum() / 1e6    # training tokens, stopped trials' to their rung
    assert tokens_m > 0 and f"| {tokens_m:.3g} | " in text, text
    assert f"Hypervolume per training token, a ÷ b: {ratio} (" in text, text
    assert "Device-minutes to reach the target, b ÷ a: **1.00×**" in text, text   # equal sweeps, one seed
    assert f"| lora | {summary['finished']} finished, 1 stopped at step " in text or summary["stopped"] > 1, text
    from analysis.runs import feasible, finished

    fin = finished(search, s.objectives)
    fin = fin[feasible(fin, s.objectives)]
    own = {m: s.objectives.hypervolume(g.to_dict("records")) for m, g in fin.groupby("method")}
    section = text.split("## Each method's own front")[1]
    assert own and all(f"{v:.4g}" in section for v in own.values()), section   # each method's front, on its own
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_the_replay_reads_the_sweep_and_reports_each_arms_hypervolume(sweep, capsys):
    """analysis.replay_rungs on the real sweep's curves: one row per arm and the whole sweep, each with
    the hypervolume of its own front, kept of all (finished trials, the sweep's reference point)."""
    from analysis.replay_rungs import main
    from analysis.runs import finished, load
    from analysis.source import resolve

    d = str(sweep["spec"].sweep_dir())
    assert main([d, "--grace", str(GRACE), "--eta", str(ETA)]) == 0
    out = capsys.readouterr().out
    s = load(resolve(d))
    fin = finished(s.trials, s.objectives)
    hv = s.objectives.hypervolume(fin.to_dict("records"))
    assert "| its hypervolume kept |" in out and f"| all | {len(fin)} | " in out, out
    assert [ln for ln in out.splitlines() if ln.startswith("| all |")][0].endswith(f" of {hv:.4g} |"), out


@pytest.mark.timeout(1500)
def test_a_resumed_sweep_keeps_its_rungs(world, tmp_path):
    """Kill the driver once two trials are on the first rung; re-run the command. The resumed driver
    reads the rungs back (Ray restores the scheduler as it was pickled before the first trial, empty),
    so the rungs end with every trial, the ones recorded before the kill unchanged."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_sweep import ROOT, run

    cmd = [sys.executable, "-m", "smf_sweep.tune", "search_spaces/smoke.yaml", "--storage", str(tmp_path),
           "--quiet", "--json", *(a for s in SETS for a in ("--set", s))]
    rungs = tmp_path / "smoke" / "rungs.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    before = {}
    try:
        deadline = time.time() + 900
        while time.time() < deadline and len(before.get(str(GRACE), {})) < 2:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(1)
            try:
                before = json.loads(rungs.read_text())["rungs"]
            except (OSError, ValueError, KeyError):
                pass
        assert len(before.get(str(GRACE), {})) >= 2, before
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = json.loads(rungs.read_text())["rungs"]              # what the killed driver last wrote
    r = run(cmd)
    out = r.stdout + r.stderr
    assert "resuming sweep" in out and "rung entries of" in out and "read back" in out, out[-3000:]
    kept = json.loads(rungs.read_text())
    after, orphaned = kept["rungs"], kept["orphaned"]
    for k, entries in before.items():                            # kept as recorded: counted, or (a trial
        for t, v in entries.items():                             # Tune had not recorded, re-queued under
            assert after[k].get(t, orphaned.get(k, {}).get(t)) == v, (k, t)   # a new id) kept aside
    assert len(after[str(GRACE)]) >= len(POINTS), after          # and every trial reached the first rung
