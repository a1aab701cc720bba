"""The sweep end to end on the embedded world: real Ray Tune + Train, real Optuna (SQLite), real
MLflow (SQLite, and a real `mlflow server`), resume after an interrupted driver, and the analysis
command on the store the sweep wrote. Training is shortened with --set; everything else is the
shipped smoke spec."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHORT = ["train.max_steps=12", "train.log_every=4", "methods.smf.fixed.retrofit.max_steps=6",
         "methods.smf.fixed.background_batches=40"]


def sweep_cmd(storage: Path, *extra: str) -> list[str]:
    sets = [a for s in SHORT for a in ("--set", s)]
    return [sys.executable, "-m", "smf_sweep.tune", "search_spaces/smoke.yaml", "--storage", str(storage),
            "--quiet", "--json", *sets, *extra]


def run(cmd, timeout=1500, **kw):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"exit {r.returncode}\nSTDOUT\n{r.stdout[-3000:]}\nSTDERR\n{r.stderr[-5000:]}"
    return r


def optuna_trials(sweep: Path):
    import optuna
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def mlflow_trials(uri: str, experiment: str = "smf_sweep/smoke"):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string="tags.`smf_sweep.role` = 'trial'")


@pytest.fixture(scope="module")
def smoke(world, tmp_path_factory):
    """The smoke sweep (4 study points + 2 Optuna trials), SQLite MLflow store."""
    storage = tmp_path_factory.mktemp("sweeps")
    t0 = time.time()
    r = run(sweep_cmd(storage))
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    return {"dir": storage / "smoke", "summary": summary, "seconds": time.time() - t0, "stdout": r.stdout}


def test_smoke_sweep_covers_methods_and_selectors(smoke):
    runs = mlflow_trials(smoke["summary"]["tracking_uri"])
    assert len(runs) == 6
    assert {r.data.tags["method"] for r in runs} == {"smf", "lora", "full"}
    assert {r.data.tags["selector"] for r in runs if r.data.tags["method"] == "smf"} >= {"kl", "tfidf"}
    defaults = [r for r in runs if r.data.tags["smf_sweep.default_point"] == "true"]
    assert len(defaults) == 4


def test_every_trial_has_both_objectives_in_optuna_and_mlflow(smoke):
    import optuna
    trials = optuna_trials(smoke["dir"])
    assert len(trials) == 6
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, t
        assert len(t.values) == 2 and all(v == v for v in t.values)
    for r in mlflow_trials(smoke["summary"]["tracking_uri"]):
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        for k in ("medmcqa_gain_pp", "forgetting", "medmcqa/before", "medmcqa/after", "wikitext/delta",
                  "triviaqa/delta"):
            assert k in m, (k, sorted(m))
        assert abs(m["medmcqa_gain_pp"] - 100 * (m["medmcqa/after"] - m["medmcqa/before"])) < 1e-6
        hist = __import__("mlflow").tracking.MlflowClient(smoke["summary"]["tracking_uri"]).get_metric_history(
            r.info.run_id, "train/loss")
        assert len(hist) >= 2 and hist[-1].step == 12          # per-step training metrics
        assert r.data.params["method"] == r.data.tags["method"] and "lr" in r.data.params and "train.epochs" in r.data.params


def test_sweep_dir_and_parent_run(smoke):
    d = smoke["dir"]
    for f in ("spec.json", "sweep.json", "optuna.db", "mlflow.db"):
        assert (d / f).exists(), f
    info = json.loads((d / "sweep.json").read_text())
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=info["tracking_uri"])
    exp = c.get_experiment_by_name(info["experiment_name"])
    (parent,) = c.search_runs([exp.experiment_id], filter_string="tags.`smf_sweep.role` = 'sweep'")
    assert {"base/medmcqa", "base/wikitext", "base/triviaqa"} <= set(parent.data.metrics)
    assert "Pareto-optimal" in smoke["stdout"]


def test_analysis_on_the_sweep_store(smoke, tmp_path):
    out = tmp_path / "analysis"
    run([sys.executable, "-m", "analysis.pareto", str(smoke["dir"]), "--out", str(out)], timeout=300)
    for f in ("pareto.png", "pareto.html", "fronts.csv", "table.md"):
        assert (out / f).stat().st_size > 500, f
    table = (out / "table.md").read_text()
    assert "smf" in table and "lora" in table and "full" in table and "base" in table.lower()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_logs_to_a_real_mlflow_server(world, tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        from smf_sweep.tracking import check_tracking_uri
        for _ in range(120):
            try:
                check_tracking_uri(uri, timeout=1)
                break
            except Exception:
                time.sleep(1)
        run(sweep_cmd(tmp_path / "sweeps", "--tracking-uri", uri, "--set", "search.trials=0",
                      "--set", "methods.full.points=[]", "--set", "methods.smf.points=[{n_keys: 16, top_t: 16, selector: kl, lr: 0.01}]",
                      "--set", "confirm.top=1", "--set", "confirm.seeds=[1]"))
        runs = mlflow_trials(uri)
        assert {r.data.tags["method"] for r in runs} == {"smf", "lora"}
        assert all(r.info.status == "FINISHED" and "forgetting" in r.data.metrics for r in runs)
        confirm = [r for r in runs if r.data.tags.get("stage") == "confirm"]      # the confirm stage
        assert len(runs) == 3 and len(confirm) == 1 and confirm[0].data.params["seed"] == "1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_interrupted_sweep_resumes_without_repeating_trials(world, tmp_path):
    """Kill the driver once two trials have finished; re-run the same command; the finished trials
    are not trained again and the study ends with every trial, none RUNNING."""
    import optuna
    storage = tmp_path / "sweeps"
    cmd = sweep_cmd(storage, "--set", "search.concurrency=1", "--set", "search.trials=1",
                    "--set", "methods.full.points=[]", "--set", "methods.smf.points=[{n_keys: 16, top_t: 16, selector: kl, lr: 0.01}]")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = storage / "smoke"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            done = []
            if (sweep / "optuna.db").exists():
                try:
                    done = [t for t in optuna_trials(sweep) if t.state == optuna.trial.TrialState.COMPLETE]
                except Exception:
                    pass
            if len(done) >= 2:
                break
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(2)
        assert len(done) >= 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = [r for r in mlflow_trials(f"sqlite:///{sweep / 'mlflow.db'}") if r.info.status == "FINISHED"]
    r = run(cmd)
    assert "resuming sweep" in r.stdout + r.stderr
    from test_cluster_sweep import check_resumed
    check_resumed(sweep, mlflow_trials(f"sqlite:///{sweep / 'mlflow.db'}"), finished_before, n=3)
