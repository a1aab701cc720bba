"""Learning–forgetting curves in analysis: loading `curve/*` step metrics, checkpoint fronts, forgetting
at equal gain (interpolation, per-seed best, Student-t intervals), and the CLI end to end on a real
MLflow SQLite store written as the sweep logs it (tests/test_analysis_cli.write_sweep) plus curves.

Hand-made curves, forgetting = mean of the TriviaQA drop (a) and the WikiText increase (b):
    trial  arm        seed  (step, gain, a, b)
    s1     smf/kl     0     (0,0,0,0) (10,3,1,1) (20,5,2,4)
    s6     smf/kl     0     (0,0,0,0) (10,4,2,1) (20,2,0,0)              gain falls again
    s2     smf/kl     1     (0,0,0,0) (10,1,.5,.5) (20,3,1,1.5) (30,6,2,4)
    s3     smf/tfidf  0     (0,0,0,0) (10,2.5,1,3)                        never reaches 4
    l1     lora       0     (0,0,0,0) (5,2,1,1) (10,8,3,5)
    l3     lora       0     (0,1,0,0) (5,3,3,3) (10,4,3,3)               starts above 0
    l2     lora       1     (0,0,0,0) (5,4,1,2.2) (10,5,1,1.5)
At g=2: s1 (w=2/3: a=b=f=2/3) beats s6 (f=.75) for kl seed 0; s2 (w=.5: a=.75, b=1, f=.875) is seed 1;
l1 (f=1, exactly at step 5) beats l3 (f=1.5); l2 (w=.5: a=.5, b=1.1, f=.8).
At g=4: s6 (f=1.5 at step 10) beats s1 (f=2); s2 (w=1/3: a=4/3, b=7/3, f=11/6); l1 (w=1/3: a=5/3, b=7/3,
f=2) beats l3 (f=3); l2 (f=1.6 at step 5); s3 never reaches 4.
"""
import csv
import math
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")
from matplotlib.image import imread  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from analysis import curve_report, curves, equal_gain as eg  # noqa: E402
from smf_sweep.objectives import COST_S, Constraint, Objectives  # noqa: E402
from tests.test_analysis_cli import TRIALS, cli, write_sweep  # noqa: E402

CURVES = {
    "s1": [(0, 0, 0, 0), (10, 3, 1, 1), (20, 5, 2, 4)],
    "s6": [(0, 0, 0, 0), (10, 4, 2, 1), (20, 2, 0, 0)],
    "s2": [(0, 0, 0, 0), (10, 1, .5, .5), (20, 3, 1, 1.5), (30, 6, 2, 4)],
    "s3": [(0, 0, 0, 0), (10, 2.5, 1, 3)],
    "l1": [(0, 0, 0, 0), (5, 2, 1, 1), (10, 8, 3, 5)],
    "l3": [(0, 1, 0, 0), (5, 3, 3, 3), (10, 4, 3, 3)],
    "l2": [(0, 0, 0, 0), (5, 4, 1, 2.2), (10, 5, 1, 1.5)],
}
T975 = {1: 12.706, 2: 4.303, 3: 3.182}  # t(0.975, df), from tables


def curve_metrics(points, ts: int) -> list:
    """The contract's curve/* step metrics of one trial (KL = forgetting / 10)."""
    out = []
    for step, gain, a, b in points:
        f = (a + b) / 2
        vals = {"medmcqa_gain_pp": gain, "forgetting": f, "triviaqa/delta": -a, "wikitext/delta": b,
                "triviaqa_drop_pp": a, "wikitext_nats": math.log(1 + b / 100), "kl_general": f / 10,
                "medmcqa": 0.25 + gain / 100, "triviaqa": 0.6 - a / 100, "wikitext": 20 * (1 + b / 100),
                "medmcqa/delta": gain, "seconds": 1.0 + step}
        out += [Metric(f"curve/{k}", float(v), ts + step, step) for k, v in vals.items()]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("curves") / "curvy"
    d.mkdir()
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    _, ids = write_sweep(client, "curvy", TRIALS)
    ts = int(time.time() * 1000)
    for tid, pts in CURVES.items():
        client.log_batch(ids[tid], metrics=curve_metrics(pts, ts))
    # a retried report of s1's step 20, logged earlier: the later value (above) must win
    client.log_batch(ids["s1"], metrics=[Metric("curve/forgetting", 99.0, ts - 1000, 20)])
    write_sweep(client, "flat", TRIALS[:3])  # trials without curves (curves off)
    (d / "sweep.json").write_text('{"name": "curvy", "tracking_uri": "%s", "experiment_name": "smf_sweep/curvy"}'
                                  % uri)
    return {"dir": d, "uri": uri, "ids": ids}


