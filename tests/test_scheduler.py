"""Multi-objective early stopping (issue 16, item 1; smf_sweep/scheduler.py): MO-ASHA's rule on
hand-made curve points — rungs from `curve/step`, non-dominated sorting, crowding distance inside the
cut-off front, the asynchronous cut-off, no decision below η entries, objectives in either direction
— and what a stop leaves behind, in the order Tune's stop_trial calls them: the scheduler's record in
the trial's last result, Optuna's state (pruned | complete | fail: a real SQLite study through
tune.make_searcher) and the MLflow run (KILLED, tag stopped_at_rung, the rung's objectives, the
sweep's progress counting its compute only). The spec's section is checked strictly."""
from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from smf_sweep import objectives as O
from smf_sweep.objectives import Objectives
from smf_sweep.scheduler import (MOASHA, budgets, crowding, dominates, eps_net, fronts, priorities, survives)
from smf_sweep.spec import SpecError, load_spec
from tests.test_objectives import BASE, SMOKE

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE
ON = ["curves.every=2", "search.early_stopping={grace: 4, eta: 2}"]


def trial(tid: str, config: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config=config or {"method": "lora", "lora.lr": 1e-3}, last_result={})


def point(step: int, gain: float, forgetting: float, **more) -> dict:
    return {"curve/step": step, "curve/medmcqa_gain_pp": gain, "curve/forgetting": forgetting, **more}


def sched(eta: float = 2, grace: int = 4, total: int | None = 100, obj: Objectives | None = None, **kw) -> MOASHA:
    return MOASHA(obj or Objectives(), grace=grace, eta=eta, total_steps=(lambda c: total), **kw)


def feed(s: MOASHA, tid: str, *results: dict) -> list[str]:
    t = s.__dict__.setdefault("_test_trials", {}).setdefault(tid, trial(tid))
    return [s.on_trial_result(None, t, r) for r in results]


# ---- the rule's pieces ---------------------------------------------------------------------------------
def test_budgets_grow_geometrically_rounded_up_without_repeats():
    assert budgets(4, 3, 100) == [4, 12, 36]
    assert budgets(4, 3, 36) == [4, 12, 36] and budgets(4, 3, 35) == [4, 12]
    assert budgets(2, 2.5, 40) == [2, 5, 13, 32]               # 12.5 → 13, 31.25 → 32
    assert budgets(1, 1.2, 3) == [1, 2, 3]                     # 1.2, 1.44, 1.73 all round to 2: once
    assert budgets(3, 3, 26) == [3, 9] and budgets(3, 3, 27) == [3, 9, 27]   # 3·3² is 27, not 27.000…04
    assert budgets(5, 2, 4) == []


def test_non_dominated_sorting_by_hand():
    pts = [(0, 5), (1, 3), (2, 4), (3, 3), (5, 0), (4, 4), (6, 6)]       # minimised
    assert fronts(pts) == [0, 0, 1, 1, 0, 2, 3]
    assert dominates((1, 3), (3, 3)) and not dominates((1, 3), (1, 3)) and not dominates((0, 5), (1, 3))
    assert fronts([(1, 1), (1, 1), (2, 2)]) == [0, 0, 1]                  # identical points share a front


def test_crowding_distance_by_hand():
    front = [(0, 5), (1, 3), (3, 2), (5, 0)]
    # (1, 3): (3 − 0)/5 + (5 − 2)/5 = 1.2; (3, 2): (5 − 1)/5 + (3 − 0)/5 = 1.4; the extremes: inf
    assert crowding(front) == pytest.approx([math.inf, 1.2, 1.4, math.inf])
    assert crowding([(1, 1), (0, 2)]) == [math.inf, math.inf]             # one or two points: all inf
    assert crowding([(1, 1), (1, 1), (0, 2)]) == [math.inf] * 3           # two distinct points
    three = crowding([(0, 2), (1, 1), (1, 1), (2, 0)])                     # duplicates share a value
    assert three[1] == three[2] == pytest.approx(2.0) and three[0] == three[3] == math.inf
    assert priorities([(0, 5), (1, 3), (3, 2), (5, 0), (4, 4)]) == [(0, -math.inf), (0, -1.2), (0, -1.4),
                                                                     (0, -math.inf), (1, -math.inf)]


def test_fewer_than_eta_entries_never_stop_and_the_cut_off_keeps_the_top_of_n_over_eta():
    bad = (9.0, 9.0)
    assert survives({"good": (0.0, 0.0), "bad": bad}, "bad", eta=3)        # 2 < η: continue, dominated or not
    assert not survives({"good": (0.0, 0.0), "ok": (1.0, 1.0), "bad": bad}, "bad", eta=3)   # keep 1 of 3
    assert not survives({"good": (0.0, 0.0), "ok": (1.0, 1.0), "bad": bad}, "ok", eta=3)
    assert survives({"good": (0.0, 0.0), "ok": (1.0, 1.0), "bad": bad}, "good", eta=3)
    six = {f"t{i}": (float(i), float(i)) for i in range(6)}                # a chain: front i = trial i
    assert [survives(six, t, eta=3) for t in six] == [True, True, False, False, False, False]   # keep ⌊6/3⌋ = 2
    assert [survives(six, t, eta=2.5) for t in six] == [True, True, False, False, False, False]  # ⌊6/2.5⌋ = 2


