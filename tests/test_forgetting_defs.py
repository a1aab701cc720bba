"""What forgetting means is the spec's choice (issue 16): `mean`, `worst`, `nats` (WikiText as Δ
cross-entropy in nats/token and TriviaQA's drop in pp as separate objectives), `clamp`, and
constraints that Optuna and analysis both honour. Each definition on hand-computed numbers; the
flat legacy form; then the sweep's own pieces (the real searcher on its SQLite study, the trial
outcome, MLflow, summarize, the analysis command: tests/test_objectives.run_sweep_pieces) agree on
the front under each definition and under a constraint that excludes trials Optuna would otherwise
put on it."""
from __future__ import annotations

import json
import math

import pytest

from smf_sweep import objectives as O
from smf_sweep.objectives import Constraint, Objectives
from tests.test_objectives import (BASE, RESULTS, after_of, analysis_front, brute_front, load, printed_front,
                                   run_sweep_pieces)

# MedMCQA +10 pp; TriviaQA −4 pp (damage 4); WikiText +6 % perplexity (damage 6)
D = {"medmcqa": 10.0, "triviaqa": -4.0, "wikitext": 6.0}


def obj(**kw) -> Objectives:
    return Objectives(**kw)


# ---- the definitions, by hand ----------------------------------------------------------------------
def test_mean_is_the_weighted_mean_of_the_damage():
    assert obj().forgetting_of(D) == pytest.approx((4 + 6) / 2)
    w = obj(forgetting=(("triviaqa", 3.0), ("wikitext", 1.0)))
    assert w.forgetting_of(D) == pytest.approx((3 * 4 + 1 * 6) / 4)
    # a probe of weight 0 does not count, not even as NaN
    only = obj(forgetting=(("triviaqa", 1.0), ("wikitext", 0.0)))
    assert only.forgetting_of({**D, "wikitext": math.nan}) == pytest.approx(4)


def test_worst_is_the_largest_weighted_damage():
    assert obj(definition="worst").forgetting_of(D) == pytest.approx(6)
    assert obj(definition="worst").forgetting_of({**D, "triviaqa": -9.0}) == pytest.approx(9)
    # weights relative to the largest: 1·4 against (1/3)·6 = 2
    w = obj(definition="worst", forgetting=(("triviaqa", 3.0), ("wikitext", 1.0)))
    assert w.forgetting_of(D) == pytest.approx(4)
    assert obj(definition="worst").forgetting_of({**D, "wikitext": math.nan}) != obj().forgetting_of(D)   # NaN stays NaN
    assert math.isnan(obj(definition="worst").forgetting_of({**D, "wikitext": math.nan}))


def test_clamp_keeps_a_gain_from_cancelling_damage():
    gain_on_one = {"medmcqa": 10.0, "triviaqa": 2.0, "wikitext": 6.0}     # TriviaQA improved by 2 pp
    assert obj().forgetting_of(gain_on_one) == pytest.approx((-2 + 6) / 2)
    assert obj(clamp=True).forgetting_of(gain_on_one) == pytest.approx((0 + 6) / 2)
    both_better = {"medmcqa": 10.0, "triviaqa": 2.0, "wikitext": -4.0}
    assert obj(definition="worst").forgetting_of(both_better) == pytest.approx(-2)
    assert obj(definition="worst", clamp=True).forgetting_of(both_better) == 0
    assert "each clamped at 0" in obj(clamp=True).describe()


