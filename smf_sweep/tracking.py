"""MLflow records of a sweep: one parent run, one child run per trial (docs/contracts.md).

All writes happen in the Tune driver process (a Tune Callback), so a SQLite store has one writer.
A resumed sweep finds its parent run and each trial's run again by tags, so nothing is duplicated
and no record is lost; a failed trial's run ends FAILED with its reason, a trial stopped early
(scheduler.MOASHA) KILLED with tag `stopped_at_rung` and its objectives there. After every search trial
that ends, the parent run gets the sweep's progress as step metrics: the hypervolume of the front
so far (step = search trials ended), the cumulative compute, the hypervolume by compute (step =
cumulative device-seconds) and the front's size (objectives.Objectives.hypervolume)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ray.tune import Callback

from . import objectives as O
from .probes.base import TASKS
from .scheduler import EARLY_STOPPED, STOPPED_AT_RUNG, STOPPED_AT_STEP

STEP_PREFIXES = ("train/", "retrofit/", "curve/")
_TASKS = "|".join(map(re.escape, TASKS))
# every objective a spec may name is among these: <task>/delta, medmcqa_gain_pp, forgetting, <task>_drop_pp,
# <task>_nats, cost/* (objectives.py); and constraint_violation
FINAL_KEYS = re.compile(rf"^(({_TASKS})/(before|after|delta)|retrofit/({_TASKS})|{re.escape(O.GAIN)}|{re.escape(O.FORGETTING)}"
                        rf"|({_TASKS})_(drop_pp|nats)|cost/\w+|{re.escape(O.VIOLATION)}"
                        r"|trial_seconds|trainable_params|train_steps|time\.\w+)$")
UI_PORT = 5000                   # `mlflow ui`'s default port
ARTIFACTS_DIR = "mlartifacts"    # a SQLite store's artifacts: <directory of the .db>/mlartifacts
EXPERIMENT_KIND = "custom_model_development"   # MLflow 3's UI then opens the experiment on its runs


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used; raised before any trial starts."""


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow server {uri} answered /health with HTTP {r.status}")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"MLflow server {uri} is unreachable ({getattr(e, 'reason', e)}); "
                            "start it (mlflow server --backend-store-uri … --host 127.0.0.1 --port …) "
                            "or drop --tracking-uri to use the sweep's SQLite store") from None