def test_ties_inside_the_cut_off_front_go_by_crowding_distance_and_equal_ones_continue():
    front = {"a": (0.0, 5.0), "b": (1.0, 3.0), "c": (3.0, 2.0), "d": (5.0, 0.0)}   # one front; keep ⌊4/2⌋ = 2
    assert [survives(front, t, eta=2) for t in front] == [True, False, False, True]  # the two extremes (inf)
    front5 = {**front, "e": (2.0, 2.5)}           # keep 2 of 5 still: a, d (inf) before any finite distance
    assert not survives(front5, "c", eta=2)
    three = {"a": (0.0, 2.0), "b": (1.0, 1.0), "c": (2.0, 0.0)}                        # keep ⌊3/3⌋ = 1
    assert survives(three, "a", eta=3) and survives(three, "c", eta=3)   # tied at inf: no one strictly before
    assert not survives(three, "b", eta=3)
    same = {"a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 1.0)}
    assert all(survives(same, t, eta=3) for t in same)                     # identical: a tie, all continue


def test_the_eps_net_order_by_hand():
    """tie_break: eps_net, MO-ASHA's own order inside a front (Syne Tune's NonDominatedPriority, dim 0):
    the best first objective, then each time the point farthest from those chosen."""
    front = [(0, 5), (1, 3), (3, 2), (5, 0)]
    # (0, 5) first; farthest from it (5, 0) (√50); then (3, 2): min(√18, √8) = 2.8 > (1, 3): min(√5, 5) = 2.2
    assert eps_net(front) == [0, 3, 2, 1]
    assert eps_net([(2, 0), (0, 2), (0, 2), (1, 1)]) == [1, 0, 0, 2]     # duplicates share a place
    assert eps_net([(1, 1)]) == [0]
    assert priorities(front + [(4, 4)], tie_break="eps_net") == [(0, 0.0), (0, 3.0), (0, 2.0), (0, 1.0), (1, 0.0)]
    with pytest.raises(ValueError, match="tie_break: one of crowding, eps_net"):
        priorities(front, tie_break="eps")


def test_the_tie_breaks_differ_inside_the_cut_off_front_and_agree_outside_it():
    three = {"a": (0.0, 2.0), "b": (1.0, 1.0), "c": (2.0, 0.0)}              # one front, keep ⌊3/3⌋ = 1
    assert [survives(three, t, eta=3) for t in three] == [True, False, True]                 # a, c tied at inf
    assert [survives(three, t, eta=3, tie_break="eps_net") for t in three] == [True, False, False]   # a, then c
    chain = {f"t{i}": (float(i), float(i)) for i in range(6)}
    assert [survives(chain, t, eta=3, tie_break="eps_net") for t in chain] == [survives(chain, t, eta=3) for t in chain]


@pytest.mark.parametrize("tie_break", ["crowding", "eps_net"])
def test_a_trial_that_dominates_its_rung_continues_whatever_order_the_others_came_in(tie_break):
    """Syne Tune's MOASHA (0.16) reads its priority's index order as each trial's priority, so a new
    trial dominating all three before it is stopped when they came in one order and kept in the other
    (docs/pitfalls.md). Here each trial's own rank decides."""
    for order in ([5.0, 6.0, 7.0], [7.0, 6.0, 5.0]):
        s = sched(eta=3, tie_break=tie_break)
        for i, v in enumerate(order):
            feed(s, f"t{i}", point(4, -v, v))            # gain −v, forgetting v: worse as v grows
        assert feed(s, "new", point(4, 1.0, 0.0)) == [GO]
        assert feed(s, "worst", point(4, -9.0, 9.0)) == [STOP]


def test_noise_margins_dominate_only_beyond_them_and_keep_the_first_front():
    """search.early_stopping.epsilon: no worse everywhere and better by more than the margin somewhere;
    a trial on that first front continues even outside the top ⌊n/η⌋ (the issue-16 acceptance run that
    stopped the best full-FT trial at its first rung on a 1.6 pp difference of 64 questions)."""
    eps = (6.0, 3.0)
    assert dominates((0.0, 0.0), (1.0, 1.0)) and not dominates((0.0, 0.0), (1.0, 1.0), eps)   # within noise
    assert dominates((0.0, 0.0), (7.0, 1.0), eps) and dominates((0.0, 0.0), (1.0, 4.0), eps)  # beyond it, once
    assert not dominates((0.0, 5.0), (7.0, 4.0), eps)                     # worse somewhere: never dominates
    assert fronts([(0.0, 0.0), (1.0, 1.0), (7.0, 1.0)], eps) == [0, 0, 1]
    # the seed-1 rung (gain negated, forgetting): three trials within noise of each other and one far off
    rung = {"lora": (1.56, 0.26), "full": (3.12, 2.39), "smf": (-1.56, 6.37), "wreck": (-4.69, 47.97)}
    assert [survives(rung, t, eta=3) for t in rung] == [True, False, False, True]    # MO-ASHA keeps 1 (+ a tie)
    assert [survives(rung, t, eta=3, eps=(6.0, 3.0)) for t in rung] == [True, True, True, True]
    far = {**rung, "worse": (9.0, 9.0), "worst": (12.0, 20.0)}            # dominated beyond the noise
    assert [survives(far, t, eta=3, eps=eps) for t in far] == [True, True, True, True, False, False]
    assert survives(far, "worse", eta=3) is False and survives({"a": (0.0, 0.0), "b": (9.0, 9.0)}, "b", 3, eps)


def test_per_method_rungs_judge_a_trial_against_its_own_method_only():
    """search.early_stopping.per_method: SMF's slow start is not judged against full FT's early gains."""
    def run(per_method: bool) -> list[str]:
        s = sched(eta=2, grace=4, per_method=per_method)
        for tid, method in (("f1", "full"), ("f2", "full"), ("s1", "smf"), ("s2", "smf")):
            s.__dict__.setdefault("_test_trials", {})[tid] = trial(tid, {"method": method})
        out = []
        for tid, gain, forgetting in (("f1", 9, 1), ("f2", 8, 1.5), ("s1", 2, 2), ("s2", 1, 3)):
            out += feed(s, tid, point(4, gain, forgetting))
        return out

    assert run(False) == [GO, STOP, STOP, STOP]           # one rung: full FT's early gains dominate both SMF trials
    assert run(True) == [GO, STOP, GO, STOP]              # smf's own rung: s1 leads it
    assert "per method" in sched(per_method=True).debug_string()


def test_a_method_with_its_own_grace_is_first_judged_at_that_rung():
    """search.early_stopping.grace_per_method: a slow starter (s1, behind everyone at step 4) is not
    judged at rung 4; at rung 8 it meets the trials that reached 8, and is judged with them."""
    s = sched(eta=2, grace=4, grace_per_method={"smf": 8})
    for tid, method in (("f1", "full"), ("f2", "full"), ("s1", "smf")):
        s.__dict__.setdefault("_test_trials", {})[tid] = trial(tid, {"method": method})
    assert feed(s, "f1", point(4, 9, 1)) == [GO]
    assert feed(s, "f2", point(4, 8, 1.5)) == [STOP]       # behind f1 at rung 4: it is judged there
    assert feed(s, "s1", point(4, 2, 2), point(6, 3, 2)) == [GO, GO]      # before its first rung: no entry
    assert set(s.rungs[4]) == {"f1", "f2"} and s.judged.get("s1") is None
    assert feed(s, "f1", point(8, 9, 1)) == [GO]
    assert feed(s, "s1", point(8, 10, 1)) == [GO]          # rung 8 with f1: s1 now leads on gain
    assert set(s.rungs[8]) == {"f1", "s1"} and s.judged["s1"] == 8
    late = sched(eta=2, grace=4, grace_per_method={"smf": 8})
    assert late.rung_for("s2", 7, 100, 8) is None and late.rung_for("s2", 9, 100, 8) == 8
    assert late.rung_for("s2", 40, 100, 8) == 32           # jumped past 8 and 16: the highest reached
    assert "smf from 8" in late.debug_string()
    with pytest.raises(ValueError, match=r"grace_per_method.smf: one of the rungs grace·η\^k \(4, 8, 16, …\), got 12"):
        sched(eta=2, grace=4, grace_per_method={"smf": 12})


def test_margins_from_the_objectives_names():
    assert O.margins(("medmcqa_gain_pp", "forgetting"), {}) is None
    assert O.margins(("medmcqa_gain_pp", "forgetting"), {"forgetting": 3}) == (0.0, 3.0)
    with pytest.raises(ValueError, match="nats is not an objective"):
        O.margins(("medmcqa_gain_pp", "forgetting"), {"nats": 1})
    with pytest.raises(ValueError, match=">= 0"):
        O.margins(("medmcqa_gain_pp",), {"medmcqa_gain_pp": math.inf})
    s = sched(epsilon={"medmcqa_gain_pp": 6})
    assert s.eps == (6.0, 0.0) and "ε 6/0" in s.debug_string()


# ---- the Tune scheduler on curve points ---------------------------------------------------------------
def test_rungs_come_from_curve_step_capped_below_the_trials_total():
    s = sched(eta=2, grace=4, total=16)                    # rungs 4, 8 (16 is the last step: no rung)
    assert feed(s, "a", point(0, 0, 0), point(2, 1, 0)) == [GO, GO] and s.rungs == {}   # step 0 and 2: no rung
    assert feed(s, "a", point(4, 1, 0)) == [GO] and s.judged["a"] == 4
    assert feed(s, "a", point(6, 1, 0)) == [GO] and set(s.rungs) == {4}       # rung 4 is done for a
    assert feed(s, "a", point(10, 2, 0)) == [GO] and s.judged["a"] == 8       # the first point past 8 counts
    assert feed(s, "a", point(16, 3, 0)) == [GO] and set(s.rungs) == {4, 8}   # the last step: never judged
    assert feed(s, "b", point(9, 0, 5)) == [STOP] and "b" not in s.rungs[4]   # jumped past 4: judged at 8
    assert s.rungs[8]["b"] == (0.0, 5.0)                                      # gain max → minimised as −gain
    assert sched(eta=2, grace=4, total=None).rung_for("x", 16, None) == 16    # no planned total: the step caps


def test_points_without_every_objective_are_not_judged():
    s = sched(eta=2)
    feed(s, "a", point(4, 5, 0))
    assert feed(s, "b", {"curve/step": 4, "curve/medmcqa_gain_pp": 0.0}) == [GO]        # no forgetting
    assert feed(s, "b", point(4, 0, float("nan"))) == [GO]                              # not finite
    assert feed(s, "b", {"train/step": 4, "train/loss": 2.0}) == [GO] and "b" not in s.rungs[4]
    assert feed(s, "b", point(4, 0, 9)) == [STOP]                                       # now it is


def test_the_cut_off_is_asynchronous_the_same_points_in_another_order_decide_otherwise():
    first, later = sched(eta=2), sched(eta=2)
    # the weak trial arrives first: alone at its rung, it continues; the strong one continues too
    assert feed(first, "weak", point(4, 1, 5)) == [GO] and feed(first, "strong", point(4, 9, 1)) == [GO]
    # the strong trial first: the weak one is dominated among two and stops
    assert feed(later, "strong", point(4, 9, 1)) == [GO] and feed(later, "weak", point(4, 1, 5)) == [STOP]
    # a third trial on the front, with η 2: keep ⌊3/2⌋ = 1; ties at inf crowding continue
    assert feed(first, "other", point(4, 10, 6)) == [GO]


def test_directions_come_from_the_objectives():
    maxmin = Objectives()                                                       # gain ↑, forgetting ↓
    minmax = Objectives(modes=("min", "max"))                                   # the opposite
    for obj, loser in ((maxmin, "b"), (minmax, "a")):
        s = sched(eta=2, obj=obj)
        feed(s, "a", point(4, 10, 1))
        assert feed(s, "b", point(4, 2, 5)) == [STOP if loser == "b" else GO]
    nats = Objectives(definition="nats")                                        # three objectives, curve/ names
    assert nats.names == ("medmcqa_gain_pp", "wikitext_nats", "triviaqa_drop_pp")
    s = sched(eta=2, obj=nats)
    feed(s, "a", {"curve/step": 4, "curve/medmcqa_gain_pp": 5.0, "curve/wikitext_nats": 0.01, "curve/triviaqa_drop_pp": 1.0})
    assert feed(s, "b", {"curve/step": 4, "curve/medmcqa_gain_pp": 5.0, "curve/wikitext_nats": 0.01,
                         "curve/triviaqa_drop_pp": 2.0}) == [STOP]
    assert feed(s, "c", {"curve/step": 4, "curve/medmcqa_gain_pp": 5.0, "curve/wikitext_nats": 0.001,
                         "curve/triviaqa_drop_pp": 2.0}) == [GO]              # better in nats: on the front


def test_a_stopped_trials_last_result_gets_the_rung_its_objectives_and_its_cost():
    seen = []

    def cost(config, seconds, tokens):
        seen.append((config["method"], seconds, tokens))
        return {O.COST_S: 2 * seconds, O.COST_TOKENS: tokens}

    obj = Objectives().with_constraints([O.Constraint.parse("triviaqa/delta", ">= -1")])
    s = sched(eta=2, obj=obj, cost=cost)
    feed(s, "a", point(4, 10, 1))
    b = trial("b")
    assert s.on_trial_result(None, b, {"train/step": 3, "train/tokens": 1200.0}) == GO
    stop = point(5, 2, 5, **{"curve/triviaqa/delta": -3.0, "curve/wikitext/delta": 7.0, "curve/kl_general": 0.1,
                             "curve/medmcqa": 0.3, "time_total_s": 12.5})
    assert s.on_trial_result(None, b, stop) == STOP
    b.last_result = dict(stop)                      # Tune: the STOP result becomes the last result
    s.on_trial_complete(None, b, dict(b.last_result))
    r = b.last_result
    assert r["early_stopped"] == 1 and r["stopped_at_rung"] == 4 and r["stopped_at_step"] == 5
    assert (r["medmcqa_gain_pp"], r["forgetting"], r["triviaqa/delta"], r["wikitext/delta"]) == (2, 5, -3, 7)
    assert "medmcqa" not in r and "kl_general" not in r          # subset values and drift stay curve/ only
    assert r[O.VIOLATION] == pytest.approx(2.0)                  # −1 − (−3)
    assert r[O.COST_S] == 25.0 and r[O.COST_TOKENS] == 1200.0 and seen == [("lora", 12.5, 1200.0)]
    done = trial("a")
    s.on_trial_complete(None, done, {"train_steps": 100})
    assert "early_stopped" not in done.last_result               # a finished trial is left as it is


def test_a_resumed_driver_judges_against_the_rungs_recorded_before_it(tmp_path):
    """Tune restores the scheduler it pickled before any trial (tuner.pkl), with empty rungs: the
    rungs' file brings back every recorded point, so the resumed driver stops what the uninterrupted
    one stops, and a restarted trial is not judged again at a rung it passed."""
    import ray.cloudpickle as pickle                            # as the Tuner pickles it

    state = tmp_path / "rungs.json"
    pickled = pickle.dumps(sched(state=state))                 # as the Tuner saves it, before any trial
    live = pickle.loads(pickled)
    assert feed(live, "a", point(4, 10.0, 1.0)) == [GO]        # alone: fewer than η entries
    assert feed(live, "b", point(4, 9.0, 2.0)) == [STOP]       # dominated by a, outside the best ⌊2/2⌋
    resumed = pickle.loads(pickled)                             # the driver crashed; Tuner.restore
    assert resumed.rungs == {}
    for tid in "abc":                                           # Tune adds the trials it restored, then c
        resumed.on_trial_add(None, trial(tid))
    assert feed(resumed, "c", point(4, 0.0, 5.0)) == [STOP] == feed(live, "c", point(4, 0.0, 5.0))
    assert resumed.rungs == live.rungs and resumed.judged == live.judged == {"a": 4, "b": 4, "c": 4}
    assert feed(resumed, "a", point(4, 0.0, 9.0)) == [GO] and resumed.rungs[4]["a"] == (-10.0, 1.0)
    assert feed(pickle.loads(pickle.dumps(sched())), "c", point(4, 0.0, 5.0)) == [GO]   # without the file
    from smf_sweep.tune import make_scheduler

    fresh = make_scheduler(load_spec(SMOKE, ON), state)         # a fresh sweep: a stale file is removed
    assert not state.exists() and fresh.state == str(state)


def test_a_trial_requeued_under_a_new_id_is_not_counted_twice(tmp_path):
    """The killed driver was running a and b; Tune's experiment state holds a (and c, stopped), not b,
    so Optuna's restore re-queues b's parameters as a new trial, b2. b's old entry moves to `orphaned`
    at the resumed driver's first decision (kept in the file, not counted): b2 is judged among a, c and
    itself, where b's copy of its own point would have given it a pass (4 entries keep 2, 3 keep 1)."""
    import ray.cloudpickle as pickle

    state = tmp_path / "rungs.json"
    pickled = pickle.dumps(sched(state=state))
    live = pickle.loads(pickled)
    for tid in "bac":
        live.on_trial_add(None, trial(tid))
    assert feed(live, "b", point(4, 5.0, 3.0)) == [GO]           # alone: fewer than η entries
    assert feed(live, "a", point(4, 10.0, 1.0)) == [GO]          # dominates b
    assert feed(live, "c", point(4, 1.0, 5.0)) == [STOP]         # third front of three: outside the best 1
    live.on_trial_complete(None, live._test_trials["c"], {})   # c ended; a and b were running: the kill
    resumed = pickle.loads(pickled)                            # Tuner.restore: a and c come back, b does not
    for tid in ("a", "c", "b2"):                               # b2: b re-queued under a new id
        resumed.on_trial_add(None, trial(tid))
    assert feed(resumed, "b2", point(4, 5.0, 3.0)) == [STOP]   # with b counted too: CONTINUE (a tie with b)
    kept = json.loads(state.read_text())
    assert set(kept["rungs"]["4"]) == {"a", "c", "b2"} and kept["orphaned"] == {"4": {"b": [-5.0, 3.0]}}
    assert set(resumed.judged) == {"a", "c", "b2"} and kept["ended"] == ["c"]
    again = pickle.loads(pickled)                              # a later restore reads the record back
    again.on_trial_add(None, trial("a"))
    assert again.orphaned == {"4": {"b": [-5.0, 3.0]}} and "b" not in again.rungs[4]
    fresh = pickle.loads(pickle.dumps(sched(state=tmp_path / "new.json")))
    assert feed(fresh, "x", point(4, 1.0, 1.0)) == [GO] and fresh.added is None   # no restore: no check


def test_the_scheduler_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="cost"):
        MOASHA(Objectives().with_objective(O.COST_S, "min", reference=100.0), grace=4)
    with pytest.raises(ValueError, match="grace"):
        MOASHA(Objectives(), grace=0)
    with pytest.raises(ValueError, match="eta"):
        MOASHA(Objectives(), grace=4, eta=1)
    s = MOASHA(Objectives(), grace=4)
    assert s.set_search_properties(None, None) and not s.set_search_properties("forgetting", "min")