def test_nats_makes_each_probe_its_own_objective_in_its_unit():
    n = obj(definition="nats")
    assert n.names == ("medmcqa_gain_pp", "wikitext_nats", "triviaqa_drop_pp")
    assert n.modes == ("max", "min", "min") and not n.scalar
    s = n.scores(D)
    assert set(s) == {"medmcqa_gain_pp", "wikitext_nats", "triviaqa_drop_pp"}      # no single forgetting
    assert s["wikitext_nats"] == pytest.approx(math.log(1.06)) and s["triviaqa_drop_pp"] == pytest.approx(4)
    with pytest.raises(ValueError, match="no single value"):
        n.forgetting_of(D)
    # forgetting's mode and position carry over; a weight-0 probe is no objective
    first = obj(definition="nats", names=("forgetting", "medmcqa_gain_pp"), modes=("min", "max"),
                forgetting=(("triviaqa", 0.0), ("wikitext", 1.0)))
    assert first.names == ("wikitext_nats", "medmcqa_gain_pp") and first.modes == ("min", "max")
    # the budget: 1 pp drop, a 1 % perplexity increase = ln(1.01) nats
    assert n.budget_for("wikitext_nats", 1.0) == pytest.approx(math.log(1.01))
    assert dict(n.reference) == pytest.approx({"medmcqa_gain_pp": 0.0, "wikitext_nats": math.log(1.01),
                                               "triviaqa_drop_pp": 1.0})
    assert n.within_budget({"wikitext_nats": 0.009, "triviaqa_drop_pp": 0.5}, 1.0)
    assert not n.within_budget({"wikitext_nats": 0.011, "triviaqa_drop_pp": 0.5}, 1.0)
    assert Objectives.from_json(n.to_json()) == n


def test_the_trial_outcome_follows_the_spec(tmp_path):
    """trial.outcome on real base/after probe numbers: ppl 20 → 22 is ln 1.1 nats."""
    from smf_sweep.trial import outcome

    after = {**after_of(10, -4, 10)}
    mean = outcome(load(tmp_path, []), BASE, after)
    assert mean["forgetting"] == pytest.approx(7) and mean["wikitext_nats"] == pytest.approx(math.log(1.1))
    worst = outcome(load(tmp_path, ["forgetting.definition=worst"]), BASE, after)
    assert worst["forgetting"] == pytest.approx(10)
    nats = outcome(load(tmp_path, ["forgetting={definition: nats}"]), BASE, after)
    assert "forgetting" not in nats and nats["triviaqa_drop_pp"] == pytest.approx(4)
    assert nats["wikitext_nats"] == pytest.approx(math.log(22 / 20))


# ---- the spec ----------------------------------------------------------------------------------------
def test_the_flat_form_is_the_mean_and_keeps_the_spec_hash(tmp_path):
    flat = load(tmp_path, ["forgetting={triviaqa: 2.0, wikitext: 1.0}"])
    full = load(tmp_path, ["forgetting={definition: mean, weights: {triviaqa: 2.0, wikitext: 1.0}, clamp: false}"])
    assert flat.forgetting == full.forgetting and flat.forgetting.definition == "mean"
    assert flat.forgetting.weights == {"triviaqa": 2.0, "wikitext": 1.0} and not flat.forgetting.clamp
    assert flat.spec_hash() == full.spec_hash()
    assert flat.to_dict()["forgetting"] == {"triviaqa": 2.0, "wikitext": 1.0}      # the form sweeps froze before
    assert "constraints" not in flat.to_dict() and "hypervolume" not in flat.to_dict()
    assert Objectives.from_spec(flat) == Objectives.from_spec(full) == Objectives.from_spec(flat.to_dict())
    # an option beside flat weights (--set forgetting.definition=worst on a flat spec)
    worst = load(tmp_path, ["forgetting.definition=worst"])
    assert worst.forgetting.definition == "worst" and worst.forgetting.weights == {"triviaqa": 1.0, "wikitext": 1.0}
    assert worst.spec_hash() != flat.spec_hash()
    assert load(tmp_path, ["forgetting.clamp=true"]).to_dict()["forgetting"]["clamp"] is True


