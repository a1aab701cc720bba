"""analysis.replay_rungs: MO-ASHA's rule replayed on logged curves, trials arriving in start order."""
from __future__ import annotations

import pandas as pd

from analysis.replay_rungs import replay
from smf_sweep.objectives import Objectives


def _points(curves: dict[str, list[tuple[int, float, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": r, "step": s, "medmcqa_gain_pp": g, "forgetting": f}
                         for r, pts in curves.items() for s, g, f in pts])


def test_a_trial_dominated_at_a_rung_stops_there_and_the_first_arrivals_continue():
    # rungs 4 and 8 of 12 steps (grace 4, η 2); c is dominated by a and b at step 4, d only at step 8
    curves = {"a": [(0, 0, 0), (4, 5, 1), (8, 8, 2), (12, 9, 2)],
              "b": [(0, 0, 0), (4, 4, 0.5), (8, 7, 1), (12, 8, 1)],
              "c": [(0, 0, 0), (4, 1, 5), (8, 2, 6), (12, 3, 7)],
              "d": [(0, 0, 0), (5, 6, 0.4), (8, 1, 9), (12, 2, 9)]}
    trials = pd.DataFrame({"run_id": list(curves)})
    rungs, stop = replay(_points(curves), trials, Objectives(), grace=4, eta=2)
    assert rungs == [4, 8]
    # a alone at rung 4 (< η entries): continues; b: 2 entries, keep 1, b is not dominated (crowding ties: inf) → continues
    assert stop["a"] is None and stop["b"] is None
    assert stop["c"] == 4                       # dominated by a and b at rung 4
    assert stop["d"] == 8                       # first point at or after step 4 is step 5 (not dominated); at 8 it is


def test_noise_margins_let_a_trial_within_them_continue():
    """--epsilon (search.early_stopping.epsilon): c loses to a by 1 pp of gain and 0.5 of forgetting at
    rung 4, inside the margins, so it continues; beyond them it stops as before."""
    curves = {"a": [(0, 0, 0), (4, 5, 1), (8, 8, 2)],
              "b": [(0, 0, 0), (4, 4, 0.5), (8, 7, 1)],
              "c": [(0, 0, 0), (4, 4, 1.5), (8, 6, 2)]}
    trials = pd.DataFrame({"run_id": list(curves)})
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2)[1]["c"] == 4
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2,
                  epsilon={"medmcqa_gain_pp": 2, "forgetting": 1})[1]["c"] is None
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2, epsilon={"forgetting": 0.4})[1]["c"] == 4


def test_the_tie_break_is_the_schedulers():
    """--tie-break (search.early_stopping.tie_break): three trials on one front at rung 4, keep 1 of 3:
    crowding keeps both extremes (a and c, tied at inf), MO-ASHA's ε-net only the best gain (c)."""
    curves = {"a": [(0, 0, 0), (4, 1, 0), (8, 1, 0)],
              "b": [(0, 0, 0), (4, 2, 1), (8, 2, 1)],
              "c": [(0, 0, 0), (4, 3, 2), (8, 3, 2)]}
    trials = pd.DataFrame({"run_id": list(curves)})
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=3)[1] == {"a": None, "b": None, "c": None}
    # in start order: a, b alone or two (< η) continue; c arrives third: crowding ties it with a at inf
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=3, tie_break="eps_net")[1]["c"] is None
    pts = _points({"c": curves["c"], "b": curves["b"], "a": curves["a"]})
    late = pd.DataFrame({"run_id": ["c", "b", "a"]})
    assert replay(pts, late, Objectives(), grace=4, eta=3)[1]["a"] is None                     # an extreme: inf
    assert replay(pts, late, Objectives(), grace=4, eta=3, tie_break="eps_net")[1]["a"] == 4   # c is ahead of it: keep 1


def test_per_method_replays_judge_each_method_on_its_own():
    curves = {"f1": [(0, 0, 0), (4, 9, 1), (8, 9, 1)],
              "f2": [(0, 0, 0), (4, 8, 1.5), (8, 8, 2)],
              "s1": [(0, 0, 0), (4, 2, 2), (8, 4, 2)]}
    trials = pd.DataFrame({"run_id": list(curves), "method": ["full", "full", "smf"]})
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2)[1]["s1"] == 4
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2, per_method=True)[1]["s1"] is None


