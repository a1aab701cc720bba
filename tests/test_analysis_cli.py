"""`python -m analysis.pareto` end to end on a real MLflow store (SQLite, then a real server).

The store is written the way docs/contracts.md says the sweep logs: a parent run with base/<task>,
child trial runs with the contracts' tags, params and metrics, some FAILED or KILLED.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from matplotlib.image import imread  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = {"medmcqa": 0.25, "wikitext": 20.0, "triviaqa": 0.60}
# trial id, method, selector, config, seed, (gain pp, TriviaQA delta pp, WikiText delta %), default
# forgetting = (-TriviaQA delta + WikiText delta) / 2
TRIALS = [
    ("s1", "smf", "kl", {"smf.n_keys": 64, "smf.top_t": 256, "lr": 5e-4}, 0, (2.0, -0.4, 0.6), 1),
    ("s2", "smf", "kl", {"smf.n_keys": 64, "smf.top_t": 256, "lr": 5e-4}, 1, (3.0, -0.6, 1.0), 1),
    ("s3", "smf", "tfidf", {"smf.n_keys": 64, "smf.top_t": 256, "lr": 5e-4}, 0, (2.0, -1.0, 1.0), 0),
    ("s4", "smf", "tf", {"smf.n_keys": 128, "smf.top_t": 512, "lr": 1e-3}, 0, (4.0, -2.0, 2.0), 0),
    ("s5", "smf", "random", {"smf.n_keys": 128, "smf.top_t": 512, "lr": 1e-3}, 0, (1.0, -1.0, 1.0),
     0),
    ("s6", "smf", "kl", {"smf.n_keys": 128, "smf.top_t": 512, "lr": 1e-3}, 0, (4.0, -2.0, 2.0), 0),
    ("s7", "smf", "tfidf", {"smf.n_keys": 32, "smf.top_t": 128, "lr": 1e-4}, 0, (0.5, 0.0, 0.2), 0),
    ("s8", "smf", "kl", {"smf.n_keys": 256, "smf.top_t": 1024, "lr": 5.0}, 0, None, 0),  # FAILED
    ("s9", "smf", "kl", {"smf.n_keys": 256, "smf.top_t": 1024, "lr": 1e-3}, 0, (4.5, -3.0, 4.0), 0),
    ("l1", "lora", None, {"lora.rank": 16, "lr": 2e-4}, 0, (6.0, -3.0, 4.0), 1),
    ("l2", "lora", None, {"lora.rank": 16, "lr": 2e-4}, 1, (5.0, -3.0, 3.0), 1),
    ("l3", "lora", None, {"lora.rank": 64, "lr": 2e-4}, 0, (5.0, -3.0, 5.0), 0),
    ("l4", "lora", None, {"lora.rank": 8, "lr": 5e-5}, 0, (1.0, -0.5, 1.0), 0),
    ("l5", "lora", None, {"lora.rank": 8, "lr": 1e-5}, 0, "KILLED", 0),
    ("f1", "full", None, {"lr": 5e-5}, 0, None, 1),
    ("f2", "full", None, {"lr": 1e-4}, 0, None, 0),
]
FAIL_REASON = {"s8": "diverged: non-finite loss at step 3", "f1": "out of memory",
               "f2": "DeepSpeed init failed"}
FRONTS = {"smf": {"s1", "s2", "s4", "s6", "s7", "s9"},  # s4, s6: exact duplicates
          "lora": {"l1", "l2", "l4"},
          "overall": {"s7", "s1", "s2", "s4", "s6", "l2", "l1"}}
SIZES = {"pareto.png": (600, 1800), "selectors.png": (450, 1600), "memory.png": (800, 1200)}


def _probes(gain, tq, wk) -> dict:
    after = {"medmcqa": BASE["medmcqa"] + gain / 100, "triviaqa": BASE["triviaqa"] + tq / 100,
             "wikitext": BASE["wikitext"] * (1 + wk / 100)}
    m = {}
    for t in BASE:
        m[f"{t}/before"], m[f"{t}/after"] = BASE[t], after[t]
    m.update({"medmcqa/delta": gain, "triviaqa/delta": tq, "wikitext/delta": wk,
              "medmcqa_gain_pp": gain, "forgetting": (-tq + wk) / 2})
    return m


def write_sweep(client: MlflowClient, name: str, trials: list) -> tuple[str, dict]:
    """One sweep as contracts.md lays it out; returns (experiment id, trial id -> run id)."""
    exp = client.create_experiment(f"smf_sweep/{name}")
    parent = client.create_run(exp, run_name=name, tags={"smf_sweep.role": "sweep"})
    pid = parent.info.run_id
    ts = int(time.time() * 1000)
    client.log_batch(pid, metrics=[Metric(f"base/{t}", v, ts, 0) for t, v in BASE.items()])
    ids = {}
    for tid, method, sel, cfg, seed, result, default in trials:
        tags = {"mlflow.parentRunId": pid, "smf_sweep.role": "trial", "method": method,
                "trial_id": tid, "spec_hash": "abc123", "seed": str(seed),
                "smf_sweep.default_point": "true" if default else "false"}
        params = {"method": method, "seed": seed, "epochs": 1, **cfg}
        if sel:
            tags["selector"] = sel
            params["smf.selector"] = sel
        if tid in FAIL_REASON:
            tags["failure_reason"] = FAIL_REASON[tid]
        run = client.create_run(exp, run_name=tid, tags=tags)
        rid = ids[tid] = run.info.run_id
        metrics = [Metric("train/loss", 3.0 - s, ts + s, s) for s in range(3)]
        if isinstance(result, tuple):
            metrics += [Metric(k, v, ts, 0) for k, v in _probes(*result).items()]
            if method == "smf":
                metrics += [Metric("retrofit/medmcqa", 0.25, ts, 0),
                            Metric("retrofit/wikitext", 20.2, ts, 0),
                            Metric("retrofit/triviaqa", 0.598, ts, 0)]
        client.log_batch(rid, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        status = "FINISHED" if isinstance(result, tuple) else (result or "FAILED")
        client.set_terminated(rid, status)
    client.set_terminated(pid, "FINISHED")
    return exp, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweeps") / "demo"
    d.mkdir()
    db = d / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    _, ids = write_sweep(client, "demo", TRIALS)
    failed_exp, _ = write_sweep(client, "allfailed", [t for t in TRIALS if t[0] in FAIL_REASON])
    client.create_experiment("smf_sweep/norunsyet")
    (d / "sweep.json").write_text(json.dumps({"name": "demo", "tracking_uri": uri,
                                              "experiment_name": "smf_sweep/demo",
                                              "spec_hash": "abc123"}))
    return {"dir": d, "uri": uri, "ids": ids, "failed_exp": failed_exp}


def cli(*args, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "analysis.pareto", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def check_outputs(out: Path, ids: dict) -> None:
    for name, (h, w) in SIZES.items():
        img = imread(out / name)
        assert img.shape[:2] == (h, w), name
        assert img[..., :3].std() > 0.05, f"{name} looks blank"
    rows = list(csv.DictReader(open(out / "fronts.csv")))
    got = sorted((r["front"], r["trial_id"]) for r in rows)
    want = sorted((f, t) for f, ts in FRONTS.items() for t in ts)
    assert got == want
    by_key = {(r["front"], r["trial_id"]): r for r in rows}
    assert by_key[("smf", "s9")]["run_id"] == ids["s9"]
    assert by_key[("lora", "l4")]["params.lora.rank"] == "8"
    assert float(by_key[("overall", "s7")]["forgetting"]) == pytest.approx(0.1)

    table = (out / "table.md").read_text()
    line = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ")}
    base = [c.strip() for c in line["base model"].split("|")]
    assert base[5:12] == ["25.0", "0", "20.00", "0", "60.0", "0", "0"]
    assert "s9" in line["smf: best gain"] and ids["s9"] in line["smf: best gain"]
    within = line["smf: best with forgetting ≤ 1"]  # s1 + s2: one config over two seeds
    assert ids["s1"] in within and ids["s2"] in within and "+2.5 ± 0.7" in within
    assert "n_keys=64" in within
    lora_best = line["lora: best gain"]
    assert ids["l1"] in lora_best and ids["l2"] in lora_best and ids["l3"] not in lora_best
    assert ids["l4"] in line["lora: best with forgetting ≤ 1"]
    assert "full: no finished trials" in line
    assert "3 failed (excluded)" in table and "1 killed (excluded)" in table
    for reason in FAIL_REASON.values():
        assert reason in table
    assert "| tfidf | selector | 2 |" in table and "| random | control | 1 |" in table

    html = (out / "pareto.html").read_text()
    assert 'src="https://cdn.plot.ly' not in html and len(html) > 1_000_000  # plotly.js inlined
    for tid, rid in ids.items():
        assert (rid in html) == (tid not in FAIL_REASON and tid != "l5"), tid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """A real `mlflow server` on the SQLite store; started here, waited for by the test using it."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # saves ~6 s of start-up
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path_factory.mktemp("server"), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)  # own group: uvicorn ends with it
    yield proc, f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(proc, url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.time() < deadline, f"mlflow server did not answer in {timeout} s"
        time.sleep(0.3)


def test_sweep_dir(store, server):  # `server` only starts here, to overlap its start-up
    r = cli(store["dir"])  # default --out: <sweep dir>/analysis
    assert r.returncode == 0, r.stderr
    assert "12 finished" in r.stdout and "3 failed" in r.stdout and "1 killed" in r.stdout
    check_outputs(store["dir"] / "analysis", store["ids"])


def test_mlflow_server(store, server, tmp_path):
    proc, url = server
    wait_for(proc, url)
    r = cli("demo", "--tracking-uri", url, cwd=tmp_path)  # name without the smf_sweep/ prefix
    assert r.returncode == 0, r.stderr
    check_outputs(tmp_path / "analysis_out", store["ids"])  # default --out for an experiment


def _one_line_error(r, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], r.stderr


def _in_process(argv, code, text, monkeypatch, capsys):
    from analysis.pareto import main

    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)  # main() sets them; undone after the test
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_bad_sources(store, tmp_path, monkeypatch, capsys):
    _one_line_error(cli(tmp_path / "nope"), 2, "no such sweep directory")
    _one_line_error(cli(tmp_path), 2, "no sweep.json")
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "sweep.json").write_text(json.dumps(
        {"name": "x", "tracking_uri": f"sqlite:///{tmp_path}/gone/mlflow.db"}))
    _one_line_error(cli(moved), 2, "no MLflow store at")
    assert not (tmp_path / "gone").exists()  # MLflow would have created an empty store
    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.time()
    _one_line_error(cli("demo", "--tracking-uri", dead), 2, "cannot reach tracking server")
    assert time.time() - t0 < 30
    # past the cheap checks: in-process (mlflow is imported already), same exit codes and messages
    _in_process(["nosuchsweep", "--tracking-uri", store["uri"]], 2, "no MLflow experiment",
                monkeypatch, capsys)


