"""Trials through real Ray Train (TorchTrainer, gloo on CPU): full finetuning under DeepSpeed ZeRO-2
on two workers, and a worker killed after a checkpoint that resumes from it."""
from __future__ import annotations

import json
from functools import partial

import pytest

from smf_sweep.spec import parse_spec
from smf_sweep.trial import _compute_base, probe_specs, run_trial
from tests.fixtures.worker_hooks import hooked       # the worker function with test hooks (Ray imports it too)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)    # the janitor uses the state API
    yield
    ray.shutdown()


def _spec(world, tmp_path, method_block: dict, **train):
    src = f"world:{world}"
    return parse_spec({
        "name": "t", "model": str(world / "model"), "storage": str(tmp_path),
        "data": {"task": src, "retrofit": src, "triviaqa": src, "wikitext": src},
        "probes": {"medmcqa": {"limit": 16}, "wikitext": {"limit": 8}, "triviaqa": {"limit": 8}},
        "train": {"lr": 1e-3, "epochs": 10, "max_steps": 6, "micro_batch_size": 4, "effective_batch": 8, "max_len": 96,
                  "warmup_steps": 1, "log_every": 1, "train_limit": 64, **train},
        "methods": method_block, "threads_per_worker": 1})


def test_full_finetuning_deepspeed_two_workers_identical_ranks(tiny_world, tmp_path, ray_local):
    spec = _spec(tiny_world, tmp_path, {"full": {"fixed": {"zero_stage": 2},
                                                 "resources": {"workers": 2, "cpus_per_worker": 1}}})
    base = _compute_base(spec.model, probe_specs(spec), 8, False, spec.train["precision"])
    out = run_trial(spec, "full", {}, 0, base, name="ds2", train_fn=partial(hooked, debug_dir=str(tmp_path / "dbg")))
    digests = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["sha256"]
               for p in (tmp_path / "dbg").glob("rank*.json")}
    assert set(digests) == {0, 1}
    assert digests[0] == digests[1], "ZeRO-2 ranks disagree on the weights after training"
    assert out["train_steps"] == 6 and out["info.zero_stage"] == 2
    # equal budget: two workers at micro-batch 4 reach the spec's effective batch 8 without accumulation
    assert (out["train/optimizer_steps"], out["train/examples_seen"], out["train/effective_batch"]) == (6, 48, 8)
    for k in ("medmcqa/after", "wikitext/after", "triviaqa/after", "medmcqa_gain_pp", "forgetting"):
        assert isinstance(out[k], float)


@pytest.mark.parametrize("method, fixed", [
    ("lora", {}),
    ("smf", {"layers": [1], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6, "mode": "zero_values",
             "selector": "tf"})])
def test_two_workers_get_the_same_budget_as_one(tiny_world, tmp_path, ray_local, method, fixed):
    """SMF and LoRA over two data-parallel workers: same optimizer steps, examples and effective
    batch as full FT's two-worker run above and as any one-worker run (tests/test_invariants.py)."""
    spec = _spec(tiny_world, tmp_path, {method: {"fixed": fixed, "resources": {"workers": 2, "cpus_per_worker": 1}}},
                 max_steps=3)
    base = _compute_base(spec.model, probe_specs(spec), 8, False, spec.train["precision"])
    out = run_trial(spec, method, {}, 0, base, name=f"{method}2")
    assert (out["train/optimizer_steps"], out["train/examples_seen"], out["train/effective_batch"]) == (3, 24, 8)


def test_killed_worker_resumes_from_its_checkpoint(tiny_world, tmp_path, ray_local):
    spec = _spec(tiny_world, tmp_path, {"lora": {"resources": {"workers": 1, "cpus_per_worker": 1}}},
                 max_steps=8, checkpoint_every=2)
    base = _compute_base(spec.model, probe_specs(spec), 8, False, spec.train["precision"])
    marker = tmp_path / "killed.json"
    out = run_trial(spec, "lora", {}, 0, base, name="resume",
                    train_fn=partial(hooked, debug_dir=str(tmp_path / "dbg"), crash_at=(4, str(marker))))
    assert marker.exists(), "the worker was never killed"
    starts = [json.loads(ln)["start_step"] for ln in (tmp_path / "dbg" / "starts.jsonl").read_text().splitlines()]
    assert starts == [0, 4], starts          # first attempt from scratch, the restart from step 4's checkpoint
    assert out["train/step"] == 8 and out["train_steps"] == 8
    assert json.loads(marker.read_text())["train/step"] == 5     # killed during step 5, after the step-4 checkpoint