def _frame(rows) -> pd.DataFrame:
    """Hand-made curve points: (run, method, selector, seed, step, gain, forgetting, a, b)."""
    df = pd.DataFrame(rows, columns=["run_id", "method", "selector", "seed", "step", "medmcqa_gain_pp",
                                     "forgetting", "triviaqa_drop_pp", "wikitext/delta"])
    df["trial_id"] = df["config_key"] = df["run_id"]
    df["algorithm"], df["stage"], df["default_point"], df["config"] = df["method"], "search", False, ""
    return df


# ---- the interpolation rule -------------------------------------------------------------------------------
def test_at_gain_crossing_never_nonmonotone_and_start():
    c = _frame([("r", "smf", "kl", 0, 20, 5, 3, 2, 4), ("r", "smf", "kl", 0, 0, 0, 0, 0, 0),
                ("r", "smf", "kl", 0, 10, 3, 1, 1, 1)])           # out of step order on purpose
    r = eg.at_gain(c, 4, ["forgetting", "triviaqa_drop_pp"])
    assert r["step"] == pytest.approx(15) and r["forgetting"] == pytest.approx(2)
    assert r["triviaqa_drop_pp"] == pytest.approx(1.5) and r["medmcqa_gain_pp"] == 4
    assert eg.at_gain(c, 3, ["forgetting"])["step"] == 10          # exactly on a point: that point
    assert eg.at_gain(c, 5.01, ["forgetting"]) is None             # never reaches: nothing
    # non-monotone: 0 → 6 → 3 → 12; g=5 crosses first between steps 0 and 1, g=10 between 2 and 3
    nm = _frame([("n", "lora", None, 0, s, g, f, 0, 0) for s, g, f in [(0, 0, 0), (1, 6, 6), (2, 3, 1), (3, 12, 4)]])
    assert eg.at_gain(nm, 5, ["forgetting"])["forgetting"] == pytest.approx(5)
    assert eg.at_gain(nm, 10, ["forgetting"])["forgetting"] == pytest.approx(1 + 3 * 7 / 9)
    assert eg.at_gain(nm, 10, ["forgetting"])["step"] == pytest.approx(2 + 7 / 9)
    # a curve that starts above g: its first point; a missing gain is skipped, a missing value is NaN
    up = _frame([("u", "lora", None, 0, 0, 2, 0.5, 0, 0), ("u", "lora", None, 0, 5, np.nan, 9, 0, 0),
                 ("u", "lora", None, 0, 10, 6, np.nan, 0, 0)])
    assert eg.at_gain(up, 1, ["forgetting"]) == {"step": 0.0, "forgetting": 0.5, "medmcqa_gain_pp": 1.0}
    assert math.isnan(eg.at_gain(up, 4, ["forgetting"])["forgetting"])


def test_best_per_seed_and_summary_with_several_seeds():
    rows = []  # runs of kl: (run, seed, gain and forgetting at step 10); e (seed 3) stops at gain 3
    for run, seed, g, f in [("a", 0, 10, 1.0), ("b", 0, 10, 0.4), ("c", 1, 10, 0.8), ("d", 2, 10, 1.1),
                            ("e", 3, 3, 5.0)]:
        rows += [(run, "smf", "kl", seed, 0, 0, 0, 0, 0), (run, "smf", "kl", seed, 10, g, f, f, 0)]
    rows += [("t", "smf", "tf", 0, 0, 0, 0, 0, 0), ("t", "smf", "tf", 0, 10, 10, 2.0, 1.0, 3.0)]
    pts = _frame(rows)
    best = eg.best_per_seed(pts, [5.0], "forgetting", ["triviaqa_drop_pp"])
    kl = best[best["selector"] == "kl"]
    assert list(kl["seed"]) == [0, 1, 2] and list(kl["run_id"]) == ["b", "c", "d"]   # seed 3 never reaches 5
    assert list(kl["forgetting"]) == pytest.approx([0.2, 0.4, 0.55])                 # halfway to step 10
    s = eg.summarise(best, pts, [5.0], ["forgetting", "triviaqa_drop_pp"]).set_index("selector")
    v = np.array([0.2, 0.4, 0.55])
    assert s.loc["kl", "n"] == 3 and s.loc["kl", "seeds"] == 4
    assert s.loc["kl", "forgetting"] == pytest.approx(v.mean())
    assert s.loc["kl", "forgetting:ci"] == pytest.approx(T975[2] * v.std(ddof=1) / math.sqrt(3), rel=1e-4)
    assert s.loc["tf", "n"] == 1 and math.isnan(s.loc["tf", "forgetting:ci"])       # one seed: no interval
    assert s.loc["tf", "forgetting"] == pytest.approx(1.0) and s.loc["tf", "triviaqa_drop_pp"] == pytest.approx(0.5)


