"""MLflow records of a sweep: one parent run, one child run per trial (docs/contracts.md).

All writes happen in the Tune driver process (a Tune Callback), so a SQLite store has one writer.
A resumed sweep finds its parent run and each trial's run again by tags, so nothing is duplicated
and no record is lost; a failed trial's run ends FAILED with its reason."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from ray.tune import Callback

STEP_PREFIXES = ("train/", "retrofit/")
_TASKS = "medmcqa|wikitext|triviaqa"
FINAL_KEYS = re.compile(rf"^(({_TASKS})/(before|after|delta)|retrofit/({_TASKS})|medmcqa_gain_pp|forgetting"
                        r"|trial_seconds|trainable_params|train_steps|time\.\w+)$")


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
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        found = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`smf_sweep.role` = 'sweep' and tags.spec_hash = '{spec_hash}'"), max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=sweep, tags={
                "smf_sweep.role": "sweep", "spec_hash": spec_hash, "sweep": sweep}).info.run_id

    def log_sweep(self, spec_dict: dict, base: dict, spec_file: Path | None) -> None:
        from mlflow.entities import Metric, Param

        ts = int(time.time() * 1000)
        have = self.client.get_run(self.parent_id).data.params
        params = {k: v[:6000] for k, v in flatten(spec_dict).items() if k not in have}
        tags = {"git_commit": git_commit(), **{f"version.{k}": v for k, v in package_versions().items()}}
        metrics = [Metric(f"base/{k}", float(v), ts, 0) for k, v in base.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "." not in k]
        self.client.log_batch(self.parent_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                              tags=[_tag(k, v) for k, v in tags.items()])
        if spec_file is not None and spec_file.exists():
            self.client.log_artifact(self.parent_id, str(spec_file))

    def trial_run(self, trial_id: str) -> str | None:
        found = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.trial_id = '{trial_id}'"), max_results=1)
        return found[0].info.run_id if found else None

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


def _tag(k, v):
    from mlflow.entities import RunTag
    return RunTag(k, str(v)[:5000])


class MLflowTrialLogger(Callback):
    """Tune callback: a child run per trial, per-step training metrics, final probes/objectives."""

    def __init__(self, tracker_args: dict, describe):
        """describe(config) -> (params: dict[str, str], tags: dict[str, str]) for a trial's config."""
        self.tracker_args, self.describe = tracker_args, describe
        self.tracker: SweepTracker | None = None
        self.runs: dict[str, str] = {}

    def setup(self, **info):
        self.tracker = SweepTracker(**self.tracker_args)

    def _run(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        t = self.tracker
        rid = t.trial_run(trial.trial_id)
        params, tags = self.describe(trial.config)
        if rid is None:
            rid = t.client.create_run(t.experiment_id, run_name=f"{tags.get('method')}-{trial.trial_id}", tags={
                "mlflow.parentRunId": t.parent_id, "smf_sweep.role": "trial", "trial_id": trial.trial_id, **tags}).info.run_id
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
        from mlflow.entities import Metric

        rid, ts = self._run(trial), int(time.time() * 1000)
        res = trial.last_result or {}
        final = [Metric(k, float(v), ts, 0) for k, v in res.items()
                 if FINAL_KEYS.match(k) and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.tracker.client.log_batch(rid, metrics=final)
        self.tracker.client.set_terminated(rid, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self._run(trial)
        reason = failure_reason(trial)
        self.tracker.client.set_tag(rid, "failure_reason", reason[:5000])
        self.tracker.client.set_terminated(rid, "FAILED")

    def on_experiment_end(self, trials, **info):
        """Runs of trials that a stopped driver had started but Tune never recorded stay RUNNING:
        end them KILLED with the reason (their configurations were re-queued on resume)."""
        t, known = self.tracker, {tr.trial_id for tr in trials}
        for run in t.client.search_runs([t.experiment_id], filter_string=(
                f"tags.`mlflow.parentRunId` = '{t.parent_id}' and attributes.status = 'RUNNING'")):
            if run.data.tags.get("trial_id") not in known:
                t.client.set_tag(run.info.run_id, "failure_reason", "interrupted: the sweep's driver stopped before "
                                 "Tune recorded this trial; its configuration was run again on resume")
                t.client.set_terminated(run.info.run_id, "KILLED")
        t.finish("FINISHED")


def failure_reason(trial) -> str:
    """The last line of the trial's error trace: the exception and its message."""
    text = ""
    try:
        text = trial.get_error() or ""
    except Exception:
        pass
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrialFailed" in ln or "NonFiniteLoss" in ln:
            return ln.strip()
    return lines[-1].strip() if lines else "unknown error"