def test_empty_sources(store, tmp_path, monkeypatch, capsys):
    # only failed trials (by name, by id); no runs at all (name without the smf_sweep/ prefix)
    for exp in ("smf_sweep/allfailed", store["failed_exp"], "norunsyet"):
        _in_process([exp, "--tracking-uri", store["uri"], "--out", str(tmp_path / "o")], 1,
                    "no finished trials", monkeypatch, capsys)
    assert not (tmp_path / "o").exists()  # nothing written


def test_help():
    r = cli("--help")
    assert r.returncode == 0 and "SOURCE" in r.stdout and "--budget" in r.stdout


def test_compare_help_and_bad_sources(tmp_path, capsys):
    """analysis.compare: --help; a missing sweep dir is exit 2 with a one-line error; --groups must
    name every source (argparse's error). Its tables on real sweeps: test_early_stopping_sweep.py."""
    from analysis.compare import main

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "analysis.compare", "--help"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "SOURCE" in r.stdout and "--groups" in r.stdout
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path), "--groups", "one"])
    assert not (tmp_path / "o").exists()


def test_compare_compute_to_the_same_hypervolume():
    """analysis.compare's time-to-target: per search seed the target is the lower final hypervolume
    (both sweeps reached it); each sweep's minutes are those at the end of the trial that first got
    there; a seed with only one group is left out; the section's ratio is baseline ÷ early stopping."""
    import pandas as pd

    from analysis.compare import _to_target_lines, compute_to_reach, to_target

    def row(group, seed, minutes, hvs):
        prog = pd.DataFrame({"compute_s": [60.0 * m for m in minutes], "hypervolume": hvs})
        return {"group": group, "seed": seed, "hypervolume": hvs[-1], "progress": prog}

    on = row("es", 0, [1, 2, 3, 4], [10.0, 50.0, 90.0, 100.0])       # ends with more, and stops sooner
    off = row("base", 0, [2, 4, 6, 8], [10.0, 40.0, 80.0, 95.0])
    lone = row("es", 1, [1, 2], [5.0, 7.0])                            # no baseline for seed 1
    assert compute_to_reach(off["progress"], 95.0) == 8.0
    assert compute_to_reach(off["progress"], 96.0) != compute_to_reach(off["progress"], 96.0)   # nan: never
    (tt,) = to_target([on, off, lone], ["es", "base"])
    assert tt["seed"] == 0 and tt["target"] == 95.0
    assert tt[("es", 1.0)] == 4.0 and tt[("base", 1.0)] == 8.0          # 95 first reached at 4 and at 8
    assert tt[("es", 0.9)] == 3.0 and tt[("base", 0.9)] == 8.0          # 85.5: 90 at 3; 95 at 8
    text = "\n".join(_to_target_lines([tt], "es", "base"))
    assert "| 0 | 95 | 4.0 | 8.0 | 2.00× | 3.0 | 8.0 | 2.67× |" in text, text
    assert "base ÷ es: **2.00×**" in text and "base ÷ es: **2.67×**" in text


