"""One source of truth for the objectives (issue 13): change a spec's objectives or forgetting
weights, and Optuna's front (study.best_trials), the sweep's printed front, the confirm stage's
choice and analysis's fronts.csv still agree, in the spec's directions.

No Ray cluster: the sweep's own pieces run on the inputs a sweep gives them — the real searcher
(tune.make_searcher: Ray's OptunaSearch on the sweep's SQLite study) asked for configs and told the
results, the real trial outcome (trial.outcome), the real MLflow logging (tracking.SweepTracker,
MLflowTrialLogger) into a real SQLite store, tune.summarize on real Tune Result objects, and the
analysis command on that store. Plus the MLflow UX: artifacts in the sweep dir, a description per
trial run, the UI command and the runs-table URL (a real `mlflow ui` started from the printed command).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from smf_sweep import objectives as O
from smf_sweep.objectives import Objectives

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
BASE = {"medmcqa": 0.25, "medmcqa.hib": True, "wikitext": 20.0, "wikitext.hib": False,
        "triviaqa": 0.60, "triviaqa.hib": True, "precision": "fp32"}
# per trial (in the searcher's order): MedMCQA gain pp, TriviaQA delta pp, WikiText delta %; None = failed
RESULTS = [(10, -1, 1), (12, -6, -4), (8, 0, 10), (15, -10, 2), None, (5, 1, 0), (11, -3, 8), (9, -2, -2),
           (14, -8, -10)]
VARIANTS = {
    "default": [],
    "triviaqa first": ["objectives=[{name: triviaqa/delta, mode: max}, {name: medmcqa_gain_pp, mode: max}]"],
    "triviaqa-only forgetting": ["forgetting={triviaqa: 1.0, wikitext: 0.0}"],
    "three objectives": ["objectives=[{name: medmcqa_gain_pp, mode: max}, {name: forgetting, mode: min}, "
                         "{name: wikitext/delta, mode: min}]", "forgetting={triviaqa: 3.0, wikitext: 1.0}"],
}


def load(storage: Path, overrides: list[str], top: int = 2):
    from smf_sweep.spec import load_spec
    return load_spec(SMOKE, [f"storage={storage}", f"search.trials={len(RESULTS) - 4}", f"confirm.top={top}",
                             *overrides])


def after_of(gain, tq, wk) -> dict:
    return {"medmcqa": BASE["medmcqa"] + gain / 100, "triviaqa": BASE["triviaqa"] + tq / 100,
            "wikitext": BASE["wikitext"] * (1 + wk / 100)}


def brute_front(values: dict[str, tuple], modes) -> set:
    """Trial ids no other trial dominates (>= in every direction, > in one)."""
    better = {t: tuple(v if m == "max" else -v for v, m in zip(vals, modes)) for t, vals in values.items()}
    return {t for t, b in better.items() if not any(
        all(x >= y for x, y in zip(o, b)) and any(x > y for x, y in zip(o, b)) for u, o in better.items() if u != t)}


def run_sweep_pieces(spec) -> dict:
    """What run_sweep does around Tune, with the trials' results given: returns the Tune results,
    the tracking URI and each trial's outcome."""
    from ray.tune import Result

    from smf_sweep.tracking import MLflowTrialLogger, SweepTracker
    from smf_sweep.trial import TrialFailed, outcome
    from smf_sweep.tune import Describe, make_searcher

    sweep = spec.sweep_dir()
    sweep.mkdir(parents=True)
    uri, experiment = f"sqlite:///{sweep / 'mlflow.db'}", f"smf_sweep/{spec.name}"
    frozen = sweep / "spec.json"
    frozen.write_text(json.dumps(spec.to_dict(), default=str))
    (sweep / "sweep.json").write_text(json.dumps({"name": spec.name, "tracking_uri": uri, "experiment_name": experiment,
                                                  "spec_hash": spec.spec_hash()}))       # as run_sweep writes it
    SweepTracker(uri, experiment, spec.name, spec.spec_hash()).log_sweep(spec.to_dict(), BASE, frozen)
    searcher = make_searcher(spec)
    logger = MLflowTrialLogger({"uri": uri, "experiment": experiment, "sweep": spec.name,
                                "spec_hash": spec.spec_hash()}, Describe(spec))
    logger.setup()
    grid, outs = [], {}
    for i, res in enumerate(RESULTS):
        tid = f"t{i:02d}"
        config = searcher.suggest(tid)
        trial = SimpleNamespace(trial_id=tid, config=config, last_result={},
                                get_error=lambda: "smf_sweep.trial.TrialFailed: diverged: non-finite loss")
        logger.on_trial_start(0, [], trial)
        if res is None:
            searcher.on_trial_complete(tid, error=True)
            logger.on_trial_error(0, [], trial)
            grid.append(Result(metrics={"trial_id": tid, "config": config}, checkpoint=None,
                               error=TrialFailed("diverged"), path=str(sweep)))
            continue
        out = {**outcome(spec, BASE, after_of(*res)), "trial_id": tid}
        outs[tid] = out
        trial.last_result = out
        searcher.on_trial_complete(tid, result=out)
        logger.on_trial_complete(0, [], trial)
        grid.append(Result(metrics={**out, "config": config}, checkpoint=None, error=None, path=str(sweep)))
    logger.on_experiment_end([])
    return {"grid": grid, "uri": uri, "outs": outs, "searcher": searcher}


