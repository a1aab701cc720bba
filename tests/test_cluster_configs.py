"""cluster/: the `ray up` configs against Ray's own autoscaler schema, the KubeRay manifests, the
Dockerfile, and (slow) `cluster.local.LocalCluster`, a real 2-node Ray cluster on 127.0.0.1 that
`ray job submit` reaches with token authentication."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
if str(REPO) not in sys.path:            # `cluster` is a checkout package, not part of the wheel
    sys.path.insert(0, str(REPO))

from cluster.local import LocalCluster, cluster_processes  # noqa: E402

IMAGE = "rayproject/ray:2.60.0-py311-gpu"
RAY_UP = ["aws-gpu.yaml", "gcp-gpu.yaml"]


# ----------------------------------------------------------------------------------------------
# `ray up` configs
# ----------------------------------------------------------------------------------------------
def _ray_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _gpus(node_type: dict) -> int:
    return node_type["resources"].get("GPU", 0)


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    sched = node_config.get("scheduling", {})
    gcp = isinstance(sched, dict) and (sched.get("provisioningModel") == "SPOT" or sched.get("preemptible"))
    return bool(aws or gcp)


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_validates_against_rays_schema(name):
    import jsonschema

    jsonschema.validate(_load(name), _ray_schema())


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_passes_rays_own_validation(name):
    """What `ray up` does first: fill the provider's defaults, then validate (Ray's private helpers)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_head_has_no_gpu_and_gpu_workers_scale_from_zero(name):
    cfg = _load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert _gpus(head) == 0 and "GPU" in head["resources"], "declare GPU: 0 on the head explicitly"
    assert not head["node_config"].get("guestAccelerators")
    assert not re.match(r"^(g|p)\d", head["node_config"].get("InstanceType", "")), "GPU instance as head"
    assert not head["node_config"].get("machineType", "").startswith(("g2-", "a2-", "a3-"))
    assert "--num-gpus=0" in " ".join(cfg["head_start_ray_commands"])

    gpu_types = {k: v for k, v in types.items() if k != cfg["head_node_type"] and _gpus(v) >= 1}
    assert gpu_types, "no GPU worker type"
    for k, t in gpu_types.items():
        assert t["min_workers"] == 0, f"{k} must scale from zero"
        assert t["max_workers"] >= 1
    assert sum(t["max_workers"] for t in gpu_types.values()) <= cfg["max_workers"]


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_is_spot_first_with_an_on_demand_fallback(name):
    cfg = _load(name)
    one_gpu = {k: v for k, v in cfg["available_node_types"].items() if _gpus(v) == 1}
    spot = [v for v in one_gpu.values() if _is_spot(v["node_config"])]
    on_demand = [v for v in one_gpu.values() if not _is_spot(v["node_config"])]
    assert spot and on_demand
    # autoscaler v2 (ray up's default) prefers the higher priority among equally good fits
    assert min(v["priority"] for v in spot) > max(v["priority"] for v in on_demand)
    # the same shape, so any trial fits either (on-demand types also take trial drivers: smf_driver)
    shape = lambda r: json.dumps({k: v for k, v in r.items() if k != "smf_driver"}, sort_keys=True)  # noqa: E731
    assert {shape(v["resources"]) for v in one_gpu.values()} == {shape(spot[0]["resources"])}