def package_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for p in ("smf_sweep", "torch", "transformers", "peft", "deepspeed", "ray", "optuna", "mlflow", "datasets"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit(cwd: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=cwd).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser().resolve()


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: next to a SQLite store (the sweep dir's mlartifacts/
    for the default sqlite:///<sweep dir>/mlflow.db), not in ./mlruns of whatever directory the
    driver runs in. None for a server, which decides (--artifacts-destination)."""
    db = sqlite_file(uri)
    return str(db.parent / ARTIFACTS_DIR) if db is not None else None


def ui_command(uri: str, port: int = UI_PORT) -> str | None:
    """The command that starts the MLflow UI on this store; None for a server (it is the UI)."""
    if uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {uri} --port {port}"


def runs_url(uri: str, experiment_id: str, port: int = UI_PORT) -> str:
    """The URL of the experiment's table of runs. MLflow 3's UI is a hash-routed single page app
    (react-router createHashRouter; the route `experimentPageTabRuns` is
    /experiments/:experimentId/runs in mlflow/server/js/build, checked by tests/test_objectives.py);
    /#/experiments/<id> alone may open the GenAI overview, where no trial is shown."""
    root = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{root}/#/experiments/{experiment_id}/runs"


def config_note(config: dict, tags: dict) -> str:
    """One line for a trial run's description (mlflow.note.content): the arm, its searched
    parameters, seed and stage, e.g. 'smf: n_keys=32 top_t=128 selector=kl lr=0.03 · seed 0 · search'."""
    point = config.get("point", config)
    method = point.get("method") or tags.get("method", "?")
    algo = tags.get("algorithm")
    params = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in point.items() if k.startswith(f"{method}."))
    head = f"{method}" + (f" ({algo})" if algo and algo != method else "")
    parts = [f"{head}: {params}" if params else head]
    if tags.get("seed") is not None:
        parts.append(f"seed {tags['seed']}")
    stage = tags.get(O.STAGE_TAG, point.get("stage", "search"))
    parts.append(stage + (", the study's point" if tags.get(O.DEFAULT_POINT_TAG) == "true" else ""))
    return " · ".join(parts)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class SweepTracker:
    """The parent run of a sweep and lookups of its child runs (used outside Tune too)."""

    def __init__(self, uri: str, experiment: str, sweep: str, spec_hash: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        check_tracking_uri(uri)
        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifact_location(uri), tags={O.EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        found = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`{O.ROLE_TAG}` = '{O.ROLE_SWEEP}' and tags.spec_hash = '{spec_hash}'"), max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=sweep, tags={
                O.ROLE_TAG: O.ROLE_SWEEP, "spec_hash": spec_hash, "sweep": sweep}).info.run_id

    def log_sweep(self, spec_dict: dict, base: dict, spec_file: Path | None) -> "O.Objectives":
        """The parent run's params (the flattened spec), base/<task> metrics, versions, the
        objectives (tag smf_sweep.objectives, JSON: objectives.Objectives.to_dict, with the base
        probes' directions) and the frozen spec as an artifact. The objectives also go into the
        sweep.json beside `spec_file` (analysis reads them from either)."""
        from mlflow.entities import Metric, Param

        obj = O.Objectives.from_spec(spec_dict, base)
        ts = int(time.time() * 1000)
        have = self.client.get_run(self.parent_id).data.params
        params = {k: v[:6000] for k, v in flatten(spec_dict).items() if k not in have}
        tags = {"git_commit": git_commit(), **{f"version.{k}": v for k, v in package_versions().items()},
                O.OBJECTIVES_TAG: obj.to_json(), O.NOTE_TAG: f"sweep {spec_dict.get('name', '')}: {obj.describe()}"}
        metrics = [Metric(O.base(k), float(v), ts, 0) for k, v in base.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "." not in k]
        self.client.log_batch(self.parent_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                              tags=[_tag(k, v) for k, v in tags.items()])
        if spec_file is not None and spec_file.exists():
            self.client.log_artifact(self.parent_id, str(spec_file))
            record_objectives(spec_file.parent / "sweep.json", obj)
        return obj

    def trial_run(self, trial_id: str) -> str | None:
        found = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`{O.PARENT_TAG}` = '{self.parent_id}' and tags.trial_id = '{trial_id}'"), max_results=1)
        return found[0].info.run_id if found else None

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


def _tag(k, v):
    from mlflow.entities import RunTag
    return RunTag(k, str(v)[:5000])


def record_objectives(sweep_json: Path, obj: "O.Objectives") -> None:
    """Add {"objectives": obj.to_dict()} to a sweep dir's sweep.json (written by tune.run_sweep),
    keeping its other keys; nothing when there is no sweep.json."""
    if not sweep_json.is_file():
        return
    meta = json.loads(sweep_json.read_text())
    if meta.get("objectives") != obj.to_dict():
        meta["objectives"] = obj.to_dict()
        tmp = sweep_json.with_name(sweep_json.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(sweep_json)


class MLflowTrialLogger(Callback):
    """Tune callback: a child run per trial, per-step training metrics, final probes/objectives."""

    def __init__(self, tracker_args: dict, describe):
        """describe(config) -> (params: dict[str, str], tags: dict[str, str]) for a trial's config."""
        self.tracker_args, self.describe = tracker_args, describe
        self.tracker: SweepTracker | None = None
        self.runs: dict[str, str] = {}
        self.progress: Progress | None = None

    def setup(self, **info):
        self.tracker = SweepTracker(**self.tracker_args)
        self.progress = None          # read again from the store: a resumed sweep continues its steps

    def _run(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        t = self.tracker
        rid = t.trial_run(trial.trial_id)
        params, tags = self.describe(trial.config)
        if rid is None:
            rid = t.client.create_run(t.experiment_id, run_name=f"{tags.get('method')}-{trial.trial_id}", tags={
                O.PARENT_TAG: t.parent_id, O.ROLE_TAG: O.ROLE_TRIAL, "trial_id": trial.trial_id,
                O.NOTE_TAG: config_note(trial.config, tags), **tags}).info.run_id
            from mlflow.entities import Param
            t.client.log_batch(rid, params=[Param(k, v[:6000]) for k, v in params.items()])
        else:
            t.client.update_run(rid, status="RUNNING")
        self.runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        rid, ts = self._run(trial), int(time.time() * 1000)
        metrics = []
        for k, v in result.items():
            if k.startswith(STEP_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and not k.endswith("/step"):
                step = int(result.get(k.split("/")[0] + "/step", 0))
                metrics.append(Metric(k, float(v), ts, step))
        if metrics:
            self.tracker.client.log_batch(rid, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A finished trial: its final metrics, status FINISHED. A trial the scheduler stopped
        (scheduler.MOASHA wrote `early_stopped` into its last result): the objectives at its rung
        (curve values on the probes' subsets) and its cost so far as final metrics, tags
        `stopped_at_rung` (the rung's budget, optimizer steps) and `stopped_at_step`, status KILLED;
        the sweep's progress counts its compute, not its values (they are no finished trial's)."""
        rid, ts = self._run(trial), int(time.time() * 1000)
        res = trial.last_result or {}
        final = _final_metrics(res, ts)
        self.tracker.client.log_batch(rid, metrics=final)
        if res.get(EARLY_STOPPED):
            for key in (STOPPED_AT_RUNG, STOPPED_AT_STEP):
                if key in res:
                    self.tracker.client.set_tag(rid, key, str(int(res[key])))
            self.tracker.client.set_terminated(rid, "KILLED")
            self._log_progress(trial, {m.key: m.value for m in final if m.key in O.COSTS})
            return
        self.tracker.client.set_terminated(rid, "FINISHED")
        self._log_progress(trial, {m.key: m.value for m in final})

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self._run(trial)
        reason = failure_reason(trial)
        cost = _final_metrics({k: v for k, v in (trial.last_result or {}).items() if k in O.COSTS},
                              int(time.time() * 1000))
        if cost:                      # a failed trial's compute (tune.sweep_trial reports it with the reason)
            self.tracker.client.log_batch(rid, metrics=cost)
        self.tracker.client.set_tag(rid, O.FAILURE_TAG, reason[:5000])
        self.tracker.client.set_terminated(rid, "FAILED")
        self._log_progress(trial, {m.key: m.value for m in cost})

    def _log_progress(self, trial, metrics: dict) -> None:
        """The parent run's progress metrics after a search trial ended; never fails the sweep."""
        if (trial.config or {}).get("point", trial.config or {}).get("stage", "search") != "search":
            return                    # the confirm stage re-runs front configs: not the search's progress
        try:
            if self.progress is None:
                self.progress = Progress.read(self.tracker)
            self.progress.add(trial.trial_id, metrics)
            self.progress.log(self.tracker)
        except Exception as e:  # noqa: BLE001 — the records of the trial itself are written already
            print(f"warning: the sweep's hypervolume/compute could not be logged after trial {trial.trial_id}: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)

    def on_experiment_end(self, trials, **info):
        """Runs of trials that a stopped driver had started but Tune never recorded stay RUNNING:
        end them KILLED with the reason (their configurations were re-queued on resume)."""
        t, known = self.tracker, {tr.trial_id for tr in trials}
        for run in t.client.search_runs([t.experiment_id], filter_string=(
                f"tags.`{O.PARENT_TAG}` = '{t.parent_id}' and attributes.status = 'RUNNING'")):
            if run.data.tags.get("trial_id") not in known:
                t.client.set_tag(run.info.run_id, O.FAILURE_TAG, "interrupted: the sweep's driver stopped before "
                                 "Tune recorded this trial; its configuration was run again on resume")
                t.client.set_terminated(run.info.run_id, "KILLED")
        t.finish("FINISHED")


def _final_metrics(res: dict, ts: int) -> list:
    from mlflow.entities import Metric

    return [Metric(k, float(v), ts, 0) for k, v in res.items()
            if FINAL_KEYS.match(k) and isinstance(v, (int, float)) and not isinstance(v, bool)]


class Progress:
    """The search's ended trials in order (id → final metrics; a failed or early-stopped trial's: its cost only),
    under the sweep's recorded objectives (the parent run's tag). Read from the store on the first
    trial a driver sees, so a resumed sweep counts the trials before it; a trial seen again (a
    retry) keeps its place."""

    def __init__(self, obj: "O.Objectives | None", rows: dict[str, dict]):
        self.obj, self.rows = obj, rows

    @classmethod
    def read(cls, tracker: "SweepTracker") -> "Progress":
        c = tracker.client
        text = c.get_run(tracker.parent_id).data.tags.get(O.OBJECTIVES_TAG)
        obj = O.Objectives.from_json(text) if text else None
        runs, token = [], None
        while True:
            page = c.search_runs([tracker.experiment_id], filter_string=(
                f"tags.`{O.PARENT_TAG}` = '{tracker.parent_id}' and tags.`{O.ROLE_TAG}` = '{O.ROLE_TRIAL}'"),
                max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        stopped = lambda r: r.info.status == "KILLED" and STOPPED_AT_RUNG in r.data.tags  # noqa: E731
        ended = [r for r in runs if (r.info.status in ("FINISHED", "FAILED") or stopped(r))
                 and r.data.tags.get(O.STAGE_TAG, "search") == "search"]
        ended.sort(key=lambda r: (r.info.end_time or 0, r.info.start_time or 0))
        return cls(obj, {r.data.tags.get("trial_id", r.info.run_id):
                         {k: v for k, v in r.data.metrics.items() if not stopped(r) or k in O.COSTS} for r in ended})

    def add(self, trial_id: str, metrics: dict) -> None:
        self.rows[trial_id] = dict(metrics)

    def point(self) -> dict:
        """{trials, compute_s, hypervolume (None without a reference), front_size} now."""
        rows = list(self.rows.values())
        compute = sum(float(r[O.COST_S]) for r in rows
                      if isinstance(r.get(O.COST_S), (int, float)) and math.isfinite(r[O.COST_S]))
        hv = self.obj.hypervolume(rows) if self.obj is not None else None
        size = self.obj.front_size(rows) if self.obj is not None else None
        return {"trials": len(rows), O.COMPUTE: compute, O.HYPERVOLUME: hv, O.FRONT_SIZE: size}

    def log(self, tracker: "SweepTracker") -> dict:
        from mlflow.entities import Metric

        p, ts = self.point(), int(time.time() * 1000)
        n = p["trials"]
        metrics = [Metric(O.COMPUTE, p[O.COMPUTE], ts, n)]
        if p[O.HYPERVOLUME] is not None:
            metrics += [Metric(O.HYPERVOLUME, p[O.HYPERVOLUME], ts, n),
                        Metric(O.HYPERVOLUME_BY_COMPUTE, p[O.HYPERVOLUME], ts, int(round(p[O.COMPUTE]))),
                        Metric(O.FRONT_SIZE, float(p[O.FRONT_SIZE]), ts, n)]
        tracker.client.log_batch(tracker.parent_id, metrics=metrics)
        return p


def failure_reason(trial) -> str:
    """Why a trial failed: the reason its driver reported last (tune.sweep_trial: the exception's
    type and message and its innermost frames), else read from Tune's error text — the trial's local
    error.txt (written before callbacks hear of the error; the copy under the sweep dir is synced
    later, which is how the reason used to be lost as "unknown error")."""
    reason = (getattr(trial, "last_result", None) or {}).get("failure_reason")
    if reason:
        return str(reason)
    from .failures import reason_from_text

    for read in (lambda: Path(trial.error_file).read_text(), trial.get_error):
        try:
            text = str(read() or "")
        except Exception:  # noqa: BLE001 — no error file (yet): try the next source
            text = ""
        if text.strip():
            return reason_from_text(text)
    return "unknown error: Tune recorded no error text for this trial"