# ---- the spec ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets, words", [
    (["curves.every=0", "search.early_stopping={grace: 4}"], "curves.every > 0"),
    (["curves.every=4", "search.early_stopping={grace: 2}"], "grace: must be >= curves.every (4)"),
    (["curves.every=4", "search.early_stopping={grace: 4, eta: 1}"], "eta: must be a number > 1"),
    (["curves.every=4", "search.early_stopping={grace: 4.5}"], "grace: expected an integer"),
    (["curves.every=4", "search.early_stopping={grace: 0}"], "grace: an integer >= 1"),
    (["curves.every=4", "search.early_stopping={grace: 4, tie_break: eps}"], "tie_break: must be crowding or eps_net"),
    (["curves.every=4", "search.early_stopping={grace: 4, optuna: kill}"], "must be pruned, complete or fail"),
    (["curves.every=4", "search.early_stopping={grace: 4, rungs: 3}"], "unknown key(s) ['rungs']"),
    (["curves.every=4", "search.early_stopping={grace: 4}", "objectives=[{name: medmcqa_gain_pp, mode: max}, "
      "{name: cost/device_s, mode: min}]", "hypervolume={reference: {cost/device_s: 100}}"], "have no cost"),
    (["curves.every=4", "search.early_stopping={grace: 4, epsilon: {gain: 6}}"], "gain is not an objective"),
    (["curves.every=4", "search.early_stopping={grace: 4, epsilon: {forgetting: -1}}"], "finite numbers >= 0"),
    (["curves.every=4", "search.early_stopping={grace: 4, epsilon: 6}"], "epsilon"),
    (["curves.every=4", "search.early_stopping={grace: 4, grace_per_method: {smff: 12}}"],
     "grace_per_method.smff: not a method of this spec (smf, lora, full)"),
    (["curves.every=4", "search.early_stopping={grace: 4, eta: 3, grace_per_method: {smf: 10}}"],
     "grace_per_method.smf: must be one of the rungs grace·η^k (4, 12, …)"),
    (["curves.every=4", "search.early_stopping={grace: 4, grace_per_method: {smf: 8.5}}"], "grace_per_method"),
])
def test_the_spec_section_is_strict(sets, words):
    with pytest.raises(SpecError) as e:
        load_spec(SMOKE, sets)
    assert words in str(e.value) and "search.early_stopping" in str(e.value)