def test_gcp_gpu_nodes_terminate_on_host_maintenance():
    for k, t in _load("gcp-gpu.yaml")["available_node_types"].items():
        if _gpus(t):
            sched = t["node_config"]["scheduling"]
            assert isinstance(sched, dict), f"{k}: scheduling must be an object, not a list"
            assert sched["onHostMaintenance"] == "TERMINATE", k


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_image_install_storage_mlflow_and_auth(name):
    cfg = _load(name)
    assert cfg["docker"]["image"] == IMAGE
    assert "-v /shared:/shared" in cfg["docker"]["run_options"]
    assert any("mount" in c and "/shared" in c for c in cfg["initialization_commands"])
    assert cfg["file_mounts"]["~/smf_sweep"] == "."
    assert any("pip install" in c and "-c ~/smf_sweep/cluster/constraints.txt -e ~/smf_sweep" in c
               for c in cfg["setup_commands"]), "every node installs the tested versions"
    commands = [c for k, v in cfg.items() if k.endswith("_commands") for c in v]
    commands += [c for t in cfg["available_node_types"].values() for c in t.get("initialization_commands", [])]
    assert not any(re.search(r"pip install.*\btorch\b", c) for c in commands), "never reinstall torch"

    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head_cmds
    assert "--backend-store-uri sqlite:////shared/mlflow/mlflow.db" in head_cmds
    assert "--artifacts-destination /shared/mlflow/artifacts" in head_cmds
    assert "--host 127.0.0.1 --port 5000" in head_cmds, "no auth: loopback only (the driver on the head writes)"
    assert "mlflow:5000" in head_cmds, "allowed-hosts must admit the alias the driver uses"
    assert any("127.0.0.1 mlflow" in c for c in cfg["head_setup_commands"])

    # token auth: one token file on every node, RAY_AUTH_MODE=token before every ray start
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmds


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_opens_with_its_commands_and_comments_every_knob(name):
    lines = (CLUSTER / name).read_text().splitlines()
    head = "\n".join(l for l in lines[:12] if l.startswith("#"))
    for cmd in ("ray up", "ray job submit", "ray down", "get-auth-token"):
        assert cmd in head, f"header lacks `{cmd}`"
    # every `key: value` line carries a trailing comment with its reason
    bare = [l for l in lines if re.match(r"^\s*(- )?[\w.~/-]+:\s+[^\s#>|&*]", l) and " # " not in l
            and not l.lstrip().startswith("#")]
    assert not bare, "uncommented knobs:\n" + "\n".join(bare)


# ----------------------------------------------------------------------------------------------
# KubeRay
# ----------------------------------------------------------------------------------------------
def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _rayjob() -> dict:
    (job,) = [d for d in _docs("kuberay-rayjob.yaml") if d["kind"] == "RayJob"]
    return job


def _mounts(pod_spec: dict) -> dict[str, str]:
    """{mountPath: volume source kind + detail} of the Ray container of a pod template spec."""
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    out = {}
    for m in pod_spec["containers"][0]["volumeMounts"]:
        v = vols[m["name"]]
        if "persistentVolumeClaim" in v:
            out[m["mountPath"]] = "pvc:" + v["persistentVolumeClaim"]["claimName"]
        elif "emptyDir" in v:
            out[m["mountPath"]] = "emptyDir:" + v["emptyDir"].get("medium", "")
    return out