def test_t_quantile_and_mean_ci():
    for df, t in T975.items():
        assert eg.t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    assert eg.t_quantile(0.975, 30) == pytest.approx(2.042, abs=5e-4)
    assert eg.t_quantile(0.95, 4) == pytest.approx(2.132, abs=5e-4)
    with pytest.raises(ValueError):
        eg.t_quantile(0.975, 0)
    assert eg.mean_ci([1.0, 2.0]) == pytest.approx((1.5, 12.706 * math.sqrt(0.5) / math.sqrt(2), 2), rel=0.0005 / 12.706)
    m, h, n = eg.mean_ci([1.0, 2.0, 4.0, 5.0])           # s² = 10/3
    assert (m, n) == (3.0, 4) and h == pytest.approx(3.182 * math.sqrt(10 / 3) / 2, rel=2e-4 + 0.0005 / 3.182)
    m, h, n = eg.mean_ci([7.0, np.nan])
    assert (m, n) == (7.0, 1) and math.isnan(h)


def test_default_and_parsed_gains():
    tops = [2.5, 4, 4, 5, 5, 6, 8, -1]                  # quartiles of the positive ones: 4, 5, 5.5
    pts = _frame([(f"r{i}", "smf", "kl", 0, 10, g, 0, 0, 0) for i, g in enumerate(tops)])
    assert eg.default_gains(pts) == [4.0, 5.0, 5.5]
    assert eg.default_gains(_frame([("r", "lora", None, 0, 10, -2, 0, 0, 0)])) == []
    assert eg.parse_gains("10, 5,5") == [5.0, 10.0]
    for bad in ("", "a,b", "5,nan"):
        with pytest.raises(ValueError):
            eg.parse_gains(bad)


def test_nats_compares_each_component_on_its_own():
    obj = Objectives(definition="nats")
    assert curves.equal_gain_plan(obj) == [("wikitext_nats", ["triviaqa_drop_pp", "wikitext/delta", "kl_general"]),
                                           ("triviaqa_drop_pp", ["wikitext/delta", "kl_general"])]
    assert curves.equal_gain_plan(Objectives()) == [("forgetting", ["triviaqa_drop_pp", "wikitext/delta",
                                                                     "kl_general"])]
    # run a wins on wikitext, run b on triviaqa: each component keeps its own best
    pts = _frame([("a", "lora", None, 0, 0, 0, np.nan, 0, 0), ("a", "lora", None, 0, 10, 4, np.nan, 3, 1),
                  ("b", "lora", None, 0, 0, 0, np.nan, 0, 0), ("b", "lora", None, 0, 10, 4, np.nan, 1, 3)])
    pts["wikitext_nats"] = np.log1p(pts["wikitext/delta"] / 100)
    pts["kl_general"] = 0.0
    a = curve_report.analyse(pts, 2, obj, [2.0])
    by = {c.key: c.best for c in a.comparisons}
    assert list(by["wikitext_nats"]["run_id"]) == ["a"] and list(by["triviaqa_drop_pp"]["run_id"]) == ["b"]
    assert curves.axes(pts, obj) == ("medmcqa_gain_pp", "wikitext_nats")
    text = curve_report.markdown(a, obj)
    assert "#### Chosen by WikiText Δ cross-entropy (nats/token)" in text and "#### Chosen by TriviaQA drop" in text


