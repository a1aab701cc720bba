"""A failed trial carries its real reason (exception type and message, the innermost frames) to
Tune, Optuna (user attr failure_reason of the FAIL trial) and MLflow (tag failure_reason, run
FAILED) — it used to arrive as "unknown error" (the error file under the sweep dir is synced only
after Tune's callbacks hear of the error)."""
from __future__ import annotations

import json
import pickle
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from smf_sweep.failures import describe_error, reason_from_text
from smf_sweep.spec import parse_spec

REASON = "ValueError: memory layers (1, 5) out of range for 2 decoder layers"


def _insert_error() -> ValueError:
    """The real error of SMF layers beyond a 2-layer model's depth, raised where the worker raises it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from smf_sweep.memory import MemoryConfig, insert_memory

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    try:
        insert_memory(model, MemoryConfig(layers=(1, 5), n_keys=4, heads=1, k=2, d_k=8))
    except ValueError as e:
        return e
    raise AssertionError("insert_memory accepted layers beyond the depth")


def _worker_group_error(exc: BaseException):
    """What Ray Train raises from fit() when a worker raised `exc`: the traceback survives as text
    only (the exception crossed processes)."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.worker_group.poll import WorkerGroupPollStatus, WorkerStatus

    tb = "".join(traceback.format_exception(exc))
    remote = pickle.loads(pickle.dumps(exc))              # no __traceback__ any more
    status = WorkerGroupPollStatus({0: WorkerStatus(running=False, error=UserExceptionWithTraceback(remote, tb))})
    return status.get_worker_group_error()


def test_the_workers_exception_inside_ray_trains_error():
    err = _worker_group_error(_insert_error())
    reason = describe_error(err)
    lines = reason.splitlines()
    assert lines[0] == REASON, reason
    assert lines[1].startswith("  at smf_sweep/memory/insert.py:") and lines[1].endswith("in insert_memory"), reason
    assert lines[-1] == "  (in the Ray Train worker rank 0)", reason
    # raised through the driver (a local traceback on top), and from the text of Tune's error file
    try:
        raise err
    except Exception as e:
        assert describe_error(e).splitlines()[0] == REASON
        text = "Failure # 1\n" + "".join(traceback.format_exception(e))
    assert reason_from_text(text).splitlines()[:2] == lines[:2]


def test_controller_errors_and_plain_errors():
    from ray.train import ControllerError

    assert describe_error(ControllerError(RuntimeError("boom"))) == "RuntimeError: boom\n  (in the Ray Train controller)"
    try:
        {}["missing"]
    except KeyError as e:
        r = describe_error(e)
    assert r.startswith("KeyError: 'missing'\n  at ") and "test_failures.py" in r, r


def test_ray_system_errors_give_the_inner_exception_line():
    text = ("System error: cannot import name 'Hooks' from 'smf_sweep.methods.base'\ntraceback: Traceback (most recent "
            "call last):\n  File \"/x/smf_sweep/worker.py\", line 21, in <module>\n    from .methods import METHODS\n"
            "ImportError: cannot import name 'Hooks' from 'smf_sweep.methods.base' (/x/smf_sweep/methods/base.py)")
    from ray.exceptions import RaySystemError

    r = describe_error(RaySystemError(text))
    assert r.splitlines()[0].startswith("ImportError: cannot import name 'Hooks'"), r
    assert "  at smf_sweep/worker.py:21 in <module>" in r, r


# ---- Optuna: the FAIL trial's user attr --------------------------------------------------------
def _study_spec(tmp_path):
    return parse_spec({"name": "f", "model": "org/m", "storage": str(tmp_path),
                       "methods": {"lora": {"search": {"lr": {"loguniform": [1e-4, 1e-3]}}}}}, "f.yaml")


def test_safe_optuna_search_records_the_reason_on_the_fail_trial(tmp_path):
    import optuna

    from smf_sweep.tune import make_searcher

    spec = _study_spec(tmp_path)
    spec.sweep_dir().mkdir(parents=True)
    s = make_searcher(spec)
    for tid in ("a", "b", "c"):
        assert s.suggest(tid)["method"] == "lora"
    s.on_trial_result("a", {"train/loss": 1.0})
    s.on_trial_result("a", {"failure_reason": REASON, "trial_failed": 1})     # sweep_trial's report, then raise
    s.on_trial_complete("a", error=True)                                    # Tune: no result with an error
    s.on_trial_complete("b", error=True)                                    # died without a word
    s.on_trial_complete("c", result={"medmcqa_gain_pp": 1.0, "forgetting": float("nan")})
    study = optuna.load_study(study_name=f"f-{spec.spec_hash()}", storage=f"sqlite:///{spec.sweep_dir() / 'optuna.db'}")
    t = {tr.number: tr for tr in study.trials}
    assert all(tr.state == optuna.trial.TrialState.FAIL for tr in t.values())
    assert t[0].user_attrs["failure_reason"] == REASON
    assert "without reporting a reason" in t[1].user_attrs["failure_reason"]
    assert "no finite forgetting" in t[2].user_attrs["failure_reason"]


