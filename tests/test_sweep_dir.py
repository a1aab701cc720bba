"""A sweep directory belongs to one spec: another spec submitted into it is refused before Ray
starts, naming the dotted keys that differ (old → new); the same spec (from anywhere) resumes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smf_sweep.preflight import SweepDirError, check_sweep_dir, spec_diff, write_frozen_spec
from smf_sweep.spec import load_spec, parse_spec, resolve_world, resolve_world_dry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def test_no_frozen_spec_yet_and_the_same_spec_again(tmp_path):
    spec = load_spec(SMOKE, [f"storage={tmp_path}"])
    check_sweep_dir(spec)                              # a new directory: nothing to compare
    spec.sweep_dir().mkdir(parents=True)
    write_frozen_spec(resolve_world_dry(spec))         # what run_sweep freezes (the world resolved)
    check_sweep_dir(load_spec(SMOKE, [f"storage={tmp_path}"]))
    moved = tmp_path / "elsewhere.yaml"                # the same spec from another file: resumes
    moved.write_text(SMOKE.read_text())
    check_sweep_dir(load_spec(moved, [f"storage={tmp_path}"]))


def test_another_spec_is_refused_naming_the_keys(tmp_path):
    old = load_spec(SMOKE, [f"storage={tmp_path}"])
    old.sweep_dir().mkdir(parents=True)
    write_frozen_spec(resolve_world_dry(old))
    new = load_spec(SMOKE, [f"storage={tmp_path}", "search.trials=8", "methods.smf.search.top_t={logint: [16, 128]}"])
    with pytest.raises(SweepDirError) as e:
        check_sweep_dir(new)
    msg = str(e.value)
    assert msg.startswith(f"{SMOKE}: the sweep directory {tmp_path / 'smoke'} belongs to another spec"), msg
    assert "  search.trials: 2 → 8" in msg, msg
    assert '  methods.smf.search.top_t.high: 256 → 128' in msg, msg
    assert "2 keys differ" in msg and "--storage" in msg and "--set name=" in msg, msg


def test_spec_diff_dotted_keys():
    old = {"source": "a.yaml", "name": "s", "methods": {"smf": {"points": [{"lr": 0.03}], "fixed": {}}}, "seeds": [0]}
    new = {"source": "b.yaml", "name": "s", "methods": {"smf": {"points": [{"lr": 0.05}, {"lr": 1}], "fixed": {"k": 2}}},
           "seeds": [0, 1], "tracking_uri": None}
    assert spec_diff(old, new) == [("methods.smf.fixed.k", "(absent)", "2"),
                                   ("methods.smf.points[0].lr", "0.03", "0.05"), ("methods.smf.points[1].lr", "(absent)", "1"),
                                   ("seeds", "[0]", "[0, 1]"), ("tracking_uri", "(absent)", "null")]


def test_the_dry_world_resolution_is_resolve_worlds(tmp_path, monkeypatch):
    """check_sweep_dir compares without building the world: resolve_world_dry must name the same
    directory as resolve_world (here with the build replaced by its cache path)."""
    import smf_sweep.world as world

    monkeypatch.setenv("SMF_SWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(world, "build_world", lambda cfg, progress=True: world.default_world_dir(cfg))
    spec = load_spec(SMOKE, [f"storage={tmp_path}", 'probes.wikitext.source="world:"'])
    assert resolve_world_dry(spec).to_dict() == resolve_world(spec, progress=False).to_dict()
    assert resolve_world_dry(spec).model == str(world.default_world_dir(world.WorldConfig(seed=0)) / "model")
    plain = parse_spec({"name": "p", "model": "org/m", "methods": {"lora": {}}})
    assert resolve_world_dry(plain) is plain


def test_the_cli_refuses_before_ray_starts(tmp_path):
    """python -m smf_sweep.tune: a second run with another spec is refused with exit code 2, in
    seconds (no Ray, no world build, nothing written)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodel: org/some-model\nmethods:\n  lora:\n    search: {lr: {loguniform: [1.0e-4, 1.0e-3]}}\n"
                    "search: {trials: 2}\n")
    first = load_spec(spec, [f"storage={tmp_path / 'runs'}"])
    first.sweep_dir().mkdir(parents=True)
    frozen = write_frozen_spec(first)
    before = frozen.read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "smf_sweep.tune", str(spec), "--storage", str(tmp_path / "runs"),
                        "--set", "search.trials=3", "--set", "methods.lora.search.lr={loguniform: [1.0e-5, 1.0e-3]}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr
    assert "belongs to another spec" in err and "search.trials: 2 → 3" in err, err
    assert "methods.lora.search.lr.low: 0.0001 → 1e-05" in err, err
    assert "Ray" not in p.stdout and "ray.init" not in err and "Started a local Ray instance" not in err, err
    assert frozen.read_text() == before and not (tmp_path / "runs" / "tiny" / "tune").exists()
    assert took < 120, took


def test_a_moved_sweep_directory_is_told_where_it_resumes(tmp_path):
    """Only `storage` differs: the directory was moved or copied. Ray restores the searcher, the
    scheduler and the MLflow logger with their pickled absolute paths, so the message says where the
    sweep resumes, how to resume it here (a link) and that analysis reads it anywhere."""
    first = tmp_path / "cluster"
    old = load_spec(SMOKE, [f"storage={first}"])
    old.sweep_dir().mkdir(parents=True)
    write_frozen_spec(resolve_world_dry(old))
    here = tmp_path / "laptop"
    here.mkdir()
    os.rename(old.sweep_dir(), here / "smoke")
    with pytest.raises(SweepDirError) as e:
        check_sweep_dir(load_spec(SMOKE, [f"storage={here}"]))
    msg = str(e.value)
    assert f"the sweep directory {here / 'smoke'} was started at {first / 'smoke'}" in msg, msg
    assert "another copy" not in msg and "belongs to another spec" not in msg, msg
    assert f"ln -s {here / 'smoke'} {first / 'smoke'}" in msg and f"--storage {first}" in msg, msg
    assert f"python -m analysis.pareto {here / 'smoke'}" in msg, msg
    os.symlink(here / "smoke", first / "smoke")           # the advice: the old path links to it
    check_sweep_dir(load_spec(SMOKE, [f"storage={first}"]))
    os.unlink(first / "smoke")                             # a copy: the old directory exists too
    (first / "smoke").mkdir()
    with pytest.raises(SweepDirError, match=r"\(which exists: another copy\)"):
        check_sweep_dir(load_spec(SMOKE, [f"storage={here}"]))
    with pytest.raises(SweepDirError, match="belongs to another spec"):   # another key too: another spec
        check_sweep_dir(load_spec(SMOKE, [f"storage={here}", "search.trials=8"]))
