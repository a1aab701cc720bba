"""Cluster hygiene (issue 12): trial drivers only on nodes that are never preempted
(`search.driver_resource`, declared by the head / on-demand node types and cluster.local's head) and
checked before any trial starts; Tune-level retries (`search.trial_retries`) that resume the trial's
Ray Train run from its checkpoint; multi-worker runs packed on one node; MLflow on the ray-up head
bound to 127.0.0.1; the HF cache on shared storage; the KubeRay MLflow pod owning its directories;
dependency bounds the code needs."""
from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SMOKE = REPO / "search_spaces" / "smoke.yaml"
RAY_UP = ["aws-gpu.yaml", "gcp-gpu.yaml"]
if str(REPO) not in sys.path:            # `cluster` is a checkout package, not part of the wheel
    sys.path.insert(0, str(REPO))

from cluster.local import DRIVER_RESOURCE, LocalCluster, NodeInfo  # noqa: E402
from smf_sweep.spec import Resources, SpecError, load_spec  # noqa: E402


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    sched = node_config.get("scheduling", {})
    return bool(aws or isinstance(sched, dict) and (sched.get("provisioningModel") == "SPOT" or sched.get("preemptible")))


# ----------------------------------------------------------------------------------------------
# the spec keys
# ----------------------------------------------------------------------------------------------
def test_spec_parses_trial_retries_and_driver_resource(tmp_path):
    spec = load_spec(SMOKE, [f"storage={tmp_path}"])
    assert spec.search.trial_retries == 0 and spec.search.driver_resource is None    # CPU specs: as before
    spec = load_spec(SMOKE, ["search.trial_retries=2", "search.driver_resource=smf_driver", f"storage={tmp_path}"])
    assert spec.search.trial_retries == 2 and spec.search.driver_resource == "smf_driver"
    assert load_spec(SMOKE, ["search.driver_resource=null"]).search.driver_resource is None


@pytest.mark.parametrize("override, words", [
    ("search.trial_retries=-1", ["search", "trial_retries >= 0"]),
    ("search.trial_retries=one", ["search.trial_retries", "integer"]),
    ("search.driver_resource=CPU", ["search.driver_resource", "custom Ray resource"]),
    ("search.driver_resource='{a: 1}'", ["search.driver_resource"]),
])
def test_bad_retry_and_driver_settings_fail_before_ray(override, words):
    with pytest.raises(SpecError) as e:
        load_spec(SMOKE, [override])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_drivers_take_a_sliver_of_the_driver_resource(tmp_path):
    from smf_sweep.tune import DRIVER_SHARE, driver_resources

    plain = driver_resources(load_spec(SMOKE, [f"storage={tmp_path}"]))
    assert plain == {"cpu": 0, "memory": 64 * 2 ** 20}          # no CPU: trials are placed by their workers
    pinned = driver_resources(load_spec(SMOKE, ["search.driver_resource=smf_driver", f"storage={tmp_path}"]))
    assert pinned == {**plain, "smf_driver": DRIVER_SHARE} and 0 < DRIVER_SHARE <= 0.001

    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
    (bundle,) = resource_dict_to_pg_factory(pinned).bundles        # what Tune reserves per trial
    assert bundle["smf_driver"] == DRIVER_SHARE and bundle.get("CPU", 0) == 0


def test_both_tuners_take_max_failures_from_the_spec(tmp_path):
    from smf_sweep import tune as tune_mod

    for n in (0, 3):
        spec = load_spec(SMOKE, [f"search.trial_retries={n}", f"storage={tmp_path}"])
        rc = tune_mod.tune_run_config(spec, "x", tmp_path / "tune", [], progress=False)
        assert rc.failure_config.max_failures == n
        assert rc.name == "x" and rc.storage_path == str(tmp_path / "tune")
    src = inspect.getsource(tune_mod)
    assert src.count("tune_run_config(spec,") == 2, "the search and the confirm Tuner"
    assert "tune.RunConfig(" not in src.replace("return tune.RunConfig(", ""), "a Tuner config not built by tune_run_config"
    assert "tune.with_resources(tune.with_parameters(sweep_trial, spec=spec, base=base), driver_resources(spec))" in src


def test_janitor_frees_the_failed_attempts_groups_when_tune_retries():
    from smf_sweep.janitor import PlacementGroupJanitor

    j, freed = PlacementGroupJanitor(), []
    j.release = lambda trial_id: freed.append(trial_id) or []
    j.on_trial_recover(0, [], SimpleNamespace(trial_id="t1"))
    assert freed == ["t1"]