def test_rayjob_runs_the_sweep_with_shared_storage_and_mlflow():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("python -m smf_sweep.tune search_spaces/pareto.yaml")
    storage = re.search(r"--storage (\S+)", entry).group(1)
    assert storage.startswith("/"), "relative paths break on a cluster"
    assert "--tracking-uri http://mlflow:5000" in entry

    rc = job["spec"]["rayClusterSpec"]
    assert rc["rayVersion"] == "2.60.0"
    assert rc["authOptions"] == {"mode": "token"}
    head = rc["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["workingDir"] == "/home/ray/smf_sweep"   # where search_spaces/ is
    pods = [head] + [g["template"]["spec"] for g in rc["workerGroupSpecs"]]
    claims = set()
    for pod in pods:
        shared = [(p, src) for p, src in _mounts(pod).items() if src.startswith("pvc:")]
        assert any(storage.startswith(p.rstrip("/") + "/") for p, _ in shared), "--storage not on the PVC"
        claims |= {src for _, src in shared}
    assert len(claims) == 1

    (pvc,) = [d for d in _docs("kuberay-mlflow.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert "pvc:" + pvc["metadata"]["name"] in claims
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_head_without_gpu_and_gpu_workers_with_shm():
    rc = _rayjob()["spec"]["rayClusterSpec"]
    head = rc["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    groups = rc["workerGroupSpecs"]
    assert groups
    for g in groups:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) >= 1, g["groupName"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1 and g["replicas"] == 0
        assert _mounts(g["template"]["spec"]).get("/dev/shm") == "emptyDir:Memory", g["groupName"]
    assert rc["enableInTreeAutoscaling"] is True
    images = {c["image"] for pod in [head["template"]["spec"]] + [g["template"]["spec"] for g in groups]
              for c in pod["containers"]}
    assert len(images) == 1, "head and workers must run the same image"


def test_mlflow_service_matches_the_tracking_uri():
    docs = {d["kind"]: d for d in _docs("kuberay-mlflow.yaml")}
    svc, dep = docs["Service"], docs["Deployment"]
    assert svc["metadata"]["name"] == "mlflow" and svc["spec"]["ports"][0]["port"] == 5000
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    cmd = " ".join(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--backend-store-uri sqlite:////mnt/shared/mlflow/mlflow.db" in cmd
    assert "--host 0.0.0.0 --port 5000" in cmd and "mlflow:5000" in cmd


def test_dockerfile_builds_on_the_ray_gpu_image_and_installs_the_package():
    lines = [l.strip() for l in (CLUSTER / "Dockerfile").read_text().splitlines()]
    instructions = [l for l in lines if l and not l.startswith("#")]
    assert instructions[0] == f"FROM {IMAGE}"
    text = "\n".join(instructions)
    assert re.search(r"pip install[^\n]*-c cluster/constraints.txt -e \.", text)
    assert not re.search(r"pip install[^\n]*\btorch\b", text), "CUDA torch comes with the image / PyPI"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and "runs/" in ignore and "worlds/" in ignore


# ----------------------------------------------------------------------------------------------
# LocalCluster: a real 2-node cluster on 127.0.0.1
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_cluster(request):
    cluster = LocalCluster(workers=1, head_cpus=2, worker_cpus=2)

    def stop_and_check():
        started = cluster.root is not None and (cluster.root / "cluster.json").exists()
        cluster.stop()
        left = cluster_processes(cluster.cluster_id)
        assert not left, f"processes left after stop(): {sorted(left)}"
        if started:
            assert not cluster.root.exists(), "stop() leaves the cluster dir behind"
        elif cluster.root is not None:      # a failed start keeps its logs for the error message
            shutil.rmtree(cluster.root, ignore_errors=True)

    request.addfinalizer(stop_and_check)
    return cluster.start()


@pytest.fixture(scope="module")
def connected(local_cluster):
    with local_cluster.connect() as ctx:
        yield ctx


@pytest.mark.slow
def test_two_alive_nodes_with_their_custom_resources(local_cluster, connected):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    by_res = {r: n for n in alive for r in n["Resources"] if r.startswith("node_")}
    assert set(by_res) == {"node_head", "node_w1"}
    assert by_res["node_head"]["NodeID"] != by_res["node_w1"]["NodeID"]
    assert "node:__internal_head__" in by_res["node_head"]["Resources"]
    assert by_res["node_head"]["Resources"].get("smf_driver") == 1          # trial drivers: the head only
    assert "smf_driver" not in by_res["node_w1"]["Resources"]
    assert all(n["Resources"].get("GPU", 0) == 0 for n in alive)
    assert local_cluster.gcs_address.startswith("127.0.0.1:")


@pytest.mark.slow
def test_task_pinned_by_custom_resource_runs_on_the_other_node(local_cluster, connected):
    import ray

    ids = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r.startswith("node_")}

    @ray.remote(num_cpus=0, resources={"node_w1": 0.01})
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    node = ray.get(where.remote(), timeout=60)
    assert node == ids["node_w1"] != ids["node_head"]


@pytest.mark.slow
def test_trial_drivers_with_the_driver_resource_stay_on_the_head(local_cluster, connected, tmp_path):
    """search.driver_resource: the sweep's Tune drivers (tune.driver_resources) land only where the
    resource is declared — the head here, the head and on-demand nodes on a cloud cluster."""
    import ray
    from ray import tune

    from smf_sweep.spec import load_spec
    from smf_sweep.tune import check_driver_resource, driver_resources

    spec = load_spec(REPO / "search_spaces" / "smoke.yaml",
                     ["search.driver_resource=smf_driver", f"storage={tmp_path}"])
    check_driver_resource(spec)
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_head" in n["Resources"])

    def driver(config):
        tune.report({"node": ray.get_runtime_context().get_node_id()})

    grid = tune.Tuner(tune.with_resources(driver, driver_resources(spec)), param_space={"i": tune.grid_search([0, 1, 2, 3])},
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    nodes = [r.metrics["node"] for r in grid]
    assert len(nodes) == 4 and set(nodes) == {head}


def _run(argv, env, timeout=120):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_ray_job_submit_through_the_cli_with_the_token(local_cluster):
    r = _run(local_cluster.job_submit_argv(["python", "-c", "print('hello')"]), local_cluster.client_env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "hello" in out and "succeeded" in out


@pytest.mark.slow
def test_job_server_rejects_clients_without_the_token(local_cluster, tmp_path):
    env = {k: v for k, v in local_cluster.client_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)                      # no ~/.ray/auth_token either
    r = _run([sys.executable, "-m", "ray.scripts.scripts", "job", "list",
              "--address", local_cluster.dashboard_url], env, timeout=60)
    assert r.returncode != 0
    assert "Unauthorized" in r.stdout + r.stderr or "401" in r.stdout + r.stderr


@pytest.mark.slow
def test_bearer_header_alone_authenticates(local_cluster, tmp_path):
    env = {k: v for k, v in local_cluster.client_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    header = json.dumps({"Authorization": f"Bearer {local_cluster.token}"})
    r = _run([sys.executable, "-m", "ray.scripts.scripts", "job", "list",
              "--address", local_cluster.dashboard_url, "--headers", header], env, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


@pytest.mark.slow
def test_cli_up_status_env_down_round_trip(tmp_path):
    root = f"/tmp/smfrc-cli-{os.getpid()}"
    cli = [sys.executable, "-m", "cluster.local"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    info = None
    try:
        up = _run([*cli, "up", "--root", root], env)
        assert up.returncode == 0, up.stderr[-3000:]
        info = json.loads(up.stdout)
        assert info["dashboard_url"].startswith("http://127.0.0.1:")
        assert info["auth"]["RAY_AUTH_MODE"] == "token"
        st = json.loads(_run([*cli, "status", "--root", root], env).stdout)
        assert sorted(map(tuple, st["alive_nodes"])) == [("node_head",), ("node_w1",)]
        assert st["processes"] > 0
        exports = _run([*cli, "env", "--root", root], env).stdout
        assert "RAY_AUTH_MODE=token" in exports and f"RAY_AUTH_TOKEN_PATH={root}/auth_token" in exports
    finally:
        down = _run([*cli, "down", "--root", root], env)
    assert down.returncode == 0, down.stderr
    assert not Path(root).exists()
    if info:
        assert not cluster_processes(info["cluster_id"])


def _gpu_nodes() -> list[tuple[str, float, float]]:
    """(where, CPUs, GPUs) of every GPU node type of the ray up configs and GPU worker group of KubeRay."""
    out = []
    for name in RAY_UP:
        for t, nt in _load(name)["available_node_types"].items():
            if _gpus(nt):
                out.append((f"{name}:{t}", float(nt["resources"]["CPU"]), float(_gpus(nt))))
    for doc in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()):
        spec = (doc or {}).get("spec", {}).get("rayClusterSpec", {})
        for g in spec.get("workerGroupSpecs", []):
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            if limits.get("nvidia.com/gpu"):
                out.append((f"kuberay:{g['groupName']}", float(limits["cpu"]), float(limits["nvidia.com/gpu"])))
    return out


def test_the_studys_trials_fill_each_gpu_node_by_its_gpus_not_its_cpus():
    """pareto.yaml's one-worker arms share a GPU (0.5 each): on every GPU node type of the cluster
    configs, the CPUs must hold as many trials as the GPUs do, or half of each GPU sits idle (the
    KubeRay GPU pod has 7 CPUs: two trials at 4 CPUs did not fit)."""
    from smf_sweep.spec import load_spec

    spec = load_spec(REPO / "search_spaces" / "pareto.yaml")
    nodes = _gpu_nodes()
    assert len(nodes) >= 5, nodes
    for arm, ms in spec.methods.items():
        r = ms.resources
        if r.workers != 1 or not r.gpus_per_worker:
            continue
        for where, cpus, gpus in nodes:
            by_gpu, by_cpu = int(gpus / r.gpus_per_worker), int(cpus // r.cpus_per_worker)
            assert by_cpu >= by_gpu, f"{arm} on {where}: {by_cpu} trials by CPUs, {by_gpu} by GPUs"


def test_constraints_pin_the_tested_versions_of_every_dependency():
    """cluster/constraints.txt pins one version of every runtime dependency in pyproject.toml (torch
    excepted: the image's CUDA build, or the Makefile's CPU wheel), each inside pyproject's range, Ray
    at the image's version; the Makefile, the ray up configs and the Dockerfile install through it,
    so nodes booted on different days run what CI tested."""
    import tomllib

    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            (spec,) = r.specifier
            assert spec.operator == "==", line
            pins[r.name.lower().replace("_", "-")] = spec.version
    for d in deps:
        name = d.name.lower().replace("_", "-")
        if name == "torch":
            assert name not in pins
            continue
        assert name in pins, f"{d.name} is not pinned"
        assert d.specifier.contains(pins[name]), f"{d.name}=={pins[name]} is outside pyproject's {d.specifier}"
    assert IMAGE.split(":")[1].startswith(pins["ray"] + "-")
    assert "-c cluster/constraints.txt -e '.[dev]'" in (REPO / "Makefile").read_text()