def printed_front(text: str) -> list[str]:
    """Trial ids of the printed front table, in printed order."""
    lines = text.split("Pareto-optimal", 1)[1].split("\nobjectives:", 1)[0].splitlines()[2:]
    return [ln.split()[0] for ln in lines if ln.strip()]


def analysis_front(sweep_dir: Path, out: Path, monkeypatch) -> tuple[list[dict], str]:
    from analysis.pareto import main

    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    assert main([str(sweep_dir), "--out", str(out)]) == 0
    return list(csv.DictReader(open(out / "fronts.csv"))), (out / "table.md").read_text()


# ---- the Objectives themselves --------------------------------------------------------------------
def test_defaults_are_the_specs_defaults_and_round_trip(tmp_path):
    from smf_sweep.spec import load_yaml, parse_spec

    raw = load_yaml(SMOKE.read_text())
    raw.pop("objectives"), raw.pop("forgetting")          # the Spec dataclass's defaults
    raw["storage"] = str(tmp_path)
    obj = Objectives.from_spec(parse_spec(raw))
    assert obj == Objectives()                              # what analysis assumes for unrecorded sweeps
    assert obj.senses == {"medmcqa_gain_pp": "max", "forgetting": "min"}
    assert Objectives.from_json(obj.to_json()) == obj and Objectives.from_dict(json.loads(json.dumps(obj.to_dict()))) == obj
    spec = load(tmp_path, VARIANTS["three objectives"])
    three = Objectives.from_spec(spec)
    assert three.names == ("medmcqa_gain_pp", "forgetting", "wikitext/delta") and three.modes == ("max", "min", "min")
    assert dict(three.forgetting) == {"triviaqa": 3.0, "wikitext": 1.0}
    assert Objectives.from_json(three.to_json()) == three
    assert "0.75·TriviaQA drop in pp + 0.25·WikiText increase in %" in three.describe()
    # the probes' declared directions, or the base probes' recorded ones
    assert not three.higher_is_better("wikitext") and three.higher_is_better("triviaqa")
    flipped = Objectives.from_spec(spec, {**BASE, "wikitext.hib": True})
    assert flipped.higher_is_better("wikitext")


@pytest.mark.parametrize("bad, words", [
    ({"modes": ("max", "up")}, "max or min"),
    ({"names": ("medmcqa_gain_pp", "accuracy")}, "unknown objective"),
    ({"names": ("forgetting",)}, "modes"),
    ({"forgetting": (("triviaqa", 0.0), ("wikitext", 0.0))}, "positive weight"),
    ({"forgetting": (("medmcqa", 1.0),)}, "not a forgetting probe"),
])
def test_bad_objectives_are_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        Objectives(**bad)


def test_outcome_computes_forgetting_through_the_spec(tmp_path):
    from smf_sweep.trial import outcome

    after = after_of(10, -4, 6)
    default = outcome(load(tmp_path, []), BASE, after)
    assert default["medmcqa_gain_pp"] == pytest.approx(10) and default["triviaqa/delta"] == pytest.approx(-4)
    assert default["wikitext/delta"] == pytest.approx(6) and default["forgetting"] == pytest.approx(5)
    only_tq = outcome(load(tmp_path, VARIANTS["triviaqa-only forgetting"]), BASE, after)
    assert only_tq["forgetting"] == pytest.approx(4)
    weighted = outcome(load(tmp_path, VARIANTS["three objectives"]), BASE, after)
    assert weighted["forgetting"] == pytest.approx((3 * 4 + 6) / 4)


