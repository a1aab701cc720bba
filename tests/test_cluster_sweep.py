"""The sweep on a real local multi-node Ray cluster (a head and a worker node on 127.0.0.1, token
auth, an `mlflow server`), submitted with `ray job submit --working-dir .`: trials spread over the
nodes (from Ray's own actor records), every trial reaches the MLflow server, a job driver stopped
mid-sweep resumes on resubmission, and a worker node killed mid-trial does not lose the sweep."""
from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHORT = ["train.max_steps=40", "train.log_every=10", "methods.smf.fixed.background_batches=40"]


@pytest.fixture(scope="module")
def cluster(world):
    from cluster.local import LocalCluster
    # one CPU per node: two trials at once must use both nodes
    with LocalCluster(workers=1, head_cpus=1, worker_cpus=1, mlflow=True) as c:
        yield c


def submit(c, storage: Path, name: str, *sets: str, wait: bool = True) -> subprocess.CompletedProcess:
    entry = ["python", "-m", "smf_sweep.tune", "search_spaces/smoke.yaml", "--storage", str(storage),
             "--tracking-uri", c.mlflow_uri, "--quiet", "--set", f"name={name}"]
    for s in [*SHORT, *sets]:
        entry += ["--set", s]
    env = json.dumps({"env_vars": {"SMF_SWEEP_ORPHAN_PG_S": "45"}})   # free a lost node's groups sooner
    argv = c.job_submit_argv(entry, working_dir=str(ROOT), extra=["--runtime-env-json", env, *([] if wait else ["--no-wait"])])
    return subprocess.run(argv, env=c.client_env(), capture_output=True, text=True, timeout=1500, cwd=ROOT)


def job_id(r: subprocess.CompletedProcess) -> str:
    for tok in (r.stdout + r.stderr).replace("'", " ").split():
        if tok.startswith("raysubmit_"):
            return tok
    raise AssertionError(r.stdout + r.stderr)


def finished_runs(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(f"smf_sweep/{name}")
    if exp is None:
        return []
    return [r for r in c.search_runs([exp.experiment_id], filter_string="tags.`smf_sweep.role` = 'trial'")]


def wait_for(pred, timeout: float, what: str, every: float = 3.0):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def optuna_states(sweep: Path) -> list[str]:
    import optuna
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]