# ---- MLflow's reason: tracking.failure_reason ------------------------------------------------------
def test_mlflow_reason_prefers_the_reported_reason_then_the_local_error_file(tmp_path):
    from smf_sweep.tracking import failure_reason

    reported = SimpleNamespace(last_result={"failure_reason": REASON}, error_file=None, get_error=lambda: None)
    assert failure_reason(reported) == REASON
    err = tmp_path / "error.txt"          # Tune's local copy, written before callbacks run
    err.write_text("Failure # 1\nTraceback (most recent call last):\n  File \"/a/smf_sweep/trial.py\", line 9, in run\n"
                   "RuntimeError: worker died\n")
    local = SimpleNamespace(last_result={}, error_file=str(err), get_error=lambda: None)
    assert failure_reason(local) == "RuntimeError: worker died\n  at smf_sweep/trial.py:9 in run"
    nothing = SimpleNamespace(last_result=None, error_file=None, get_error=lambda: None)
    assert failure_reason(nothing).startswith("unknown error")


# ---- the real thing: a failing trial through Ray Tune + Train, Optuna and MLflow (SQLite) -------
@pytest.mark.slow
def test_a_failing_trials_reason_reaches_tune_optuna_and_mlflow(tiny_world, tmp_path, monkeypatch):
    """SMF layers beyond the 2-layer model's depth (preflight bypassed, as a bug the preflight cannot
    see would be): the worker raises at setup, and each of the three records says so."""
    import optuna
    import ray
    from mlflow.tracking import MlflowClient

    import smf_sweep.preflight
    from smf_sweep.tune import run_sweep

    monkeypatch.setattr(smf_sweep.preflight, "preflight", lambda spec, **kw: [])
    src = f"world:{tiny_world}"
    spec = parse_spec({
        "name": "fails", "model": str(tiny_world / "model"), "storage": str(tmp_path),
        "data": {"task": src, "retrofit": src, "triviaqa": src, "wikitext": src},
        "probes": {"medmcqa": {"limit": 8}, "wikitext": {"limit": 4}, "triviaqa": {"limit": 4}},
        "train": {"lr": 1e-3, "epochs": 1, "max_steps": 2, "micro_batch_size": 4, "effective_batch": 4, "max_len": 64,
                  "warmup_steps": 0, "log_every": 1, "train_limit": 16},
        "methods": {"smf": {"fixed": {"layers": [1, 5], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6,
                                      "mode": "zero_values", "selector": "tf", "background_batches": 2},
                            "resources": {"workers": 1, "cpus_per_worker": 1}}},
        "search": {"trials": 1, "concurrency": 1, "max_failures": 0}, "threads_per_worker": 1}, "fails.yaml")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(spec, progress=False)
    finally:
        ray.shutdown()
    assert summary["finished"] == 0
    sweep = spec.sweep_dir()

    # Tune: the trial's last result and its error
    (trial_dir,) = [d for d in (sweep / "tune" / "fails").iterdir() if d.is_dir()]
    last = json.loads((trial_dir / "result.json").read_text().strip().splitlines()[-1])
    reason = last["failure_reason"]
    assert reason.startswith(REASON) and "smf_sweep/memory/insert.py" in reason, reason
    assert REASON in (trial_dir / "error.txt").read_text()

    # Optuna: the FAIL trial
    study = optuna.load_study(study_name=f"fails-{spec.spec_hash()}", storage=f"sqlite:///{sweep / 'optuna.db'}")
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["failure_reason"] == reason

    # MLflow: the trial's run FAILED with the reason
    client = MlflowClient(f"sqlite:///{sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smf_sweep/fails")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`smf_sweep.role` = 'trial'")
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == reason


# ---- the driver's report is the trial's last result, after its Train run's reports --------------
@pytest.mark.slow
def test_the_drivers_report_is_the_trials_last_result(tmp_path):
    """With a bare tune.report here, Ray 2.60's Tune actor takes the worker's report out of the
    inter-actor queue while the driver's holds the one-slot result queue, and the trial hangs (every
    trial of this test, measured), or it picks the driver's first, and the worker's becomes the last
    result (the failed trial in CI whose last result had no failure_reason). report_last waits."""
    import ray
    from ray import tune

    def reports_then_driver(config):
        """A Tune trial whose Train run's last report is still in flight when its driver reports:
        the report goes in through Ray's own TuneReportCallback (as the Train controller hands it
        over), then the driver reports at once, as sweep_trial does after fit(). (Defined here so
        that Ray pickles it by value: Ray's workers cannot import this test module.)"""
        from ray.tune.integration.ray_train import TuneReportCallback

        from smf_sweep.tune import report_last

        TuneReportCallback().after_report(run_context=None, metrics=[{"worker_report": 1}], checkpoint=None)
        report_last({"driver_report": 1})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            reports_then_driver, param_space={"i": tune.grid_search(list(range(4)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, time_budget_s=120),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="order", verbose=0)).fit()
    finally:
        ray.shutdown()
    assert len(results) == 4
    for r in results:
        assert r.error is None, r.error
        rows = [json.loads(line) for line in (Path(r.path) / "result.json").read_text().splitlines()]
        assert [("worker_report" in x, "driver_report" in x) for x in rows] == [(True, False), (False, True)], rows