def test_off_by_default_shipped_specs_keep_their_hash_and_on_builds_the_scheduler(tmp_path):
    from smf_sweep.tune import PlannedSteps, TrialCost, make_scheduler

    for name in ("smoke", "pareto"):
        path = SMOKE.with_name(f"{name}.yaml")
        spec = load_spec(path, [f"storage={tmp_path}"])
        assert spec.search.early_stopping is None and make_scheduler(spec) is None
        assert "early_stopping" not in spec.to_dict()["search"]
        example = re.search(r"# early_stopping: (\{[^}]*\})", path.read_text()).group(1)   # the commented line
        grace = int(re.search(r"grace: (\d+)", example).group(1))
        uncommented = load_spec(path, [f"storage={tmp_path}", f"search.early_stopping={example}",
                                       *([] if spec.curves.on else [f"curves.every={grace}"])])
        assert uncommented.search.early_stopping.grace == grace >= uncommented.curves.every
    off = load_spec(SMOKE, ["curves.every=2"])
    assert load_spec(SMOKE, ["curves.every=2", "search.early_stopping=null"]).spec_hash() == off.spec_hash()
    on = load_spec(SMOKE, ON)
    assert on.spec_hash() != off.spec_hash() and on.to_dict()["search"]["early_stopping"]["grace"] == 4
    es = on.search.early_stopping
    assert (es.eta, es.tie_break, es.optuna, es.epsilon) == (2.0, "crowding", "pruned", {})
    assert "epsilon" not in on.to_dict()["search"]["early_stopping"]       # added later: old hashes hold
    noisy = load_spec(SMOKE, ["curves.every=2", "search.early_stopping={grace: 4, eta: 2, epsilon: {forgetting: 3}}"])
    assert noisy.spec_hash() != on.spec_hash() and make_scheduler(noisy).eps == (0.0, 3.0)
    assert "per_method" not in on.to_dict()["search"]["early_stopping"] and not make_scheduler(on).per_method
    strata = load_spec(SMOKE, ["curves.every=2", "search.early_stopping={grace: 4, eta: 2, per_method: true}"])
    assert strata.spec_hash() != on.spec_hash() and make_scheduler(strata).per_method
    assert "grace_per_method" not in on.to_dict()["search"]["early_stopping"] and make_scheduler(on).first == {}
    slow = load_spec(SMOKE, ["curves.every=2", "search.early_stopping={grace: 4, eta: 2, grace_per_method: {smf: 8}}"])
    assert slow.spec_hash() != on.spec_hash() and make_scheduler(slow).first == {"smf": 8}
    s = make_scheduler(on)
    assert isinstance(s, MOASHA) and (s.grace, s.eta) == (4, 2.0) and s.obj.names == ("medmcqa_gain_pp", "forgetting")
    net = load_spec(SMOKE, ["curves.every=2", "search.early_stopping={grace: 4, eta: 2, tie_break: eps_net}"])
    assert net.spec_hash() != on.spec_hash() and make_scheduler(net).tie_break == "eps_net"
    assert isinstance(s.total_steps, PlannedSteps) and isinstance(s.cost, TrialCost)
    assert TrialCost(on)({"method": "lora"}, 10.0, 5.0) == {O.COST_S: 10.0, O.COST_TOKENS: 5.0}
    import pickle
    assert pickle.loads(pickle.dumps(s)).grace == 4                        # the Tuner pickles its config


