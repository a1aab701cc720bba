"""The world's calibration controls (issue 15, item 1; smf_sweep/calibrate.py): each rule on
hand-made runs where the answer is known, and the command end to end on a tiny world, recording
its controls in world.json outside the world's content hash."""
from __future__ import annotations

import json

import pytest

from smf_sweep.calibrate import converged, gradual, resolution, spill_over


def _run(lr, gain, tqa, wiki):
    return {"lr": lr, "medmcqa/delta": gain, "triviaqa/delta": tqa, "wikitext/delta": wiki}


def test_resolution_needs_800_questions_and_a_weak_base():
    assert resolution(800, 0.27)["passed"] and resolution(800, 0.27)["two_se_of_difference_pp"] == pytest.approx(5.0)
    assert not resolution(799, 0.27)["passed"]
    assert not resolution(2000, 0.41)["passed"]
    assert not resolution(0, 0.2)["passed"]


def test_gradual_forgetting_is_monotone_within_tolerance_and_reaches_20pp():
    ok = [_run(1e-5, 2, -0.5, 0.2), _run(1e-4, 12, -1.0, 1.5), _run(1e-3, 25, -15, 40)]
    assert gradual(ok)["passed"]
    assert gradual(list(reversed(ok)))["passed"], "order of the runs does not matter"
    recovers = [_run(1e-5, 2, -5, 0.2), _run(1e-4, 25, -1.0, 1.5)]          # TriviaQA back up by 4 pp
    r = gradual(recovers)
    assert not r["passed"] and "TriviaQA at lr 0.0001" in r["violations"][0]
    within = [_run(1e-5, 2, -2.0, 5.0), _run(1e-4, 25, -0.5, 2.5)]          # inside 2 pp and 3 %
    assert gradual(within)["passed"]
    weak = [_run(1e-5, 2, -0.5, 0.2), _run(1e-3, 19.9, -15, 40)]
    assert not gradual(weak)["passed"] and gradual(weak)["max_gain_pp"] == 19.9


def test_spill_over_reads_only_the_spec_range():
    runs = [_run(1e-5, 0, 0, -14.0), _run(5e-5, 0, 0, -2.9), _run(1e-3, 0, 0, 30.0)]
    r = spill_over(runs, (5e-5, 1e-3))
    assert r["passed"] and r["lowest_wikitext_delta_pct"] == -2.9 and r["lrs"] == [5e-5, 1e-3]
    assert not spill_over(runs, (1e-5, 1e-3))["passed"]


def test_converged_base_bounds_both_probes_both_ways():
    assert converged([_run(1e-4, 0, -1.9, 2.9), _run(1e-3, 0, 1.0, -3.0)])["passed"]
    assert not converged([_run(1e-4, 0, 0, -3.1)])["passed"]
    assert not converged([_run(1e-4, 0, 2.1, 0)])["passed"]


@pytest.mark.slow
def test_calibrate_runs_on_a_tiny_world_and_records_its_controls(tmp_path, monkeypatch, capsys):
    """The command end to end: controls on a world of TINY's sizes (its model learns nothing, so
    the numbers mean nothing; the record's shape and place do)."""
    from smf_sweep.calibrate import controls, main
    from smf_sweep.world import TINY
    from smf_sweep.world.build import content_hash

    monkeypatch.setenv("SMF_SWEEP_CACHE", str(tmp_path / "cache"))
    sets = [f"world.{k}={v}" for k, v in TINY.to_dict().items() if k != "seed"]
    sets += ["train.max_steps=2", "train.micro_batch_size=4", "train.effective_batch=4", "train.max_len=64",
             "probes.medmcqa.limit=8", "probes.triviaqa.limit=8", "probes.wikitext.limit=8"]
    record = tmp_path / "record.json"
    argv = ["search_spaces/smoke.yaml", "--lrs", "1e-4", "--write", "--record", str(record)] + \
        [x for s in sets for x in ("--set", s)]
    rc = main(argv)
    out = capsys.readouterr().out
    (world,) = (tmp_path / "cache" / "worlds").glob("world-*[!k]")
    info = json.loads((world / "world.json").read_text())
    cal = info["calibration"]
    assert set(cal) == {"converged_base", "format_shift", "no_spill_over", "gradual_forgetting", "resolution", "build",
                        "how"}
    assert set(controls(cal)) == set(cal) - {"format_shift", "how"} and cal["format_shift"]["informational"]
    assert rc == (0 if all(c["passed"] for c in controls(cal).values()) else 1)
    assert [r["lr"] for r in cal["gradual_forgetting"]["runs"]] == [5e-5, 1e-4, 1e-3]     # --lrs ∪ the spec's range ends
    assert [(r["lr"], r["seed"]) for r in cal["converged_base"]["runs"]] == \
        [(lr, s) for lr in (5e-5, pytest.approx(2.236e-4, rel=1e-3), 1e-3) for s in (0, 1)]   # every rate, --base-seeds
    assert len(cal["format_shift"]["runs"]) == 3 and cal["how"]["base_seeds"] == [0, 1]
    assert cal["how"]["overrides"] == sets
    assert content_hash(world) == info["content_hash"], "the record stays outside the world's content"
    rec = json.loads(record.read_text())     # the repository's kind of record: of which build, on which machine
    assert rec["world_key"] == info["key"] and rec["content_hash"] == info["content_hash"] and rec["calibration"] == cal
    assert set(rec["built_on"]) == {"cpu", "torch_cpu_capability", "torch"} and rec["built_on"]["cpu"]
    for name in ("converged_base", "no_spill_over", "gradual_forgetting", "resolution", "build"):
        assert name in out