def test_compare_gives_no_ratio_where_the_baseline_has_no_hypervolume():
    """analysis.compare: a ratio whose baseline hypervolume is 0 (no front point inside the reference:
    the smoke sweep on some machines' worlds) says so, not nan× or inf×."""
    from analysis.compare import _ratio

    assert _ratio(3.0, 2.0, "off") == "1.50×"
    assert _ratio(0.0, 0.0, "off") == _ratio(1.0, 0.0, "off") == \
        "none (off's hypervolume is 0: no front point inside the reference)"
    assert _ratio(1.0, float("nan"), "off") == "none"


def test_compare_reports_each_seeds_ratio_with_an_interval():
    """analysis.compare: per search seed, early stopping's hypervolume per device-minute ÷ the
    baseline's (means over each group's sweeps of the seed), then their mean with a 95 % Student-t
    interval; a seed with one group only is left out, one seed has no interval."""
    from analysis.compare import _per_seed_line, per_seed

    def row(group, seed, hv_per_min):
        return {"group": group, "seed": seed, "hv_per_min": hv_per_min}

    rows = [row("es", 7, 8.552), row("base", 7, 5.985), row("es", 8, 6.361), row("base", 8, 5.261),
            row("es", 9, 5.96), row("base", 9, 4.2), row("es", 10, 9.0)]
    pairs = per_seed(rows, "es", "base")
    assert [s for s, _ in pairs] == [7, 8, 9]
    assert [round(x, 3) for _, x in pairs] == [1.429, 1.209, 1.419]
    text = "\n".join(_per_seed_line(pairs, "es", "base"))
    assert "1.43× (seed 7), 1.21× (seed 8), 1.42× (seed 9); mean 1.35×, 95 % Student-t interval 1.04–1.66× over 3 seeds" in text, text
    assert "one seed: no interval" in "\n".join(_per_seed_line(pairs[:1], "es", "base"))
    assert per_seed([row("es", 1, 2.0), row("base", 1, 1.0), row("base", 1, 3.0)], "es", "base") == [(1, 1.0)]


