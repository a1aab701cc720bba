"""A real multi-node Ray cluster on this machine (127.0.0.1): one head and N extra nodes, each a
separate `ray start` with its own temp dir, token authentication on, optionally an MLflow server.

    python -m cluster.local up [--workers 1] [--mlflow] [--root /tmp/smf-local-cluster]  # JSON
    eval "$(python -m cluster.local env)"        # RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH for clients
    ray job submit --address http://127.0.0.1:<dashboard port> --working-dir . -- python -m ...
    python -m cluster.local status
    python -m cluster.local down

    from cluster.local import LocalCluster
    with LocalCluster(workers=1) as c:           # started; stopped (every process) on exit
        c.gcs_address, c.dashboard_url, c.mlflow_uri, c.env, c.node_resources
        with c.connect():                        # ray.init(address=c.gcs_address) with the token
            ray.nodes()
        subprocess.run(c.job_submit_argv(["python", "-c", "print('hi')"]), env=c.client_env())

What Ray 2.60 does here (checked on this machine; the reasons behind the choices below):
- `--temp-dir` can be given per node (`ray start --help`: "Can be specified per node"): the head
  uses <root>/h, node k uses <root>/w<k>. Keeping the cluster out of /tmp/ray also keeps
  `ray.init()` / `ray status` run elsewhere on the machine from attaching to it. Unix socket paths
  live under the temp dir and must stay under 107 bytes, so the root must be short (/tmp/...).
- Token authentication: `ray start` turns it on only when RAY_AUTH_MODE=token is set or a token
  already exists (~/.ray/auth_token); a worker node must be started with the same mode and token.
  We set RAY_AUTH_MODE=token and a per-cluster token file (RAY_AUTH_TOKEN_PATH=<root>/auth_token),
  never touching ~/.ray/auth_token. Every Ray process, job drivers included, inherits both.
- Clients: `ray job submit` (and `ray.init(address=...)`) sends the token only when RAY_AUTH_MODE=token
  is in the client's own environment, reading the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
  ~/.ray/auth_token; without the mode variable it gets "401 Unauthorized: Missing authentication
  token" even when the token file exists. `ray job submit --headers '{"Authorization": "Bearer
  <token>"}'` works without any variable. `ray get-auth-token` prints the token it would use.
  `ray.init` in a process that already imported ray must refresh Ray's cached config after the
  variables change: `LocalCluster.connect()` does that.
- Ray registers a node given `--node-ip-address 127.0.0.1` under the machine's primary IP on Linux
  (it maps loopback to a routable address), so `ray.nodes()` shows that IP; the GCS listens on all
  interfaces (the token guards it), the dashboard / job server and MLflow listen on 127.0.0.1 only.
- The job server is part of Ray's dashboard, which needs the `ray[default]` extra (aiohttp_cors,
  opencensus, ...); with plain `ray[tune,train]` the head fails ("Cannot include dashboard with
  missing packages"), so start() checks first and says what to install.
- Ports: the GCS, dashboard, Ray Client server (when grpc is installed) and each node's dashboard
  agent get free ports, and workers bind random ports, so several local clusters can coexist.
- Stopping: never `ray stop` (it kills every Ray process on the machine, other people's clusters
  included), nor process groups (Ray workers and job drivers leave the `ray start` group/session).
  Every process started here carries SMF_LOCAL_CLUSTER=<id> in its environment, which Ray passes on
  to raylets, workers and job drivers; processes that overwrite their environ with a long title
  (dashboard modules, agents) are found as descendants of marked ones. `down` takes that tree from
  /proc, sends SIGTERM, then SIGKILL after a grace period.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

MARKER_VAR = "SMF_LOCAL_CLUSTER"
DEFAULT_ROOT = "/tmp/smf-local-cluster"
STATE_FILE = "cluster.json"
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_MAX_TEMP_DIR_CHARS = 44        # session_<41 chars>/sockets/plasma_store must fit in 107 bytes
_CLIENT_DROP_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
DRIVER_RESOURCE = "smf_driver"  # on the head only, like the cloud configs: specs with search.driver_resource run here


class LocalClusterError(RuntimeError):
    """The cluster did not come up (the message carries the tail of the relevant log)."""


@dataclass(frozen=True)
class NodeInfo:
    name: str                   # "head", "w1", "w2", ...
    resource: str               # custom resource naming the node: node_head, node_w1, ...
    num_cpus: int
    num_gpus: int
    temp_dir: str
    log: str


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))         # "" like the GCS, which listens on every interface
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]   # the ray CLI of this interpreter


def _has_ray_client() -> bool:
    try:                        # ray start defaults the Ray Client server to port 10001 when grpc
        import grpc  # noqa: F401   is importable; we give it a free port instead
        return True
    except ImportError:
        return False


def _dashboard_missing() -> str | None:
    """Why Ray's dashboard (hence the job server) cannot start here, or None. It needs the
    `ray[default]` extra; Ray's own check is private, so a moved helper counts as "fine"."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:
        return None
    err = get_dashboard_dependency_error()
    return None if err is None else str(err)