def test_the_subset_is_read_against_the_whole_probe_at_each_trials_last_point():
    """curves.agreement: a trial's last point (its highest step, whatever the row order) against its end
    point; ratios leave out end values near zero; trials without curves drop out."""
    pts = _frame([(r, "lora", None, 0, st, g, f, f, f) for r, st, g, f in [
        ("a", 10, 4, 2), ("a", 0, 0, 0), ("b", 0, 0, 0), ("b", 10, 5, 4), ("c", 10, 6, 6), ("c", 0, 0, 0),
        ("d", 0, 0, 0), ("d", 10, 7, 0.1)]]).assign(kl_general=0.0)
    ends = pd.DataFrame({"run_id": ["a", "b", "c", "d", "e"], "forgetting": [1, 2, 3, 0.05, 9],
                         "medmcqa_gain_pp": [3, 4, 5, 6, 7]})
    ag = curves.agreement(pts, ends).set_index("metric")
    f = ag.loc["forgetting"]
    assert (f["trials"], f["ratio_trials"], f["median_ratio"]) == (4, 3, 2.0)        # e: no curve; d: end near 0
    assert f["spearman"] == pytest.approx(1.0) and f["mean_diff"] == pytest.approx((1 + 2 + 3 + 0.05) / 4)
    g = ag.loc["medmcqa_gain_pp"]
    assert g["mean_diff"] == pytest.approx(1.0) and g["spearman"] == pytest.approx(1.0)
    assert list(ag.index) == ["medmcqa_gain_pp", "forgetting"]                       # only metrics both have
    assert curves.agreement(pts.iloc[:0], ends).empty
    a = curve_report.analyse(pts, 4, Objectives(), [2.0], trials=ends)
    text = curve_report.markdown(a, Objectives())
    assert "### The curve subset against the full probes" in text and "| 2.00 (3 trials) |" in text


# ---- MLflow: loading, then the CLI end to end ----------------------------------------------------------
def test_load_curves_from_mlflow(store):
    from analysis.runs import finished, load
    from analysis.source import resolve

    sweep = load(resolve(str(store["dir"])))
    fin = finished(sweep.trials)
    pts = curves.load(sweep.tracking_uri, fin)
    assert set(pts["trial_id"]) == set(CURVES) and len(pts) == sum(map(len, CURVES.values()))
    assert list(pts.columns[:11]) == curves.INFO + ["step"] and list(pts.columns).index("seconds") == 11 + len(curves.NAMES)
    s1 = pts[pts["trial_id"] == "s1"].set_index("step")
    assert s1.loc[20, "forgetting"] == 3.0 and s1.loc[20, "triviaqa/delta"] == -2.0    # the retried report lost
    assert s1.loc[10, "wikitext"] == pytest.approx(20.2) and s1.loc[10, "kl_general"] == pytest.approx(0.1)
    assert s1.loc[10, "medmcqa/delta"] == 3.0 and s1.loc[10, "seconds"] == 11.0   # any other curve/ metric too
    row = fin.set_index("trial_id").loc["s1"]                           # the trials frame's own derivations
    assert (s1["config_key"] == row["config_key"]).all() and (s1["params.smf.n_keys"] == 64).all()
    assert (s1["selector"] == "kl").all() and (s1["seed"] == 0).all()
    # constraints judge each checkpoint on its own curve values; a cost objective has no curve
    obj = Objectives().with_constraints([Constraint.parse_text("triviaqa/delta>=-1.5")])
    f = curves.fronts(pts, obj)
    assert list(zip(f["front"], f["trial_id"], f["step"])) == [("smf", "s1", 10), ("smf", "s6", 20), ("lora", "l2", 10),
                                                             ("lora", "l1", 5), ("lora", "l3", 0)]
    assert curves.senses(pts, Objectives().with_objective(COST_S, "min")) == (
        {"medmcqa_gain_pp": "max", "forgetting": "min"}, [COST_S])
    flat = load(resolve("smf_sweep/flat", store["uri"]))
    assert curves.load(flat.tracking_uri, finished(flat.trials)).empty


def _table(text: str, title: str) -> list[list[str]]:
    """The rows (cells) of the markdown table under a heading, header left out."""
    body = text.split(title, 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in body.splitlines() if ln.startswith("| ")]
    return rows[1:]