def test_planned_steps_count_the_workers_steps(tiny_world):
    from smf_sweep.batching import Batcher, medmcqa_examples
    from smf_sweep.data import medmcqa_train_subset
    from smf_sweep.models import load_tokenizer
    from smf_sweep.tune import PlannedSteps

    src = f"world:{tiny_world}"
    spec = load_spec(SMOKE, [f"data.task={src}", "train.max_steps=null", "train.epochs=1.5", "train.train_limit=40"])
    rows = medmcqa_train_subset(src, seed=0, limit=40)
    tcfg_batch = Batcher(medmcqa_examples(rows), load_tokenizer(tiny_world / "model"), micro_batch_size=8,
                         max_len=512, effective_batch=16)
    want = math.ceil(1.5 * tcfg_batch.steps_per_epoch)                     # TrainConfig.total_steps
    assert PlannedSteps(spec)({"method": "lora", "lora.lr": 1e-3}) == want == math.ceil(1.5 * (40 // 16))
    capped = load_spec(SMOKE, [f"data.task={src}", "train.max_steps=2"])
    assert PlannedSteps(capped)({"method": "full", "full.lr": 1e-4}) == 2


# ---- a stop as Tune delivers it: scheduler → Optuna → MLflow ------------------------------------------------
def _stop_flow(tmp_path, optuna_state: str):
    """Trials a (strong) and b (weak) through the real searcher and MLflow logger, in stop_trial's
    order: b is stopped at rung 4 (gain 2, forgetting 0.5: a had 10 and 0.1 there); then a finishes
    (gain 12, forgetting 1.0), which does not dominate b's rung values: stopped early, b forgot less."""
    from smf_sweep.tracking import MLflowTrialLogger, Progress, SweepTracker
    from smf_sweep.trial import outcome
    from smf_sweep.tune import Describe, make_scheduler, make_searcher
    from tests.test_objectives import after_of

    spec = load_spec(SMOKE, [f"storage={tmp_path}", "search.trials=2", "methods.smf.points=[]",
                             "methods.lora.points=[]", "methods.full.points=[]", *ON,
                             f"search.early_stopping.optuna={optuna_state}"])
    sweep = spec.sweep_dir()
    sweep.mkdir(parents=True)
    uri, experiment = f"sqlite:///{sweep / 'mlflow.db'}", f"smf_sweep/{spec.name}"
    SweepTracker(uri, experiment, spec.name, spec.spec_hash()).log_sweep(spec.to_dict(), BASE, None)
    searcher, sched = make_searcher(spec), make_scheduler(spec)
    sched.total_steps = lambda config: 20
    logger = MLflowTrialLogger({"uri": uri, "experiment": experiment, "sweep": spec.name,
                                "spec_hash": spec.spec_hash()}, Describe(spec))
    logger.setup()
    trials = {}
    for tid in ("a", "b"):
        trials[tid] = t = SimpleNamespace(trial_id=tid, config=searcher.suggest(tid), last_result={})
        sched.on_trial_add(None, t)
        logger.on_trial_start(0, [], t)
    a, b = trials["a"], trials["b"]
    assert sched.on_trial_result(None, a, point(4, 10, 0.1, time_total_s=5.0)) == GO
    stop = point(4, 2, 0.5, **{"curve/triviaqa/delta": -4.0, "curve/wikitext/delta": 6.0, "time_total_s": 8.0})
    assert sched.on_trial_result(None, b, stop) == STOP
    b.last_result = {**stop, "done": True}
    sched.on_trial_complete(None, b, dict(b.last_result))          # Tune's stop_trial: scheduler first,
    searcher.on_trial_complete("b", result=dict(b.last_result))    # then the searcher,
    logger.on_trial_complete(0, [], b)                             # then the callbacks
    a.last_result = {**outcome(spec, BASE, after_of(12, -1, 1)), "trial_id": "a", O.COST_S: 30.0}
    sched.on_trial_complete(None, a, dict(a.last_result))
    searcher.on_trial_complete("a", result=dict(a.last_result))
    logger.on_trial_complete(0, [], a)
    return spec, uri, experiment, searcher, Progress.read(logger.tracker), logger


@pytest.mark.parametrize("state", ["pruned", "complete", "fail"])
def test_optuna_holds_the_documented_state_and_values(tmp_path, state):
    import optuna

    spec, *_ = _stop_flow(tmp_path, state)
    study = optuna.load_study(study_name=f"{spec.name}-{spec.spec_hash()}",
                              storage=f"sqlite:///{spec.sweep_dir() / 'optuna.db'}")
    a, b = study.trials
    assert a.state == optuna.trial.TrialState.COMPLETE and a.values == pytest.approx([12.0, 1.0])
    assert b.user_attrs["smf_sweep.stopped_at_rung"] == 4 and b.user_attrs["smf_sweep.stopped_at_step"] == 4
    assert json.loads(b.user_attrs["smf_sweep.rung_values"]) == {"medmcqa_gain_pp": 2.0, "forgetting": 0.5}
    want = {"pruned": optuna.trial.TrialState.PRUNED, "complete": optuna.trial.TrialState.COMPLETE,
            "fail": optuna.trial.TrialState.FAIL}[state]
    assert b.state == want
    assert b.values == ([2.0, 0.5] if state == "complete" else None)
    assert [t.number for t in study.best_trials] == ([0, 1] if state == "complete" else [0])   # complete: b joins
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_the_front_leaves_out_a_trial_told_complete_at_its_rung(tmp_path):
    from smf_sweep.tune import study_front

    spec, *_ = _stop_flow(tmp_path, "complete")
    front, _ = study_front(spec, Objectives.from_spec(spec), [])
    assert [r["optuna_trial"] for r in front] == [0]


def test_mlflow_ends_a_stopped_trial_killed_with_its_rung_and_counts_only_its_compute(tmp_path):
    from mlflow import MlflowClient

    spec, uri, experiment, _, progress, _ = _stop_flow(tmp_path, "pruned")
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = {r.data.tags["trial_id"]: r for r in c.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'trial'")}
    b, a = runs["b"], runs["a"]
    assert a.info.status == "FINISHED" and "stopped_at_rung" not in a.data.tags
    assert b.info.status == "KILLED" and b.data.tags["stopped_at_rung"] == "4" and b.data.tags["stopped_at_step"] == "4"
    assert "failure_reason" not in b.data.tags
    m = b.data.metrics
    assert (m["medmcqa_gain_pp"], m["forgetting"], m["triviaqa/delta"], m["wikitext/delta"]) == (2.0, 0.5, -4.0, 6.0)
    assert m[O.COST_S] == 8.0                       # lora: one worker, one CPU × 8 s
    parent = c.search_runs([exp.experiment_id], "tags.`smf_sweep.role` = 'sweep'")[0].info.run_id
    hist = {k: [(x.step, x.value) for x in sorted(c.get_metric_history(parent, k), key=lambda x: x.step)]
            for k in (O.COMPUTE, O.HYPERVOLUME, O.FRONT_SIZE)}
    assert hist[O.COMPUTE] == [(1, 8.0), (2, 38.0)]          # the stopped trial's compute counts …
    assert hist[O.FRONT_SIZE] == [(1, 0.0), (2, 1.0)]        # … its rung's values do not
    assert progress.rows["b"] == {O.COST_S: 8.0}             # read back the same way by a resumed driver
    assert progress.point()[O.HYPERVOLUME] == pytest.approx(hist[O.HYPERVOLUME][-1][1])


def test_multi_objective_tpe_puts_a_pruned_trial_below_every_complete_one():
    """Why `pruned` is the default: Optuna 5's TPE splits a multi-objective study's trials into
    good ("below") and bad ("above"); complete trials fill the good group first, a PRUNED trial
    without intermediate values only after them — it counts as worse than every complete trial."""
    import optuna
    from optuna.samplers._tpe.sampler import _split_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for gain, forgetting in ((1.0, 5.0), (2.0, 4.0), (3.0, 3.0), (0.5, 6.0)):
        study.enqueue_trial({"x": gain})
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
        study.tell(t, [gain, forgetting])
    pruned = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False)
    for n_below in (1, 2, 4):
        below, above = _split_trials(study, trials, n_below)
        assert pruned.number in [t.number for t in above]
    assert [t.number for t in study.best_trials] == [2]