def _tail(path: str | Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


def _pids_with_marker(marker: str) -> list[int]:
    """Live processes whose environment holds SMF_LOCAL_CLUSTER=<marker> (zombies have none).
    A process that rewrites its title at length (setproctitle: dashboard modules, agents) may have
    clobbered its environ; `cluster_processes` finds those as descendants."""
    needle = f"{MARKER_VAR}={marker}".encode()
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in clock ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0].decode(), int(fields[19])


def cluster_processes(marker: str) -> dict[int, int]:
    """{pid: start time} of the cluster's live processes: the marked ones and all their descendants."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) and st[1] != "Z":
            children.setdefault(st[0], []).append(int(name))
            starts[int(name)] = st[2]
    todo = [p for p in _pids_with_marker(marker) if p in starts]
    found: dict[int, int] = {}
    while todo:
        pid = todo.pop()
        if pid not in found and pid != os.getpid():
            found[pid] = starts[pid]
            todo.extend(children.get(pid, ()))
    return found


def _alive(procs: dict[int, int]) -> dict[int, int]:
    """The members of procs still running (same pid and start time: pid reuse is not a match)."""
    out = {}
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[1] != "Z" and st[2] == start:
            out[pid] = start
    return out


def _signal_all(pids, sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_marked(marker: str, grace_s: float = 2.0, kill_wait_s: float = 5.0) -> int:
    """SIGTERM every process of the cluster, SIGKILL what is left after grace_s. Returns how many
    processes were found. The tree is taken before any signal, while parent links still hold."""
    procs = cluster_processes(marker)
    if not procs:
        return 0
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (_alive(procs) or _pids_with_marker(marker)):
        time.sleep(0.1)
    for _ in range(2):           # a second sweep catches anything spawned during shutdown
        procs.update(cluster_processes(marker))
        left = _alive(procs)
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + kill_wait_s
        while time.monotonic() < deadline and _alive(left):
            time.sleep(0.1)
    return len(procs)


def _http_get(url: str, token: str | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _refresh_ray_auth_config() -> None:
    """Make an already-imported ray re-read RAY_AUTH_* (Ray caches its config at first use; this is
    what Ray's own auth test utilities do). Private API: harmless no-op if it moves."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# ----------------------------------------------------------------------------------------------
# the cluster
# ----------------------------------------------------------------------------------------------
class LocalCluster:
    """A head (`node_head` and `smf_driver` resources, no GPUs) and `workers` extra nodes (`node_w1`,
    ...) on this machine; optional MLflow server. Use as a context manager or call start()/stop().

    After start(): gcs_address ("127.0.0.1:<port>", for ray.init / ray start --address),
    dashboard_url ("http://127.0.0.1:<port>", for `ray job submit --address`), mlflow_uri (or None),
    env (the variables a client needs: RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH), token, nodes,
    node_resources ({"node_head": node name, ...}), info() (all of it as a JSON-able dict)."""

    def __init__(self, workers: int = 1, *, head_cpus: int = 2, worker_cpus: int = 2,
                 worker_gpus: int = 0, object_store_mb: int = 256, mlflow: bool = False,
                 root: str | os.PathLike | None = None, keep_files: bool = False,
                 startup_timeout_s: float = 90.0):
        if workers < 1:
            raise ValueError("a multi-node cluster needs workers >= 1")
        self.workers, self.head_cpus, self.worker_cpus = workers, head_cpus, worker_cpus
        self.worker_gpus, self.object_store_mb, self.with_mlflow = worker_gpus, object_store_mb, mlflow
        self._root_arg, self.keep_files, self.startup_timeout_s = root, keep_files, startup_timeout_s
        self.root: Path | None = None
        self.cluster_id = uuid.uuid4().hex[:16]
        self.token = ""
        self.gcs_port = self.dashboard_port = 0
        self.mlflow_port: int | None = None
        self.nodes: list[NodeInfo] = []
        self._started = False

    # ---- addresses ------------------------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str | None:
        return f"http://127.0.0.1:{self.mlflow_port}" if self.mlflow_port else None

    @property
    def token_path(self) -> str:
        assert self.root is not None
        return str(self.root / "auth_token")

    @property
    def env(self) -> dict[str, str]:
        """What a client (ray job submit, ray.init, ray status) needs in its environment."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    @property
    def node_resources(self) -> dict[str, str]:
        return {n.resource: n.name for n in self.nodes}

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) plus self.env, minus variables that would redirect a client."""
        e = dict(os.environ if base is None else base)
        for k in _CLIENT_DROP_VARS:
            e.pop(k, None)
        e.update(self.env)
        return e

    def job_submit_argv(self, entrypoint: Sequence[str], working_dir: str | None = None,
                        extra: Sequence[str] = ()) -> list[str]:
        """argv of `ray job submit` against this cluster (run it with env=self.client_env())."""
        wd = ["--working-dir", str(working_dir)] if working_dir else []
        return [*_ray_cli(), "job", "submit", "--address", self.dashboard_url, *wd, *extra,
                "--", *entrypoint]

    def info(self) -> dict[str, Any]:
        exports = " ".join(f"{k}={v}" for k, v in self.env.items())
        return {
            "root": str(self.root), "cluster_id": self.cluster_id,
            "gcs_address": self.gcs_address, "dashboard_url": self.dashboard_url,
            "job_submit_address": self.dashboard_url, "mlflow_uri": self.mlflow_uri,
            "auth": {**self.env, "header": "Authorization: Bearer <contents of RAY_AUTH_TOKEN_PATH>"},
            "nodes": [n.__dict__ for n in self.nodes],
            "export": f"export {exports}",
            "submit": f"{exports} ray job submit --address {self.dashboard_url} --working-dir . -- "
                      "python -m smf_sweep.tune search_spaces/smoke.yaml"
                      + (f" --tracking-uri {self.mlflow_uri}" if self.mlflow_uri else ""),
            "connect": f"{exports} python -c \"import ray; ray.init(address='{self.gcs_address}')\"",
            "down": f"python -m cluster.local down --root {self.root}",
        }

    # ---- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _process_env(self) -> dict[str, str]:
        e = self.client_env()
        e.update({MARKER_VAR: self.cluster_id, "RAY_USAGE_STATS_ENABLED": "0"})
        return e

    def _make_root(self) -> Path:
        if self._root_arg is None:
            return Path(tempfile.mkdtemp(prefix="smfrc-", dir="/tmp" if os.path.isdir("/tmp") else None))
        root = Path(self._root_arg).resolve()
        if len(str(root / f"w{self.workers}")) > _MAX_TEMP_DIR_CHARS:
            raise ValueError(f"root {root} is too long for Ray's unix sockets: keep the node temp dirs "
                             f"under {_MAX_TEMP_DIR_CHARS} characters (e.g. /tmp/smf-rc)")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def start(self) -> "LocalCluster":
        if self._started:
            return self
        if missing := _dashboard_missing():
            import ray
            raise LocalClusterError(f"`ray job submit` needs Ray's dashboard, which needs the ray[default] "
                                    f"extra: pip install 'ray[default]=={ray.__version__}' ({missing})")
        self.root = self._make_root()
        (self.root / "logs").mkdir(exist_ok=True)
        self.token = uuid.uuid4().hex + uuid.uuid4().hex
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self._started = True
        atexit.register(self.stop)
        try:
            self._start_ray()
            if self.with_mlflow:
                self._start_mlflow()
        except BaseException:
            keep, self.keep_files = self.keep_files, True      # keep the logs the error points at
            self.stop()
            self.keep_files = keep
            raise
        self._write_state()
        return self

    def _run_ray_start(self, args: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "w")
        try:
            return subprocess.Popen([*_ray_cli(), "start", *args], stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._process_env(),
                                    start_new_session=True, cwd=str(self.root))
        finally:
            f.close()

    def _wait_ray_start(self, procs: list[tuple[subprocess.Popen, Path]], deadline: float) -> None:
        for proc, log in procs:
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise LocalClusterError(f"`ray start` timed out; log {log}:\n{_tail(log)}") from None
            if rc != 0:
                raise LocalClusterError(f"`ray start` failed ({rc}); log {log}:\n{_tail(log)}")

    def _common_args(self, node: NodeInfo) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", str(node.num_cpus),
                "--num-gpus", str(node.num_gpus), "--resources",
                json.dumps({node.resource: 1, **({DRIVER_RESOURCE: 1} if node.name == "head" else {})}),
                "--temp-dir", node.temp_dir, "--object-store-memory", str(self.object_store_mb << 20),
                "--dashboard-agent-listen-port", str(_free_port()),
                "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]

    def _start_ray(self) -> None:
        assert self.root is not None
        deadline = time.monotonic() + self.startup_timeout_s
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        head = NodeInfo("head", "node_head", self.head_cpus, 0, str(self.root / "h"),
                        str(self.root / "logs" / "head.log"))
        self.nodes = [head]
        client = ["--ray-client-server-port", str(_free_port())] if _has_ray_client() else []
        head_args = ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     *client, *self._common_args(head)]
        self._wait_ray_start([(self._run_ray_start(head_args, Path(head.log)), Path(head.log))], deadline)

        procs = []
        for k in range(1, self.workers + 1):
            node = NodeInfo(f"w{k}", f"node_w{k}", self.worker_cpus, self.worker_gpus,
                            str(self.root / f"w{k}"), str(self.root / "logs" / f"w{k}.log"))
            self.nodes.append(node)
            args = ["--address", self.gcs_address, *self._common_args(node)]
            procs.append((self._run_ray_start(args, Path(node.log)), Path(node.log)))
        self._wait_ray_start(procs, deadline)
        self._wait_ready(deadline)

    def stop_node(self, name: str) -> int:
        """Kill one extra node (`w1`, …) the hard way (SIGKILL to its raylet, workers and agents):
        a machine lost mid-run, for fault tests. Returns how many processes were killed."""
        node = next((n for n in self.nodes if n.name == name), None)
        if node is None or node.name == "head":
            raise ValueError(f"no extra node {name!r}; nodes: {[n.name for n in self.nodes[1:]]}")
        procs = cluster_processes(self.cluster_id)
        mine = {}
        for pid, start in procs.items():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if node.temp_dir.encode() in cmd:
                mine[pid] = start
        grew = True
        while grew:                           # and their descendants (workers the raylet forked)
            grew = False
            for pid, start in procs.items():
                st = _stat(pid)
                if pid not in mine and st is not None and st[0] in mine:
                    mine[pid], grew = start, True
        _signal_all(mine, signal.SIGKILL)
        return len(mine)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the dashboard's state API reports them ([] if it does not answer)."""
        code, body = _http_get(f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=true", self.token)
        if code != 200:
            return []
        rows = json.loads(body).get("data", {}).get("result", {}).get("result", [])
        return [r for r in rows if r.get("state") == "ALIVE"]

    def _wait_ready(self, deadline: float) -> None:
        """Every node registered with its resource, and the job server answering."""
        want = {n.resource for n in self.nodes}
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = set()
            for n in self.alive_nodes():
                seen |= set(n.get("resources_total", {})) & want
            jobs_code, _ = _http_get(f"{self.dashboard_url}/api/jobs/", self.token)
            if seen == want and jobs_code == 200:
                return
            time.sleep(0.25)
        raise LocalClusterError(f"cluster not ready after {self.startup_timeout_s}s: nodes with "
                                f"{sorted(seen)} of {sorted(want)}; head log:\n{_tail(self.nodes[0].log)}")

    def _start_mlflow(self) -> None:
        assert self.root is not None
        store = self.root / "mlflow"
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        self.mlflow_port = _free_port()
        log = self.root / "logs" / "mlflow.log"
        with open(log, "w") as f:
            subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                 "--artifacts-destination", str(store / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._process_env(), start_new_session=True, cwd=str(store))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if _http_get(f"{self.mlflow_uri}/health")[0] == 200:
                return
            time.sleep(0.25)
        raise LocalClusterError(f"mlflow server not healthy; log {log}:\n{_tail(log)}")

    def _write_state(self) -> None:
        assert self.root is not None
        (self.root / STATE_FILE).write_text(json.dumps(self.info(), indent=2) + "\n")

    def stop(self) -> None:
        """Stop every process of this cluster (by marker) and, unless keep_files, remove the root."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        kill_marked(self.cluster_id)
        if self.root is not None and not self.keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- clients --------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, **init_kwargs: Any) -> Iterator[Any]:
        """ray.init(address=gcs_address) in this process with the cluster's token; restores the
        auth variables and shuts the connection down on exit. Yields ray.init's context."""
        import ray

        saved = {k: os.environ.get(k) for k in _AUTH_VARS}
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(self.env)
        _refresh_ray_auth_config()
        try:
            init_kwargs.setdefault("log_to_driver", False)
            yield ray.init(address=self.gcs_address, **init_kwargs)
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _refresh_ray_auth_config()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _load_state(root: str) -> dict[str, Any] | None:
    p = Path(root) / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else None


def _status(state: dict[str, Any]) -> dict[str, Any]:
    token = Path(state["auth"]["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    code, body = _http_get(f"{state['dashboard_url']}/api/v0/nodes?limit=1000&detail=true", token)
    alive = []
    if code == 200:
        rows = json.loads(body).get("data", {}).get("result", {}).get("result", [])
        alive = [sorted(k for k in r.get("resources_total", {}) if k.startswith("node_"))
                 for r in rows if r.get("state") == "ALIVE"]
    out = {"root": state["root"], "processes": len(cluster_processes(state["cluster_id"])),
           "dashboard_url": state["dashboard_url"], "dashboard_http": code, "alive_nodes": alive}
    if state.get("mlflow_uri"):
        out["mlflow_uri"] = state["mlflow_uri"]
        out["mlflow_health"] = _http_get(f"{state['mlflow_uri']}/health")[0]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster and print its addresses as JSON")
    up.add_argument("--workers", type=int, default=1, help="extra nodes besides the head")
    up.add_argument("--head-cpus", type=int, default=2)
    up.add_argument("--worker-cpus", type=int, default=2)
    up.add_argument("--worker-gpus", type=int, default=0)
    up.add_argument("--object-store-mb", type=int, default=256)
    up.add_argument("--mlflow", action="store_true", help="also start an MLflow server on 127.0.0.1")
    for p in (up, *(sub.add_parser(c, help=h) for c, h in
                    (("down", "stop every process of the cluster and remove its files"),
                     ("status", "processes, alive nodes, MLflow health as JSON"),
                     ("env", "shell exports a client needs (eval \"$(python -m cluster.local env)\")")))):
        p.add_argument("--root", default=DEFAULT_ROOT, help=f"cluster directory (default {DEFAULT_ROOT})")
    down = sub.choices["down"]
    down.add_argument("--keep-files", action="store_true", help="keep logs and temp dirs")
    a = ap.parse_args(argv)

    state = _load_state(a.root)
    if a.cmd == "up":
        if state and cluster_processes(state["cluster_id"]):
            print(f"a cluster is already up at {a.root}; `python -m cluster.local down --root {a.root}`",
                  file=sys.stderr)
            return 1
        if Path(a.root).exists():
            shutil.rmtree(a.root)
        c = LocalCluster(a.workers, head_cpus=a.head_cpus, worker_cpus=a.worker_cpus,
                         worker_gpus=a.worker_gpus, object_store_mb=a.object_store_mb,
                         mlflow=a.mlflow, root=a.root, keep_files=True)
        c.start()
        atexit.unregister(c.stop)       # the cluster outlives this command; `down` stops it
        print(json.dumps(c.info(), indent=2))
        return 0
    if state is None:
        print(f"no cluster at {a.root}", file=sys.stderr)
        return 1
    if a.cmd == "env":
        print(state["export"])
        return 0
    if a.cmd == "status":
        print(json.dumps(_status(state), indent=2))
        return 0
    n = kill_marked(state["cluster_id"])
    if not a.keep_files:
        shutil.rmtree(a.root, ignore_errors=True)
    print(json.dumps({"stopped_processes": n, "root": a.root, "removed": not a.keep_files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
