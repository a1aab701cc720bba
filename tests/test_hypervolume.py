"""The sweep's progress and cost (issue 16): the exact hypervolume (2-D sweep, N-D slicing) against
brute force and Optuna's own; the parent run's step metrics after every ended search trial (a
resumed driver continues them; failed trials add compute, confirm re-runs add nothing); analysis
reads them back (or recomputes them identically) and draws hypervolume.png; the loop's running
`train/tokens` total, kept across a resume."""
from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from smf_sweep import objectives as O
from smf_sweep.objectives import Objectives, hypervolume
from tests.test_objectives import BASE, SMOKE, load


# ---- the exact hypervolume --------------------------------------------------------------------------
def brute_cells(points: np.ndarray, ref: np.ndarray) -> int:
    """Integer points, integer reference: the unit cells [c, c + 1]^d inside the reference box that
    some point weakly dominates (p <= c everywhere) — exactly the dominated volume."""
    lo = points.min(axis=0) if len(points) else ref
    count = 0
    for cell in itertools.product(*[range(int(a), int(r)) for a, r in zip(lo, ref)]):
        if len(points) and (points <= np.array(cell)).all(axis=1).any():
            count += 1
    return count


def test_hand_examples():
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == 6
    assert hypervolume([(1, 1)], (4, 4)) == 9
    assert hypervolume([(1, 1), (2, 2)], (4, 4)) == 9                  # a dominated point adds nothing
    assert hypervolume([(5, 1), (1, 4)], (4, 4)) == 0                  # outside (or on) the reference box
    assert hypervolume([], (1, 1)) == 0
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == 6
    assert hypervolume([(1,), (3,)], (4,)) == 3


@pytest.mark.parametrize("d", [2, 3, 4])
def test_exact_against_brute_force_on_random_sets(d):
    rng = np.random.default_rng(d)
    for _ in range(60 if d < 4 else 25):
        n = int(rng.integers(0, 9))
        pts = rng.integers(-3, 5, size=(n, d))
        ref = rng.integers(0, 6, size=d)
        assert hypervolume(pts.tolist(), ref.tolist()) == pytest.approx(brute_cells(pts, ref)), (pts, ref)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_exact_against_optunas_own_on_random_floats(d):
    """optuna._hypervolume.compute_hypervolume (private; the reason ours exists): same numbers."""
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(10 + d)
    for _ in range(30):
        pts = rng.normal(size=(int(rng.integers(1, 30)), d))
        ref = np.full(d, 2.5)
        inside = pts[(pts < ref).all(axis=1)]
        want = compute_hypervolume(inside, ref) if len(inside) else 0.0
        assert hypervolume(pts.tolist(), ref.tolist()) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_the_objectives_hypervolume_in_their_directions():
    """Gain maximised from reference 0, forgetting minimised to reference 1 (the budget); infeasible
    trials, trials outside the box and failed ones add nothing."""
    obj = Objectives()
    assert dict(obj.reference) == {"medmcqa_gain_pp": 0.0, "forgetting": 1.0}
    rows = [{"medmcqa_gain_pp": 10.0, "forgetting": -1.0},          # box 10 × 2
            {"medmcqa_gain_pp": 5.0, "forgetting": -3.0},           # adds 5 × 2 below it
            {"medmcqa_gain_pp": 30.0, "forgetting": 4.0},           # beyond the budget: nothing
            {"medmcqa_gain_pp": -2.0, "forgetting": -9.0},          # lost gain: nothing
            {O.COST_S: 5.0}]                                        # a failed trial
    assert obj.hypervolume(rows) == pytest.approx(20 + 10)
    assert obj.front_size(rows) == 4                                # front in any box: all but the failed one
    con = obj.with_constraints([O.Constraint("forgetting", ">=", -2.0)])
    assert con.hypervolume(rows) == pytest.approx(20)
    prog = obj.progress(rows)
    assert [p["trials"] for p in prog] == [1, 2, 3, 4, 5]
    assert [p[O.HYPERVOLUME] for p in prog] == pytest.approx([20, 30, 30, 30, 30])
    assert prog[-1][O.COMPUTE] == 5.0
    assert Objectives().with_objective(O.COST_S).hypervolume(rows) is None   # a cost without a reference


# ---- the parent run's progress metrics -----------------------------------------------------------------
RUNS = [  # (gain, TriviaQA Δ, WikiText Δ %, device-seconds); None = failed after that many seconds
    (10, -1, 1, 100.0), (12, -2, -4, 300.0), ("fail", 50.0), (8, 0, 0, 200.0), (14, -2, -2, 400.0)]