# ----------------------------------------------------------------------------------------------
# the driver resource on a real (in-process) Ray instance
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_here():
    import ray

    ray.init(num_cpus=2, resources={DRIVER_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_janitor_without_a_dashboard_stops_sweeping_at_once(ray_here):
    """No dashboard on this cluster: the janitor must not ask the default port (another instance's
    dashboard could answer with its actors, and this cluster's live groups would look empty)."""
    from smf_sweep.janitor import PlacementGroupJanitor

    j = PlacementGroupJanitor()
    assert j.sweep_empty(0.0) == [] and not j.state_api and "no dashboard" in j.state_errors[0]


def test_a_missing_driver_resource_fails_the_sweep_before_anything_starts(ray_here, tmp_path, capsys):
    from smf_sweep.tune import check_driver_resource, main, run_sweep

    check_driver_resource(load_spec(SMOKE, [f"search.driver_resource={DRIVER_RESOURCE}", f"storage={tmp_path}"]))
    spec = load_spec(SMOKE, ["search.driver_resource=spot_proof", f"storage={tmp_path}", "name=nores"])
    with pytest.raises(SpecError) as e:
        run_sweep(spec, progress=False)
    msg = str(e.value)
    assert "'spot_proof'" in msg and "search.driver_resource" in msg and DRIVER_RESOURCE in msg, msg
    sweep = tmp_path / "nores"
    assert not (sweep / "tune").exists() and not (sweep / "spec.json").exists(), "failed after the sweep started"

    rc = main([str(SMOKE), "--set", "search.driver_resource=spot_proof", "--storage", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "spot_proof" in err, err


@pytest.mark.slow
def test_a_retried_trial_resumes_its_train_run_from_the_checkpoint(ray_here, tmp_path):
    """The sweep's shape (sweep_trial): a Tune driver on the driver resource runs a Ray Train run
    named after its trial id. The run dies after a checkpoint (Train's own retries off), the driver
    fails, Tune retries it (search.trial_retries) and the new Train run starts from the checkpoint.
    Tune tells callbacks (MLflowTrialLogger, the janitor) on_trial_recover, not on_trial_error, and
    completes the trial once."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer

    from smf_sweep.tune import driver_resources, tune_run_config

    spec = load_spec(SMOKE, ["search.trial_retries=1", f"search.driver_resource={DRIVER_RESOURCE}",
                             f"storage={tmp_path}"])
    log, marker, storage = tmp_path / "starts.jsonl", tmp_path / "crashed", str(tmp_path / "train")

    def train_fn(cfg):
        import tempfile

        ckpt = ray.train.get_checkpoint()
        start = json.loads((Path(ckpt.to_directory()) / "s.json").read_text())["step"] if ckpt else 0
        with open(cfg["log"], "a") as f:
            f.write(json.dumps({"start": start}) + "\n")
        for step in range(start + 1, 5):
            d = tempfile.mkdtemp()
            Path(d, "s.json").write_text(json.dumps({"step": step}))
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(d))
            if step == 2 and not Path(cfg["marker"]).exists():
                Path(cfg["marker"]).touch()
                raise RuntimeError("node lost")

    def driver(config):
        name = f"train-{tune.get_context().get_trial_id()}"          # as sweep_trial names it
        r = TorchTrainer(train_fn, train_loop_config={"log": str(log), "marker": str(marker)},
                         scaling_config=ray.train.ScalingConfig(num_workers=1),
                         run_config=ray.train.RunConfig(name=name, storage_path=storage,
                                                        failure_config=ray.train.FailureConfig(max_failures=0))).fit()
        tune.report({"final_step": r.metrics["step"], "node": ray.get_runtime_context().get_node_id()})

    class Events(tune.Callback):
        def __init__(self):
            self.seen = []

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.seen.append("recover")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.seen.append("error")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.seen.append("complete")

    events = Events()
    grid = tune.Tuner(tune.with_resources(driver, driver_resources(spec)),
                      run_config=tune_run_config(spec, "retry", tmp_path / "tune", [events], progress=False)).fit()
    (res,) = list(grid)
    assert res.error is None, res.error
    assert res.metrics["final_step"] == 4
    assert [json.loads(l)["start"] for l in log.read_text().splitlines()] == [0, 2]
    assert events.seen == ["recover", "complete"]


# ----------------------------------------------------------------------------------------------
# the driver resource in the cluster configs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_declares_the_driver_resource_only_where_nothing_is_preempted(name):
    cfg = _load(name)
    for k, t in cfg["available_node_types"].items():
        has = t["resources"].get(DRIVER_RESOURCE, 0)
        if k == cfg["head_node_type"] or not _is_spot(t["node_config"]):
            assert has >= 1, f"{k}: never preempted, so it must take trial drivers"
        else:
            assert not has, f"{k}: a spot type must not take trial drivers"


def test_kuberay_head_alone_declares_the_driver_resource():
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

    (job,) = [d for d in _docs("kuberay-rayjob.yaml") if d["kind"] == "RayJob"]
    rc = job["spec"]["rayClusterSpec"]
    head = rc["headGroupSpec"]["rayStartParams"]
    assert _get_custom_resources({}, head, "head").get(DRIVER_RESOURCE, 0) >= 1      # Ray's own parser of the format
    for g in rc["workerGroupSpecs"]:          # spot-preferred groups: no drivers
        assert DRIVER_RESOURCE not in _get_custom_resources({}, g.get("rayStartParams", {}), g["groupName"])


def test_local_cluster_head_declares_the_driver_resource():
    c = LocalCluster(workers=1)

    def resources(node):
        args = c._common_args(node)
        return json.loads(args[args.index("--resources") + 1])

    head = NodeInfo("head", "node_head", 2, 0, "/tmp/x/h", "/tmp/x/h.log")
    w1 = NodeInfo("w1", "node_w1", 2, 0, "/tmp/x/w1", "/tmp/x/w1.log")
    assert resources(head) == {"node_head": 1, DRIVER_RESOURCE: 1}
    assert resources(w1) == {"node_w1": 1}


# ----------------------------------------------------------------------------------------------
# multi-worker runs on one node
# ----------------------------------------------------------------------------------------------
def test_multi_worker_runs_are_strictly_packed_on_one_node():
    from smf_sweep import trial

    many = trial.scaling_config(Resources(workers=2, cpus_per_worker=4, gpus_per_worker=1))
    assert many.placement_strategy == "STRICT_PACK" and many.num_workers == 2 and many.use_gpu
    assert many.resources_per_worker == {"CPU": 4, "GPU": 1}
    one = trial.scaling_config(Resources(workers=1, cpus_per_worker=1, gpus_per_worker=0.25))
    assert one.placement_strategy != "STRICT_PACK" and one.resources_per_worker == {"CPU": 1, "GPU": 0.25}
    assert trial.scaling_config(Resources()).use_gpu is False
    assert "scaling_config=scaling_config(res)" in inspect.getsource(trial.run_trial)


# ----------------------------------------------------------------------------------------------
# MLflow and the HF cache on the ray-up configs
# ----------------------------------------------------------------------------------------------
def _mlflow_command(cfg: dict) -> str:
    (cmd,) = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    return cmd


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_mlflow_listens_on_the_heads_loopback_only(name):
    cfg = _load(name)
    cmd = _mlflow_command(cfg)
    assert re.search(r"--host 127\.0\.0\.1\b", cmd) and "0.0.0.0" not in cmd
    assert not re.search(r"--allowed-hosts '[^']*(10\.\*|172\.\*|192\.168\.\*)", cmd), "no private-network hosts"
    assert "mlflow,mlflow:5000" in cmd                   # the alias the driver uses on the head
    workers = " ".join(cfg.get("worker_setup_commands", []) + cfg.get("worker_start_ray_commands", []))
    assert " mlflow" not in workers, "workers never talk to MLflow: trials report through the driver"
    assert any("127.0.0.1 mlflow" in c for c in cfg["head_setup_commands"])


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_hf_cache_is_on_shared_storage(name):
    cfg = _load(name)
    opts = [shlex.split(o) for o in cfg["docker"]["run_options"]]
    env = dict(o[1].split("=", 1) for o in opts if o[0] in ("-e", "--env"))
    mounts = [o[1].split(":")[1] for o in opts if o[0] in ("-v", "--volume")]
    hf = env.get("HF_HOME")
    assert hf and any(hf.startswith(m.rstrip("/") + "/") for m in mounts), (hf, mounts)
    assert any("mount" in c and mounts[0] in c for c in cfg["initialization_commands"])   # the NFS share
    assert any("mkdir -p" in c and hf in c.split() for c in cfg["head_setup_commands"])


def test_kuberay_ray_pods_keep_the_hf_cache_on_the_pvc():
    (job,) = [d for d in _docs("kuberay-rayjob.yaml") if d["kind"] == "RayJob"]
    rc = job["spec"]["rayClusterSpec"]
    for pod in [rc["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["workerGroupSpecs"]]:
        c = pod["containers"][0]
        hf = {e["name"]: e.get("value") for e in c["env"]}["HF_HOME"]
        assert any(hf.startswith(m["mountPath"] + "/") and m["name"] == "shared" for m in c["volumeMounts"])


# ----------------------------------------------------------------------------------------------
# KubeRay MLflow: its directories on the shared volume belong to its user
# ----------------------------------------------------------------------------------------------
def _paths_after(cmd: str, verb: str) -> tuple[list[str], list[str]]:
    """(options, operands) of the first `verb` in a shell `a && b && ...` line."""
    for part in cmd.split("&&"):
        words = shlex.split(part)
        if words and words[0] == verb:
            opts = [w for w in words[1:] if w.startswith("-") or re.fullmatch(r"\d+(:\d+)?|[0-7]{3,4}", w)]
            return opts, [w for w in words[1:] if w not in opts]
    return [], []


def test_kuberay_mlflow_init_container_owns_the_servers_directories():
    (dep,) = [d for d in _docs("kuberay-mlflow.yaml") if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    server = pod["containers"][0]
    cmd = " ".join(server["args"])
    db = re.search(r"--backend-store-uri sqlite:///(/\S+)", cmd).group(1)
    artifacts = re.search(r"--artifacts-destination (\S+)", cmd).group(1)
    need = {os.path.dirname(db), artifacts}

    (init,) = pod["initContainers"]
    assert init["securityContext"]["runAsUser"] == 0
    init_cmd = " ".join(init.get("command", [])[2:] + init.get("args", []))
    mk_opts, made = _paths_after(init_cmd, "mkdir")
    own_opts, owned = _paths_after(init_cmd, "chown")
    assert "-p" in mk_opts
    made_all = {p for m in made for p in [m, *map(str, Path(m).parents)]}
    assert need <= made_all, (need, made)
    assert need <= set(owned), (need, owned)
    assert own_opts and own_opts[0].split(":")[0] == "1000", "the image's user (ray) is uid 1000"
    # it works on the same volume, at the same path, as the server
    by_name = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == by_name
    assert all(any(p.startswith(mp + "/") for mp in by_name.values()) for p in need)
    assert pod["securityContext"]["fsGroup"] == 100
    assert "mkdir" not in cmd and cmd.lstrip().startswith("exec mlflow server")


# ----------------------------------------------------------------------------------------------
# dependency bounds
# ----------------------------------------------------------------------------------------------
def _deps() -> dict:
    try:
        import tomllib
    except ImportError:                       # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.requirements import Requirement

    raw = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: (Requirement(d), d) for d in raw}


def _lowest(req) -> str:
    (low,) = [s.version for s in req.specifier if s.operator == ">="]
    return low


def test_pyproject_lower_bounds_are_what_the_code_uses():
    from packaging.version import Version

    deps = _deps()
    assert Version(_lowest(deps["datasets"][0])) >= Version("4.0")            # datasets.List (data/sources.py)
    assert Version(_lowest(deps["transformers"][0])) >= Version("4.56")       # from_pretrained(dtype=) (models.py)
    assert Version(_lowest(deps["mlflow"][0])) >= Version("3.5")              # mlflow server --allowed-hosts (cluster/*.yaml)
    assert deps["torch"][1] == "torch>=2.4,<2.15"                             # unchanged: the CPU wheel on the build machines


def test_ray_is_pinned_to_the_minor_whose_internals_the_code_touches():
    ray_req = _deps()["ray"][0]
    assert {"default", "tune", "train"} <= ray_req.extras
    for v, ok in (("2.60.0", True), ("2.60.3", True), ("2.59.9", False), ("2.61.0", False), ("3.0.0", False)):
        assert ray_req.specifier.contains(v) is ok, v
    private = [p for p in ("smf_sweep/worker.py", "smf_sweep/janitor.py", "cluster/local.py")
               if re.search(r"ray\.(train\.v2\._internal|_raylet|_private|util\.state)", (REPO / p).read_text())]
    assert private, "no private Ray imports left: the pin could be relaxed"
    import ray
    assert ray_req.specifier.contains(ray.__version__), ray.__version__
    image_ray = re.search(r"^FROM rayproject/ray:([\d.]+)-", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert ray_req.specifier.contains(image_ray), image_ray        # the cluster image's Ray satisfies it
