"""The world study's spec (issue 15, item 4): every method and SMF selector, curves on, every study
point re-run with the confirm seeds (`confirm.points`), so the equal-gain table has intervals; the
option leaves other sweeps' spec hash alone."""
from __future__ import annotations

from pathlib import Path

from smf_sweep.spec import load_spec
from smf_sweep.tune import confirm_choice, points_of

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def test_world_study_runs_every_point_with_three_seeds():
    spec = load_spec(SPACES / "world_study.yaml")
    assert spec.curves.on and spec.search.trials == 0 and spec.confirm.points
    assert {p["smf.selector"] for p in points_of(spec) if p["method"] == "smf"} == {"kl", "tfidf", "tf", "random"}
    assert {p["method"] for p in points_of(spec)} == {"smf", "lora", "full"}
    chosen = confirm_choice(spec, front=[])                    # nothing on a front: still every point
    assert [r["params"] for r in chosen] == points_of(spec)
    assert len(chosen) * len(spec.confirm.seeds) + len(points_of(spec)) == 30
    assert sorted({*spec.seeds, *spec.confirm.seeds}) == [0, 1, 2]


def test_confirm_points_adds_the_points_not_already_chosen_once():
    spec = load_spec(SPACES / "smoke.yaml", ["confirm.top=1", "confirm.points=true"])
    pts = points_of(spec)
    front = [{"trial_id": "t", "params": pts[1], "medmcqa_gain_pp": 9.0, "forgetting": 1.0}]
    chosen = confirm_choice(spec, front)
    assert [r["params"] for r in chosen] == [pts[1], *(p for p in pts if p != pts[1])]


def test_confirm_points_default_keeps_the_spec_hash():
    spec = load_spec(SPACES / "smoke.yaml")
    assert "points" not in spec.to_dict()["confirm"]
    assert load_spec(SPACES / "smoke.yaml", ["confirm.points=false"]).spec_hash() == spec.spec_hash()
    assert load_spec(SPACES / "smoke.yaml", ["confirm.points=true"]).spec_hash() != spec.spec_hash()