def _trial(tid: str, spec, res, stage: str = "search"):
    from smf_sweep.trial import outcome
    from tests.test_objectives import after_of

    config = {"method": "lora", "lora.rank": 4, "lora.alpha": 8, "lora.lr": 1e-3, "stage": stage}
    if res[0] == "fail":
        last = {"failure_reason": "boom", "trial_failed": 1, O.COST_S: res[1]}
    else:
        last = {**outcome(spec, BASE, after_of(*res[:3])), O.COST_S: res[3], "trial_id": tid}
    return SimpleNamespace(trial_id=tid, config=config if stage == "search" else {"point": config},
                           last_result=last, error_file="/nonexistent", get_error=lambda: "boom")


def _logger(spec, uri, experiment):
    from smf_sweep.tracking import MLflowTrialLogger
    from smf_sweep.tune import Describe

    lg = MLflowTrialLogger({"uri": uri, "experiment": experiment, "sweep": spec.name,
                            "spec_hash": spec.spec_hash()}, Describe(spec))
    lg.setup()
    return lg


def _end(lg, t):
    lg.on_trial_start(0, [], t)
    if t.last_result.get("trial_failed"):
        lg.on_trial_error(0, [], t)
    else:
        lg.on_trial_complete(0, [], t)


def test_each_ended_search_trial_logs_the_progress_and_a_resumed_driver_continues(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from analysis.runs import load as load_runs, progress_of
    from analysis.source import resolve
    from smf_sweep.tracking import SweepTracker

    monkeypatch.chdir(tmp_path)
    spec = load(tmp_path / "sweeps", [])
    sweep = spec.sweep_dir()
    sweep.mkdir(parents=True)
    uri, experiment = f"sqlite:///{sweep / 'mlflow.db'}", f"smf_sweep/{spec.name}"
    (sweep / "sweep.json").write_text(json.dumps({"name": spec.name, "tracking_uri": uri, "experiment_name": experiment,
                                                  "spec_hash": spec.spec_hash()}))
    tracker = SweepTracker(uri, experiment, spec.name, spec.spec_hash())
    obj = tracker.log_sweep(spec.to_dict(), BASE, None)
    lg = _logger(spec, uri, experiment)
    for i, res in enumerate(RUNS[:3]):
        _end(lg, _trial(f"t{i}", spec, res))
    _end(lg, _trial("c0", spec, RUNS[0], stage="confirm"))       # a confirm re-run: not the search's progress
    lg = _logger(spec, uri, experiment)                         # the driver stopped; the resumed one goes on
    for i, res in enumerate(RUNS[3:], start=3):
        _end(lg, _trial(f"t{i}", spec, res))

    rows = [_trial(f"t{i}", spec, r).last_result for i, r in enumerate(RUNS)]
    want = obj.progress(rows)
    client = MlflowClient(uri)
    hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(tracker.parent_id, k))
            for k in (O.HYPERVOLUME, O.COMPUTE, O.HYPERVOLUME_BY_COMPUTE, O.FRONT_SIZE)}
    assert [s for s, _ in hist[O.COMPUTE]] == [1, 2, 3, 4, 5]
    assert [v for _, v in hist[O.COMPUTE]] == pytest.approx([100, 400, 450, 650, 1050])
    assert [v for _, v in hist[O.HYPERVOLUME]] == pytest.approx([p[O.HYPERVOLUME] for p in want])
    assert hist[O.HYPERVOLUME_BY_COMPUTE] == [(round(p[O.COMPUTE]), pytest.approx(p[O.HYPERVOLUME])) for p in want]
    # by hand: t0 (10, 1) is on the budget's edge (adds 0); t1 (12, −1) adds 12 × 2; t4 (14, 0) 2 × 1 more
    assert [v for _, v in hist[O.HYPERVOLUME]] == pytest.approx([0, 24, 24, 24, 26])
    assert [v for _, v in hist[O.FRONT_SIZE]] == [1, 1, 1, 1, 2]      # t1 dominates t0 and t3
    # a failed trial's run has its compute
    exp = client.get_experiment_by_name(experiment)
    (failed,) = client.search_runs([exp.experiment_id], "tags.trial_id = 't2'")
    assert failed.info.status == "FAILED" and failed.data.metrics[O.COST_S] == 50.0

    # analysis: the logged history, and the same numbers recomputed from the trial runs
    s = load_runs(resolve(str(sweep)))
    assert s.progress_source == "parent run"
    assert list(s.progress["trials"]) == [1, 2, 3, 4, 5]
    assert list(s.progress[O.HYPERVOLUME]) == pytest.approx([0, 24, 24, 24, 26])
    again = progress_of(s.trials, s.objectives)
    for c in ("trials", O.COMPUTE, O.HYPERVOLUME, O.FRONT_SIZE):
        assert list(again[c]) == pytest.approx(list(s.progress[c])), c

    from analysis.pareto import main

    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    assert main([str(sweep), "--out", str(tmp_path / "a")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "a" / "hypervolume.png").size == (1200, 450)
    table = (tmp_path / "a" / "table.md").read_text()
    assert "hypervolume of the search's front: 26 after 5 ended trials" in table
    assert "compute: 0.319 device-hours" in table          # 1050 + the confirm run's 100 = 1150 s


# ---- the loop's running token total ------------------------------------------------------------------
def test_train_tokens_is_a_running_total_kept_across_a_resume(tiny_world, tmp_path):
    import torch

    from smf_sweep.batching import Batcher, medmcqa_examples
    from smf_sweep.data import load_medmcqa
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig, run_stage

    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-3, max_steps=6, warmup_steps=1, micro_batch_size=4, effective_batch=8, max_len=64,
                      log_every=3, checkpoint_every=2)
    batcher = Batcher(medmcqa_examples(load_medmcqa(f"world:{tiny_world}", "train")), tok, micro_batch_size=4,
                      max_len=64)
    want = [int(batcher.micro_batch(i)["attention_mask"].sum()) for i in range(6 * cfg.accumulation())]

    def setup():
        model = load_model(tiny_world / "model", dtype="float32", device="cpu")
        ctx = SetupContext(tok, cfg, 6, torch.device("cpu"), cache_dir=tmp_path)
        return METHODS["lora"].setup(model, METHODS["lora"].Config(rank=4, alpha=8), ctx)

    logs, kept = [], tmp_path / "ckpt4"

    def report(metrics, ckpt):
        logs.append(metrics)
        if ckpt is not None and metrics["train/step"] == 4:
            shutil.copytree(ckpt, kept)

    last = run_stage(setup(), batcher, cfg, report)
    per_step = [sum(want[s * 2:(s + 1) * 2]) for s in range(6)]
    assert [m["train/tokens"] for m in logs if "train/tokens" in m] == [sum(per_step[:3]), sum(per_step)]
    assert last["train/tokens"] == sum(want)
    assert json.loads((kept / "loop.json").read_text())["tokens"] == sum(per_step[:4])   # a checkpoint between logs
    resumed = run_stage(setup(), batcher, cfg, lambda m, c: None, resume_dir=kept)
    assert resumed["train/tokens"] == sum(want)