def test_cli_end_to_end(store):
    out = store["dir"] / "out"
    r = cli(store["dir"], "--out", out, "--gains", "2,4")
    assert r.returncode == 0, r.stderr
    text = (out / "table.md").read_text()
    assert "- 7 of 12 finished trials logged curves: 21 evaluation points" in text
    assert "Gain levels: 2, 4 pp (given with --gains)." in text
    eq = {"/".join(r[:3]): r for r in _table(text, "### Forgetting at equal gain")}
    # method/selector/gain -> forgetting, TriviaQA drop, WikiText Δ over seeds (t(0.975, 1) = 12.706)
    ci = lambda a, b: f"{(a + b) / 2:.2f} ± {12.7062 * abs(a - b) / 2:.2f}"  # noqa: E731  n = 2
    want = {"smf/kl/2": ["2 of 2", ci(2 / 3, .875), ci(2 / 3, .75), ci(2 / 3, 1.0)],
            "smf/kl/4": ["2 of 2", ci(1.5, 11 / 6), ci(2, 4 / 3), ci(1, 7 / 3)],
            "smf/tfidf/2": ["1 of 1 (one seed: no interval)", "1.60", "0.80", "2.40"],
            "smf/tfidf/4": ["0 of 1", "—", "—", "—"],
            "lora/—/2": ["2 of 2", ci(1, .8), ci(1, .5), ci(1, 1.1)],
            "lora/—/4": ["2 of 2", ci(2, 1.6), ci(5 / 3, 1), ci(7 / 3, 2.2)]}
    assert {k: v[3:7] for k, v in eq.items()} == want
    assert eq["smf/kl/2"][-1] == "s1@6.7, s2@15.0" and eq["smf/kl/4"][-1] == "s6@10.0, s2@23.3"
    assert ci(2 / 3, .875) == "0.77 ± 1.32"                             # the arithmetic, once by hand
    # checkpoint fronts: every evaluation point a candidate
    fronts = [(r["front"], r["trial_id"], r["step"]) for r in csv.DictReader(open(out / "curve_fronts.csv"))]
    assert fronts == [("smf", "s2", "30"), ("smf", "s6", "10"), ("smf", "s1", "10"), ("smf", "s6", "20"),
                      ("lora", "l1", "10"), ("lora", "l2", "10"), ("lora", "l1", "5"), ("lora", "l3", "0")]
    fr = _table(text, "### Checkpoint-level front per method")   # front, trial, selector, seed, config, step, ...
    assert [(r[0], r[1].split(" ")[0], r[5]) for r in fr] == fronts
    assert fr[1][1] == f"s6 (`{store['ids']['s6']}`)" and fr[1][2:4] == ["kl", "0"] and fr[1][6:9] == ["4.00", "1.50", "0.1500"]
    drift = _table(text, "### KL drift as a predictor of forgetting")
    assert [(r[0], r[1], r[2]) for r in drift] == [("smf", "12", "1.00"), ("lora", "9", "1.00"),
                                                   ("all methods", "21", "1.00")]   # KL = forgetting / 10
    chosen = list(csv.DictReader(open(out / "equal_gain.csv")))
    assert len(chosen) == 9 and {c["chosen_by"] for c in chosen} == {"forgetting"}
    for name, (h, w) in {"curves.png": (900, 1600), "equal_gain.png": (450, 1600)}.items():
        img = imread(out / name)
        assert img.shape[:2] == (h, w) and img[..., :3].std() > 0.05, name


def test_cli_without_curves_says_so(store, tmp_path, monkeypatch, capsys):
    from analysis.pareto import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "curves.png").write_text("stale")          # an earlier run's: must not survive
    assert main(["smf_sweep/flat", "--tracking-uri", store["uri"], "--out", str(tmp_path)]) == 0
    assert "note: No curve metrics (`curve/*`) in the 3 finished trials" in capsys.readouterr().out
    text = (tmp_path / "table.md").read_text()
    assert text.rstrip().endswith("no curves.png, equal_gain.png or checkpoint fronts.")
    assert not any((tmp_path / f).exists() for f in ("curves.png", "equal_gain.png", "curve_fronts.csv"))
    assert (tmp_path / "pareto.png").exists()


def test_help_and_bad_gains(store):
    r = cli("--help")
    assert r.returncode == 0 and "--gains" in r.stdout and "--no-curves" in r.stdout and "curves.png" in r.stdout
    r = cli(store["dir"], "--gains", "five")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --gains:"), r.stderr


def test_a_panel_spanning_orders_of_magnitude_is_drawn_symlog():
    """equal_gain.png: a wrecked model's forgetting (×1000 the others') switches its panel to a symlog
    axis; ordinary spreads, missing levels and small values keep a linear one."""
    from analysis.curve_plots import spans_decades

    assert spans_decades(pd.Series([1.3, 4.4, 1337.0, 3.7, None]))
    assert not spans_decades(pd.Series([1.3, 4.4, 47.8, 3.7]))
    assert not spans_decades(pd.Series([0.01, 0.02, 0.9])), "below 1 the median does not shrink the bar"
    assert not spans_decades(pd.Series([None, None], dtype=float))