def test_the_variants_rank_differently():
    """The data below tells the variants apart: a front computed with the default objectives would
    fail the agreement test of every other variant."""
    fronts = {}
    for name, overrides in VARIANTS.items():
        obj = _objectives_of(overrides)
        vals = {}
        for i, res in enumerate(RESULTS):
            if res is not None:
                d = {"medmcqa": res[0], "triviaqa": res[1], "wikitext": res[2]}
                m = {**{O.delta(t): v for t, v in d.items()}, **obj.scores(d)}
                vals[f"t{i:02d}"] = tuple(m[n] for n in obj.names)
        fronts[name] = brute_front(vals, obj.modes)
    assert all(fronts[n] != fronts["default"] for n in VARIANTS if n != "default"), fronts


def _objectives_of(overrides):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        return Objectives.from_spec(load(Path(d), overrides))


# ---- the agreement --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optuna_summary_confirm_and_analysis_agree(variant, tmp_path, capsys, monkeypatch):
    import optuna

    from smf_sweep.tune import confirm_choice, summarize

    monkeypatch.chdir(tmp_path)
    spec = load(tmp_path / "sweeps", VARIANTS[variant])
    obj = Objectives.from_spec(spec)
    run = run_sweep_pieces(spec)
    outs = run["outs"]
    expected = brute_front({t: tuple(o[n] for n in obj.names) for t, o in outs.items()}, obj.modes)
    best_first = sorted(expected, key=lambda t: obj.rank_key(outs[t]))

    # Optuna: the study make_searcher opened, in the spec's directions
    storage = f"sqlite:///{spec.sweep_dir() / 'optuna.db'}"
    study = optuna.load_study(study_name=f"{spec.name}-{spec.spec_hash()}", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE" if m == "max" else "MINIMIZE" for m in obj.modes]
    assert {f"t{t.number:02d}" for t in study.best_trials} == expected      # trial i was asked i-th

    # the printed front and the summary's
    capsys.readouterr()
    summary = summarize(spec, run["grid"], run["uri"])
    text = capsys.readouterr().out
    assert [r["trial_id"] for r in summary["front"]] == best_first
    assert printed_front(text) == best_first
    assert "best_trials" in text and summary["finished"] == len(outs) and summary["trials"] == len(RESULTS)
    assert summary["objectives"] == obj.to_dict()

    # the confirm stage: the first confirm.top of that front, by the first objective in its direction
    chosen = confirm_choice(spec, summary["front"])
    assert [r["trial_id"] for r in chosen] == best_first[:2]
    assert all(r["params"] == run["grid"][int(r["trial_id"][1:])].config for r in chosen)

    # analysis reads the objectives back from the sweep's records and ranks the same way
    rows, table = analysis_front(spec.sweep_dir(), tmp_path / "analysis", monkeypatch)
    overall = [r["trial_id"] for r in rows if r["front"] == "overall"]
    assert overall == best_first
    meta = json.loads((spec.sweep_dir() / "sweep.json").read_text())
    assert Objectives.from_dict(meta["objectives"]) == obj
    assert obj.describe() in table and "(as recorded: parent run)" in table
    first = obj.short(obj.names[0])
    assert f"| smf: best {first} |" in table
    assert not (tmp_path / "mlruns").exists()                      # artifacts live in the sweep dir


def test_analysis_falls_back_to_sweep_json_then_defaults(tmp_path, monkeypatch):
    """Without the parent run's tag analysis reads sweep.json's objectives; without both, the
    contracts' defaults (stores logged before objectives were recorded)."""
    from mlflow import MlflowClient

    from analysis.runs import load as load_runs
    from analysis.source import resolve

    monkeypatch.chdir(tmp_path)
    spec = load(tmp_path / "sweeps", VARIANTS["triviaqa-only forgetting"])
    client = MlflowClient(run_sweep_pieces(spec)["uri"])
    exp = client.get_experiment_by_name(f"smf_sweep/{spec.name}")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'sweep'")
    client.delete_tag(parent.info.run_id, O.OBJECTIVES_TAG)
    sweep = load_runs(resolve(str(spec.sweep_dir())))
    assert sweep.objectives_source == "sweep.json" and sweep.objectives == Objectives.from_spec(spec)
    # forgetting recomputed from the deltas, when missing, with the recorded weights
    assert dict(sweep.objectives.forgetting) == {"triviaqa": 1.0, "wikitext": 0.0}
    meta = json.loads((spec.sweep_dir() / "sweep.json").read_text())
    meta.pop("objectives")
    (spec.sweep_dir() / "sweep.json").write_text(json.dumps(meta))
    sweep = load_runs(resolve(str(spec.sweep_dir())))
    assert sweep.objectives == Objectives() and sweep.objectives_source.startswith("defaults")


def test_fronts_in_any_directions_match_brute_force():
    import numpy as np
    import pandas as pd

    from analysis.fronts import nondominated

    rng = np.random.default_rng(0)
    for trial in range(300):
        k = int(rng.integers(1, 4))
        n = int(rng.integers(0, 14))
        modes = tuple(rng.choice(["max", "min"], size=k))
        vals = rng.integers(-2, 3, size=(n, k)).astype(float)
        if n and trial % 7 == 0:
            vals[rng.integers(0, n), rng.integers(0, k)] = np.nan
        df = pd.DataFrame(vals, columns=[f"c{j}" for j in range(k)])
        got = set(df.index[nondominated(df, dict(zip(df.columns, modes)))])
        finite = {i: tuple(r) for i, r in zip(df.index, vals) if not np.isnan(r).any()}
        assert got == brute_front(finite, modes), (modes, vals)


# ---- MLflow: where artifacts go, what a trial run says, how to open the runs table -----------------
@pytest.fixture(scope="module")
def default_sweep(tmp_path_factory):
    from smf_sweep.tune import summarize

    tmp = tmp_path_factory.mktemp("ux")
    cwd = os.getcwd()
    os.chdir(tmp)                              # MLflow's ./mlruns default would land here
    try:
        spec = load(tmp / "sweeps", [])
        run = run_sweep_pieces(spec)
        summary = summarize(spec, run["grid"], run["uri"])
    finally:
        os.chdir(cwd)
    return {"spec": spec, "tmp": tmp, "summary": summary, **run}


def test_artifacts_live_in_the_sweep_dir(default_sweep):
    from mlflow import MlflowClient

    spec, uri = default_sweep["spec"], default_sweep["uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"smf_sweep/{spec.name}")
    assert exp.artifact_location == str(spec.sweep_dir() / "mlartifacts")
    assert exp.tags.get(O.EXPERIMENT_KIND_TAG) == "custom_model_development"
    (parent,) = client.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'sweep'")
    assert parent.info.artifact_uri.startswith(str(spec.sweep_dir() / "mlartifacts"))
    assert (Path(parent.info.artifact_uri) / "spec.json").is_file()
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["spec.json"]
    assert not (default_sweep["tmp"] / "mlruns").exists()
    assert Objectives.from_json(parent.data.tags[O.OBJECTIVES_TAG]) == Objectives.from_spec(spec)


def test_each_trial_run_describes_its_config(default_sweep):
    from mlflow import MlflowClient

    spec = default_sweep["spec"]
    client = MlflowClient(default_sweep["uri"])
    exp = client.get_experiment_by_name(f"smf_sweep/{spec.name}")
    runs = client.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'trial'")
    assert len(runs) == len(RESULTS)
    notes = {r.data.tags["trial_id"]: r.data.tags[O.NOTE_TAG] for r in runs}
    assert all("\n" not in n and len(n) < 200 for n in notes.values())
    assert notes["t00"] == "smf: n_keys=32 top_t=128 selector=kl lr=0.03 · seed 0 · search, the study's point"
    assert notes["t02"] == "lora: rank=16 alpha=32 lr=0.001 · seed 0 · search, the study's point"
    for r in runs:                                  # every searched parameter of the trial is in its note
        cfg = default_sweep["grid"][int(r.data.tags["trial_id"][1:])].config
        method = cfg["method"]
        assert notes[r.data.tags["trial_id"]].startswith(f"{method}: ")
        for k in cfg:
            if k != "method":
                assert f"{k.split('.', 1)[1]}=" in notes[r.data.tags["trial_id"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_last_lines_open_the_runs_table(default_sweep):
    """The printed command starts the UI on the sweep's store, and the printed URL is the UI's route
    of the experiment's runs table (a hash route of MLflow's single page app, checked in its bundle)."""
    import mlflow

    from smf_sweep.tune import where_to_look

    s, uri = default_sweep["summary"], default_sweep["uri"]
    exp_id = s["experiment_id"]
    assert s["mlflow_ui"] == f"mlflow ui --backend-store-uri {uri} --port 5000"
    assert s["runs_url"] == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
    lines = where_to_look(s).splitlines()
    assert any(s["mlflow_ui"] in ln for ln in lines) and s["runs_url"] in lines[-1]
    # the route, in the UI that this mlflow ships
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="ignore") for p in js.glob("main.*.js"))
    assert "createHashRouter" in bundle and '"/experiments/:experimentId/runs"' in bundle
    # the printed command, on another port, serves the UI and this experiment
    port = _free_port()
    cmd = s["mlflow_ui"].replace("--port 5000", f"--port {port}").split()
    assert cmd[0] == "mlflow"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *cmd[1:], "--workers", "1"], cwd=default_sweep["tmp"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = s["runs_url"].replace(":5000", f":{port}")
    root = url.split("/#/")[0]
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, "mlflow ui exited"
            try:
                with urllib.request.urlopen(root + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow ui did not answer"
            time.sleep(0.5)
        with urllib.request.urlopen(root + "/", timeout=10) as r:      # the page the URL opens
            page = r.read().decode()
        assert re.search(r'static/js/main\.[0-9a-f]+\.js', page)
        q = f"{root}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
        with urllib.request.urlopen(q, timeout=10) as r:
            assert json.loads(r.read())["experiment"]["name"] == f"smf_sweep/{default_sweep['spec'].name}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- the same, through a real sweep (Ray Tune + Train on the embedded world) -----------------------
@pytest.mark.slow
def test_a_real_sweep_with_other_objectives_agrees_everywhere(world, tmp_path):
    """`python -m smf_sweep.tune` with objectives [TriviaQA Δ ↑, gain ↑] and TriviaQA-only
    forgetting: Optuna's best_trials, the printed and JSON fronts, the confirm stage's choice and
    fronts.csv are the same trials in the same order; the last lines open the runs table."""
    import optuna

    storage = tmp_path / "sweeps"
    sets = ["train.max_steps=8", "train.log_every=4", "methods.smf.fixed.background_batches=20",
            "search.trials=1", "methods.full.points=[]",
            "methods.smf.points=[{n_keys: 16, top_t: 16, selector: kl, lr: 0.01}]",
            "objectives=[{name: triviaqa/delta, mode: max}, {name: medmcqa_gain_pp, mode: max}]",
            "forgetting={triviaqa: 1.0, wikitext: 0.0}", "confirm.top=1", "confirm.seeds=[1]"]
    cmd = [sys.executable, "-m", "smf_sweep.tune", str(SMOKE), "--storage", str(storage), "--quiet", "--json",
           *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    lines = r.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    from analysis.runs import finished, load as load_runs
    from analysis.source import resolve
    from analysis.summary import fronts_table
    from smf_sweep.spec import load_spec

    spec = load_spec(SMOKE, [f"storage={storage}", *sets])
    obj = Objectives.from_spec(spec)
    assert summary["objectives"] == obj.to_dict()
    front = [row["trial_id"] for row in summary["front"]]
    assert front and front == printed_front(r.stdout)
    assert [row["trial_id"] for row in sorted(summary["front"], key=obj.rank_key)] == front
    db = f"sqlite:///{spec.sweep_dir() / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(db)
    study = optuna.load_study(study_name=name, storage=db)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert sorted(t.number for t in study.best_trials) == sorted(x["optuna_trial"] for x in summary["front"])
    assert summary["confirm"]["trials"] == front[:1]
    assert lines[-2].startswith("trial runs: ") and summary["runs_url"] in lines[-2]
    assert summary["mlflow_ui"] in lines[-3]
    # analysis, with the objectives it reads back from the sweep's records, on the search's trials
    sweep = load_runs(resolve(str(spec.sweep_dir())))
    assert sweep.objectives == obj and sweep.objectives_source == "parent run"
    fin = finished(sweep.trials, sweep.objectives)
    table = fronts_table(fin[fin["stage"] == "search"], sweep.objectives)
    assert list(table.loc[table["front"] == "overall", "trial_id"]) == front
    a = subprocess.run([sys.executable, "-m", "analysis.pareto", str(spec.sweep_dir()), "--out", str(tmp_path / "a")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr
    rows = list(csv.DictReader(open(tmp_path / "a" / "fronts.csv")))
    assert {x["stage"] for x in rows} <= {"search", "confirm"}
    assert (spec.sweep_dir() / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