# ---- one real sweep ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_sweep_logs_cost_and_progress(world, tmp_path):
    """`python -m smf_sweep.tune` (Ray Tune + Train on the embedded world), nats forgetting and a
    TriviaQA constraint: every trial run has its device-seconds and tokens, the parent run a
    hypervolume per ended trial that analysis reads back."""
    from mlflow import MlflowClient

    from analysis.runs import load as load_runs, progress_of
    from analysis.source import resolve
    from smf_sweep.spec import load_spec

    storage = tmp_path / "sweeps"
    sets = ["train.max_steps=6", "train.log_every=3", "methods.smf.fixed.background_batches=20", "search.trials=0",
            "methods.full.points=[]", "methods.smf.points=[{n_keys: 16, top_t: 16, selector: kl, lr: 0.01}]",
            "forgetting.definition=nats", "constraints={triviaqa/delta: '>= -50'}"]
    cmd = [sys.executable, "-m", "smf_sweep.tune", str(SMOKE), "--storage", str(storage), "--quiet", "--json",
           *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    spec = load_spec(SMOKE, [f"storage={storage}", *sets])
    obj = Objectives.from_spec(spec)
    assert obj.names == ("medmcqa_gain_pp", "wikitext_nats", "triviaqa_drop_pp")
    assert summary["compute_s"] > 0 and "hypervolume of the front" in r.stdout
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], "tags.`smf_sweep.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        assert m[O.COST_S] > 0 and m[O.COST_S] == pytest.approx(m["trial_seconds"])     # one worker, one CPU
        assert m[O.COST_TOKENS] > 0 and "wikitext_nats" in m and "triviaqa_drop_pp" in m
        tokens = [x.value for x in client.get_metric_history(run.info.run_id, "train/tokens")]
        assert tokens == sorted(tokens) and tokens[-1] == m[O.COST_TOKENS]
    s = load_runs(resolve(str(spec.sweep_dir())))
    assert s.progress_source == "parent run" and list(s.progress["trials"]) == [1, 2]
    again = progress_of(s.trials, s.objectives)
    assert list(again[O.HYPERVOLUME]) == pytest.approx(list(s.progress[O.HYPERVOLUME]))
    assert summary["hypervolume"] == pytest.approx(s.progress[O.HYPERVOLUME].iloc[-1])
    assert math.isfinite(summary["hypervolume"])
