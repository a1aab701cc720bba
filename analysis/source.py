"""Where a sweep's runs live: resolve the CLI's SOURCE to (tracking URI, experiment).

Standard library only, so that a wrong path or a dead server is reported in well under a second,
before mlflow, pandas and matplotlib are imported.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SWEEP_FILE = "sweep.json"
DEFAULT_DB = "mlflow.db"  # a sweep dir's default MLflow store (DESIGN.md, Storage)
PREFIX = "smf_sweep/"  # experiment name = smf_sweep/<sweep name> (contracts.md)


class SourceError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits non-zero."""


@dataclass(frozen=True)
class Source:
    tracking_uri: str
    experiment: str  # a name, or an id when `by_id`
    sweep_dir: Path | None  # None when SOURCE named an experiment
    spec_hash: str | None = None  # from sweep.json
    note: str = ""  # how the store was chosen, when it was not the obvious way
    objectives: dict | None = None  # sweep.json's (smf_sweep.objectives.Objectives.to_dict())


def sqlite_path(uri: str) -> Path | None:
    """The file behind a sqlite:/// URI (sqlite:////abs or sqlite:///rel), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a SourceError when the store cannot be read.

    MLflow would create an empty database for a missing SQLite file, and its REST client retries a
    dead server for minutes; both are checked here first.
    """
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            raise SourceError(f"no MLflow store at {path} (tracking URI {uri})")
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                r.read(64)
        except urllib.error.HTTPError as e:
            raise SourceError(f"tracking server {uri} answered /health with HTTP {e.code}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SourceError(f"cannot reach tracking server {uri}: {reason}")
        return
    if uri.startswith("file:") or "://" not in uri:
        raise SourceError(f"unsupported tracking URI {uri!r}: MLflow 3 needs sqlite:///<abs path>"
                          " or http://host:port (the ./mlruns file store raises)")


def _from_dir(d: Path, tracking_uri: str | None) -> Source:
    meta_path = d / SWEEP_FILE
    if not meta_path.is_file():
        raise SourceError(f"{d} is not a sweep directory (no {SWEEP_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {meta_path}: {e}")
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_path} is not a JSON object")
    exp = meta.get("experiment_name") or (PREFIX + meta["name"] if meta.get("name") else None)
    if not exp:
        raise SourceError(f"{meta_path} names no experiment (experiment_name or name)")
    local = d.resolve() / DEFAULT_DB
    note = ""
    uri = tracking_uri or meta.get("tracking_uri")
    if not uri:
        uri = f"sqlite:///{local}"
    elif tracking_uri is None:
        path = sqlite_path(uri)
        if path is not None and not path.is_file() and local.is_file():
            # the directory was moved or copied (e.g. from a cluster's shared storage)
            note = f"{path} not found; reading {local} instead"
            uri = f"sqlite:///{local}"
    objectives = meta.get("objectives") if isinstance(meta.get("objectives"), dict) else None
    return Source(uri, exp, d, meta.get("spec_hash"), note, objectives)


def resolve(source: str, tracking_uri: str | None = None) -> Source:
    """SOURCE (a sweep directory, or an experiment name/id) -> Source. Raises SourceError."""
    if not source:
        raise SourceError("empty SOURCE: give a sweep directory or an experiment name/id")
    d = Path(source)
    if d.is_dir():
        src = _from_dir(d, tracking_uri)
    else:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            if d.exists():
                raise SourceError(f"{source} is a file, not a sweep directory")
            raise SourceError(f"{source}: no such sweep directory (to name an MLflow experiment,"
                              " add --tracking-uri)")
        src = Source(uri, source, None)
    check_reachable(src.tracking_uri)
    return src