def test_janitor_removes_an_ended_trials_placement_group(ray_local):
    """A trial whose driver died leaves its Train placement group reserved (Ray 2.60); the sweep's
    janitor removes it when Tune ends the trial."""
    from types import SimpleNamespace

    from ray.util.placement_group import placement_group, placement_group_table

    from smf_sweep.janitor import PlacementGroupJanitor

    pg = placement_group([{"CPU": 1}])
    pg.wait(30)
    hex_id = pg.id.hex()
    j = PlacementGroupJanitor()
    trial = SimpleNamespace(trial_id="t1")
    j.on_trial_result(0, [], trial, {"placement_group": hex_id})
    assert placement_group_table()[hex_id]["state"] == "CREATED"
    j.on_trial_error(0, [], trial)
    assert placement_group_table()[hex_id]["state"] == "REMOVED"
    assert j.release("t1") == []            # nothing left to release


def test_janitor_removes_groups_left_empty(ray_local):
    """A trial can die before any report reaches Tune: a group once seen in use whose actors are all
    gone goes after grace_s; a group never used (Tune's staged groups) and a busy group stay."""
    import time

    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from smf_sweep.janitor import PlacementGroupJanitor

    staged, busy, orphan = (placement_group([{"CPU": 0.25}]) for _ in range(3))
    for g in (staged, busy, orphan):
        assert g.wait(30)

    @ray.remote(num_cpus=0.25)
    class Sleeper:
        def ping(self):
            return 1

    actors = {g.id.hex(): Sleeper.options(scheduling_strategy=PlacementGroupSchedulingStrategy(g)).remote()
              for g in (busy, orphan)}
    assert ray.get([a.ping.remote() for a in actors.values()]) == [1, 1]
    j = PlacementGroupJanitor(grace_s=1.0)
    t0 = time.monotonic()
    assert j.sweep_empty(t0) == []                          # both in use: nothing to do
    ray.kill(actors[orphan.id.hex()])                       # its trial died: the group is left empty
    deadline = time.monotonic() + 30
    while j.sweep_empty(t0 + 0.5) == [] and orphan.id.hex() not in j.empty_since:
        assert time.monotonic() < deadline, "the killed actor never left the state API"
        time.sleep(0.5)
    removed = j.sweep_empty(t0 + 5.0)
    table = placement_group_table()
    assert removed == [orphan.id.hex()] and table[orphan.id.hex()]["state"] == "REMOVED"
    assert table[busy.id.hex()]["state"] == "CREATED" and table[staged.id.hex()]["state"] == "CREATED"
    ray.kill(actors[busy.id.hex()])
    remove_placement_group(busy), remove_placement_group(staged)


def test_janitor_asks_its_own_cluster_when_the_machine_runs_two(ray_local):
    """With no address the state API refuses when a second Ray instance runs on the machine ("Found
    multiple active Ray instances"); the janitor then stopped sweeping for good and a lost node's
    group was never removed. It asks the driver's own cluster, so a second instance changes nothing."""
    import subprocess
    import sys
    import time

    from smf_sweep.janitor import PlacementGroupJanitor

    other = subprocess.Popen([sys.executable, "-c", "import ray, sys, time; ray.init(num_cpus=0, include_dashboard=False,"
                              " log_to_driver=False); print('up', flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        j = PlacementGroupJanitor(grace_s=1.0)
        j.sweep_empty(time.monotonic())
        assert j.state_api and j.state_errors == []
    finally:
        other.kill()
        other.wait(30)


def test_janitor_stops_sweeping_only_after_errors_in_a_row(ray_local, monkeypatch):
    """One state-API timeout on a loaded head is not the end of sweeping (it was: the first error
    turned the janitor off); MAX_STATE_ERRORS in a row are, and say why."""
    import time

    import ray.util.state

    from smf_sweep.janitor import MAX_STATE_ERRORS, PlacementGroupJanitor

    j, real = PlacementGroupJanitor(), ray.util.state.list_actors

    def timeout(*a, **kw):
        raise TimeoutError("the state API did not answer in 30 s")

    monkeypatch.setattr(ray.util.state, "list_actors", timeout)
    assert j.sweep_empty(time.monotonic()) == [] and j.state_api
    monkeypatch.setattr(ray.util.state, "list_actors", real)
    j.sweep_empty(time.monotonic())
    assert j.state_api and j.state_errors == []                      # the next sweep answered: count reset
    monkeypatch.setattr(ray.util.state, "list_actors", timeout)
    for _ in range(MAX_STATE_ERRORS):
        j.sweep_empty(time.monotonic())
    assert not j.state_api and j.state_errors == ["TimeoutError: the state API did not answer in 30 s"] * MAX_STATE_ERRORS