@pytest.mark.parametrize("sets, words", [
    (["forgetting.definition=median"], ["forgetting.definition", "mean, worst or nats"]),
    (["forgetting={weights: {triviaqa: 1.0}, wikitext: 1.0}"], ["forgetting", "forgetting.weights"]),
    (["forgetting={weights: {medmcqa: 1.0}}"], ["forgetting.weights.medmcqa"]),
    (["forgetting={definition: nats, weights: {triviaqa: 0.0, wikitext: 0.0}}"], ["positive weight"]),
    (["constraints={triviaqa/delta: -1}"], ["constraints.triviaqa/delta", ">= NUMBER"]),
    (["constraints={triviaqa/delta: '> -1'}"], ["constraints.triviaqa/delta"]),
    (["constraints={accuracy: '>= 1'}"], ["constraints.accuracy", "not a metric"]),
    (["forgetting.definition=nats", "constraints={forgetting: '<= 1'}"], ["constraints.forgetting"]),
    (["hypervolume={reference: {wikitext_nats: 0.01}}"], ["hypervolume.reference.wikitext_nats", "not an objective"]),
    (["objectives=[{name: medmcqa_gain_pp, mode: max}, {name: cost/device_s, mode: min}]"],
     ["hypervolume.reference.cost/device_s", "no default"]),
    (["objectives=[{name: wikitext_drop_pp, mode: min}]"], ["unknown objective"]),
])
def test_bad_forgetting_constraints_and_references_are_refused(tmp_path, sets, words):
    from smf_sweep.spec import SpecError

    with pytest.raises(SpecError) as e:
        load(tmp_path, sets)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_the_spec_syntax(tmp_path):
    spec = load(tmp_path, ["forgetting={definition: nats, weights: {triviaqa: 1, wikitext: 1}}",
                           "constraints={triviaqa/delta: '>= -1', cost/device_s: '<= 3.6e3'}",
                           "hypervolume={budget: 2.0, reference: {triviaqa_drop_pp: 5}}"])
    o = Objectives.from_spec(spec)
    assert o.names == ("medmcqa_gain_pp", "wikitext_nats", "triviaqa_drop_pp")
    assert o.constraints == (Constraint("triviaqa/delta", ">=", -1.0), Constraint("cost/device_s", "<=", 3600.0))
    assert dict(o.reference) == pytest.approx({"medmcqa_gain_pp": 0.0, "wikitext_nats": math.log(1.02),
                                               "triviaqa_drop_pp": 5.0})
    assert o.violations({"triviaqa/delta": -3.0, "cost/device_s": 100.0}) == {"triviaqa/delta>=-1": 2.0,
                                                                              "cost/device_s<=3600": -3500.0}
    assert o.violation({"triviaqa/delta": -3.0}) == math.inf          # a missing metric never holds
    assert o.feasible({"triviaqa/delta": -0.5, "cost/device_s": 10.0}) is True
    assert o.feasible({"triviaqa/delta": -1.5, "cost/device_s": 10.0}) is False
    assert Constraint.parse_text("cost/device_s<=600") == Constraint("cost/device_s", "<=", 600.0)
    assert Objectives.from_dict(json.loads(o.to_json())) == o
    with_cost = load(tmp_path, ["objectives=[{name: medmcqa_gain_pp, mode: max}, {name: cost/device_s, mode: min}]",
                                "hypervolume={reference: {cost/device_s: 600}}"])
    assert dict(Objectives.from_spec(with_cost).reference) == {"medmcqa_gain_pp": 0.0, "cost/device_s": 600.0}


def test_cost_is_device_seconds():
    assert O.device_seconds(100.0, 2, 0.0, 4.0) == 800.0        # CPU workers: their CPUs
    assert O.device_seconds(100.0, 1, 0.5, 8.0) == 50.0         # half a GPU
    assert O.device_seconds(100.0, 4, 1.0, 8.0) == 400.0


# ---- Optuna, the printed front, the confirm stage and analysis agree ---------------------------------
DEFINITIONS = {
    "worst": ["forgetting.definition=worst"],
    "clamp": ["forgetting.clamp=true"],
    "nats": ["forgetting.definition=nats"],
    "constraint": ["constraints={triviaqa/delta: '>= -5'}"],
}


def test_the_definitions_and_the_constraint_change_the_front():
    """The sweep's data tells these apart from the default (else the agreement below proves little)."""
    import tempfile
    from pathlib import Path

    def front(sets):
        with tempfile.TemporaryDirectory() as d:
            o = Objectives.from_spec(load(Path(d), sets))
        vals = {}
        for i, res in enumerate(RESULTS):
            if res is not None:
                m = {**{O.delta(t): v for t, v in zip(("medmcqa", "triviaqa", "wikitext"), res)},
                     **o.scores(dict(zip(("medmcqa", "triviaqa", "wikitext"), res)))}
                if o.feasible(m):
                    vals[f"t{i:02d}"] = tuple(m[n] for n in o.names)
        return brute_front(vals, o.modes)

    default = front([])
    assert default == {"t03", "t08"}
    assert front(DEFINITIONS["constraint"]) == {"t00", "t05", "t06", "t07"}
    for name in ("worst", "clamp", "nats"):
        assert front(DEFINITIONS[name]) != default, name