def test_a_method_with_its_own_grace_skips_the_earlier_rungs():
    """--grace-per-method (search.early_stopping.grace_per_method): s1 trails at rung 4 and leads at 8."""
    curves = {"f1": [(0, 0, 0), (4, 9, 1), (8, 9, 1), (12, 9, 1)],
              "s1": [(0, 0, 0), (4, 2, 2), (8, 10, 1), (12, 12, 1)]}
    trials = pd.DataFrame({"run_id": list(curves), "method": ["full", "smf"]})
    assert replay(_points(curves), trials, Objectives(), grace=4, eta=2)[1]["s1"] == 4
    rungs, stop = replay(_points(curves), trials, Objectives(), grace=4, eta=2, grace_per_method={"smf": 8})
    assert rungs == [4, 8] and stop == {"f1": None, "s1": None}
    import pytest

    with pytest.raises(ValueError, match="not a rung of grace 4"):
        replay(_points(curves), trials, Objectives(), grace=4, eta=2, grace_per_method={"smf": 6})


def test_the_cli_reads_margins_and_refuses_unknown_objectives(capsys, monkeypatch, tmp_path):
    import pytest

    from analysis.replay_rungs import main, parse_args

    assert parse_args(["x", "--grace", "4", "--epsilon", "medmcqa_gain_pp=6,forgetting=3"]).epsilon == {
        "medmcqa_gain_pp": 6.0, "forgetting": 3.0}
    with pytest.raises(SystemExit):
        parse_args(["x", "--grace", "4", "--epsilon", "forgetting"])
    assert "NAME=MARGIN" in capsys.readouterr().err
    assert parse_args(["x", "--grace", "4", "--grace-per-method", "smf=12"]).grace_per_method == {"smf": 12}
    with pytest.raises(SystemExit):
        parse_args(["x", "--grace", "4", "--grace-per-method", "smf=late"])
    assert "METHOD=STEPS" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["/nonexistent/sweep", "--grace", "4"]) == 2          # no such directory
    assert "no such sweep directory" in capsys.readouterr().err
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()                            # an empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["no_such_experiment", "--grace", "4"]) == 2          # a name the tracking store lacks
    assert "no MLflow experiment named 'no_such_experiment'" in capsys.readouterr().err


def test_the_replays_compute_counts_a_stopped_trial_up_to_the_point_it_is_judged_at(tmp_path):
    """replayed_cost: a finished trial costs its cost/device_s; a stopped one that share of it which
    its run's wall time had reached when it logged the curve point judged (the first at or after its
    rung), read from a real MLflow store's metric timestamps."""
    from mlflow import MlflowClient

    from analysis.replay_rungs import replayed_cost

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("replay")
    t0 = 1_700_000_000_000                                          # ms
    rows = []
    for rid_name, cost, stopped_at, point_ms in [("done", 100.0, None, None), ("cut", 200.0, 4, 30_000)]:
        run = client.create_run(exp, start_time=t0)
        for step, ts in [(0, t0 + 1_000), (5, t0 + (point_ms or 50_000)), (8, t0 + 90_000)]:
            client.log_metric(run.info.run_id, "curve/medmcqa_gain_pp", 1.0, timestamp=ts, step=step)
        client.set_terminated(run.info.run_id, end_time=t0 + 120_000)
        rows.append({"run_id": run.info.run_id, "cost/device_s": cost, "stopped_at": stopped_at,
                     "start_time": pd.Timestamp(t0, unit="ms", tz="UTC"),
                     "end_time": pd.Timestamp(t0 + 120_000, unit="ms", tz="UTC")})
    fin = pd.DataFrame(rows)
    points = pd.DataFrame([{"run_id": r["run_id"], "step": s} for r in rows for s in (0, 5, 8)])
    total, cut = replayed_cost(client, fin, points, Objectives())
    assert total == 300.0
    assert cut == 100.0 + 200.0 * 30_000 / 120_000                # judged at step 5 (the first >= rung 4): 25 %
    assert replayed_cost(client, fin.assign(**{"cost/device_s": [100.0, None]}), points, Objectives()) is None