def test_stopped_job_driver_resumes_on_resubmission(cluster, tmp_path):
    name, sets = "resume", ["search.trials=0", "methods.full.points=[]"]      # 3 study points
    r = submit(cluster, tmp_path, name, *sets, wait=False)
    jid = job_id(r)
    done = lambda: [x for x in finished_runs(cluster.mlflow_uri, name) if x.info.status == "FINISHED"]  # noqa: E731
    first = wait_for(done, 900, "a finished trial")
    stop = subprocess.run(["ray", "job", "stop", "--address", cluster.dashboard_url, jid], env=cluster.client_env(),
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    r2 = submit(cluster, tmp_path, name, *sets)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "resuming sweep" in r2.stdout + r2.stderr
    check_resumed(tmp_path / name, finished_runs(cluster.mlflow_uri, name), first, n=3)


def check_resumed(sweep: Path, runs: list, finished_before: list, n: int) -> None:
    """After a resume: n configs finished exactly once each, the runs finished before the stop kept,
    nothing RUNNING in Optuna or MLflow; a trial the stopped driver had started but Tune never
    recorded is FAIL in Optuna and KILLED (with its reason) in MLflow, and its config ran again."""
    states = optuna_states(sweep)
    assert states.count("COMPLETE") == n and "RUNNING" not in states, states
    done = [x for x in runs if x.info.status == "FINISHED"]
    assert len(done) == n
    configs = [tuple(sorted((k, v) for k, v in x.data.params.items() if k != "seed")) for x in done]
    assert len(set(configs)) == n, "a finished configuration was trained again"
    assert {x.info.run_id for x in finished_before} <= {x.info.run_id for x in done}
    for x in runs:
        assert x.info.status in ("FINISHED", "KILLED"), x.info.status
        if x.info.status == "KILLED":
            assert "interrupted" in x.data.tags["failure_reason"]


def test_sweep_spreads_over_nodes_and_survives_a_lost_node(cluster, tmp_path):
    from ray.util.state import list_actors, list_nodes

    name = "cluster"
    t0 = time.time()
    r = submit(cluster, tmp_path, name, wait=False)
    jid = job_id(r)
    with cluster.connect():
        nodes = {n.node_id: n for n in list_nodes(detail=True)}
        worker_node = next(i for i, n in nodes.items() if "node_w1" in (n.resources_total or {}))
        first = wait_for(lambda: [x for x in finished_runs(cluster.mlflow_uri, name) if x.info.status == "FINISHED"],
                         900, "a finished trial")
        wait_for(lambda: [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                                 detail=True) if a.node_id == worker_node], 600, "a trial on the worker node", 1)
        time.sleep(5)                                             # mid-trial
        assert cluster.stop_node("w1") > 0
        try:
            status = wait_for(lambda: _job_status(cluster, jid) in ("SUCCEEDED", "FAILED", "STOPPED") and _job_status(cluster, jid),
                              1500, "the job to end", 5)
        except AssertionError as e:               # say where it hung: the driver's log and the groups
            from ray.util.placement_group import placement_group_table
            groups = {g[:8]: (v["state"], v["stats"].get("scheduling_attempt")) for g, v in placement_group_table().items()}
            raise AssertionError(f"{e}; placement groups {groups}\n{_job_logs(cluster, jid)[-4000:]}") from None
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=10000)
        used = {a.node_id for a in workers}
    label = {i: next((k for k in (n.resources_total or {}) if k.startswith("node_")), i[:8]) for i, n in nodes.items()}
    logs = _job_logs(cluster, jid)
    assert status == "SUCCEEDED", logs[-4000:]
    assert worker_node in used and len(used) >= 2, "trials did not run on more than one node"
    runs = finished_runs(cluster.mlflow_uri, name)
    assert len(runs) == 6
    by_status = {}
    for x in runs:
        by_status.setdefault(x.info.status, []).append(x)
    # One CPU per node and two trials at once: when w1 goes, at most two trials lose an actor there, the
    # one whose Train worker ran on it and the one whose driver did (a driver reserves no CPU and may
    # sit on any node, tune.driver_resources; `search.driver_resource` keeps drivers off nodes that can
    # go: tests/test_cluster_configs.py). Each is recorded FAILED with its reason; every other finishes.
    for x in by_status.get("FAILED", []):
        assert x.data.tags.get("failure_reason")
    assert len(by_status.get("FAILED", [])) <= 2 and len(by_status.get("FINISHED", [])) >= 4, \
        {k: len(v) for k, v in by_status.items()}
    for x in first:                                           # finished before the fault: still there
        again = next(y for y in runs if y.info.run_id == x.info.run_id)
        assert again.info.status == "FINISHED" and "forgetting" in again.data.metrics
    assert "RUNNING" not in optuna_states(tmp_path / name)
    print(json.dumps({"cluster_sweep_seconds": round(time.time() - t0), "nodes_used": len(used),
                      "train_workers_per_node": dict(Counter(label.get(a.node_id, a.node_id[:8]) for a in workers)),
                      "statuses": {k: len(v) for k, v in by_status.items()}}))


def _job_logs(c, jid: str) -> str:
    return subprocess.run(["ray", "job", "logs", "--address", c.dashboard_url, jid], env=c.client_env(),
                          capture_output=True, text=True, timeout=120).stdout


def _job_status(c, jid: str) -> str:
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(c.dashboard_url, headers={"Authorization": f"Bearer {c.token}"})
    return str(client.get_job_status(jid).value)