def test_compare_says_whether_each_front_agrees_within_the_baselines_seed_spread():
    """issue 16's second acceptance clause: per seed, early stopping's front hypervolume minus the
    baseline's (overall, then each method's own); agree when every difference is within the
    standard deviation of the baseline's values over the seeds. A method drawn but never finished
    counts 0; one never drawn is left out."""
    from analysis.compare import _front_spread_lines, front_spread

    def row(group, seed, hv, own, drew):
        return {"group": group, "seed": seed, "hypervolume": hv, "hv_by_method": own,
                "ends": {(m, "finished"): 1 for m in drew}}

    rows = [row("es", 7, 172.9, {"full": 172.9, "lora": 0.0, "smf": 105.0}, ["full", "lora", "smf"]),
            row("base", 7, 174.5, {"full": 174.5, "lora": 39.74, "smf": 115.9}, ["full", "lora", "smf"]),
            row("es", 8, 161.4, {"full": 143.7, "smf": 140.3}, ["full", "lora", "smf"]),   # lora drawn, none finished
            row("base", 8, 161.4, {"full": 143.7, "lora": 60.95, "smf": 140.3}, ["full", "lora", "smf"]),
            row("es", 9, 149.9, {"full": 137.9}, ["full"]),                              # smf, lora never drawn
            row("base", 9, 149.9, {"full": 137.9}, ["full"])]
    check = {c["front"]: c for c in front_spread(rows, "es", "base", ["full", "lora", "smf"])}
    assert [round(d, 2) for _, d in check["all methods"]["diffs"]] == [-1.6, 0.0, 0.0]
    assert check["all methods"]["spread"] == pytest.approx(12.3, abs=0.05) and check["all methods"]["within"]
    assert [round(d, 2) for _, d in check["lora"]["diffs"]] == [-39.74, -60.95]         # seed 9 left out
    assert check["lora"]["spread"] == pytest.approx(15.0, abs=0.05) and not check["lora"]["within"]
    assert [round(d, 2) for _, d in check["smf"]["diffs"]] == [-10.9, 0.0] and check["smf"]["within"]   # spread 17.3
    text = "\n".join(_front_spread_lines(rows, "es", "base", ["full", "lora", "smf"]))
    assert "| lora | -39.7 (seed 7), -61 (seed 8) | 15 (2 seeds) | **no** |" in text, text
    one = front_spread(rows[:2], "es", "base", ["full"])
    assert one[0]["spread"] != one[0]["spread"] and not one[0]["within"]                   # one seed: no spread