@pytest.mark.parametrize("variant", list(DEFINITIONS))
def test_optuna_summary_confirm_and_analysis_agree_under_each_definition(variant, tmp_path, capsys, monkeypatch):
    import optuna

    from smf_sweep.tune import confirm_choice, summarize

    monkeypatch.chdir(tmp_path)
    spec = load(tmp_path / "sweeps", DEFINITIONS[variant])
    o = Objectives.from_spec(spec)
    run = run_sweep_pieces(spec)
    outs = run["outs"]
    ok = {t: m for t, m in outs.items() if o.feasible(m)}
    expected = brute_front({t: tuple(m[n] for n in o.names) for t, m in ok.items()}, o.modes)
    best_first = sorted(expected, key=lambda t: o.rank_key(outs[t]))

    study = optuna.load_study(study_name=f"{spec.name}-{spec.spec_hash()}",
                              storage=f"sqlite:///{spec.sweep_dir() / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE" if m == "max" else "MINIMIZE" for m in o.modes]
    assert {f"t{t.number:02d}" for t in study.best_trials} == expected
    if o.constraints:                        # the constraint values are on the Optuna trials, <= 0 where feasible
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert {f"t{t.number:02d}" for t in done if all(v <= 0 for v in t.constraints.values())} == set(ok)
        assert len(ok) < len(outs)
        assert set(study.trials[1].constraints) == {"triviaqa/delta>=-5"}

    capsys.readouterr()
    summary = summarize(spec, run["grid"], run["uri"])
    text = capsys.readouterr().out
    assert [r["trial_id"] for r in summary["front"]] == best_first == printed_front(text)
    assert summary["objectives"] == o.to_dict() and summary["feasible"] == len(ok)
    assert [r["trial_id"] for r in confirm_choice(spec, summary["front"])] == best_first[:2]

    rows, table = analysis_front(spec.sweep_dir(), tmp_path / "analysis", monkeypatch)
    assert [r["trial_id"] for r in rows if r["front"] == "overall"] == best_first
    assert o.describe() in table
    if variant == "nats":
        assert "WikiText Δ cross-entropy (nats/token)" in table and "forgetting budget ≤ 1 for each probe" in table
    if variant == "constraint":
        assert f"{len(outs) - len(ok)} of {len(outs)} finished trials infeasible" in table


def test_analysis_cost_and_constraint_options(tmp_path, monkeypatch):
    """--constraint adds a constraint for the analysis only; --cost ranks by device-seconds too."""
    import csv

    from mlflow import MlflowClient

    from analysis.pareto import main

    monkeypatch.chdir(tmp_path)
    spec = load(tmp_path / "sweeps", [])
    run = run_sweep_pieces(spec)
    client = MlflowClient(run["uri"])
    exp = client.get_experiment_by_name(f"smf_sweep/{spec.name}")
    for r in client.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'trial'"):
        i = int(r.data.tags["trial_id"][1:])
        client.log_metric(r.info.run_id, O.COST_S, 100.0 * (i + 1))        # later trials cost more
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "a"
    assert main([str(spec.sweep_dir()), "--out", str(out), "--constraint", "triviaqa/delta>=-5"]) == 0
    overall = [r["trial_id"] for r in csv.DictReader(open(out / "fronts.csv")) if r["front"] == "overall"]
    assert overall == ["t06", "t00", "t07", "t05"]
    assert main([str(spec.sweep_dir()), "--out", str(out), "--cost"]) == 0
    rows = list(csv.DictReader(open(out / "fronts.csv")))
    overall = {r["trial_id"] for r in rows if r["front"] == "overall"}
    assert overall == {"t00", "t01", "t03", "t05", "t07", "t08"}     # without cost: t03, t08 (cheap early trials join)
    assert "cost/device_s ↓" in (out / "table.md").read_text()
    assert main([str(spec.sweep_dir()), "--out", str(out), "--constraint", "nonsense"]) == 2
