"""Bad specs fail before Ray starts, against the model's config (config.json only, no weights):
SMF layers beyond the depth, top_t above the slots per layer at a searched range's worst corner,
combinations the memory refuses, max_len above the positions, LoRA targets no module matches;
a hub id whose config cannot be had here warns and skips (the other checks still run)."""
from __future__ import annotations

from pathlib import Path

import pytest

from smf_sweep.preflight import PreflightError, model_limits, preflight
from smf_sweep.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SMF = {"layers": [1, 2], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6, "mode": "zero_values",
       "selector": "tf", "background_batches": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 4-layer Qwen2 with 512 positions: its config.json only (no weights; the preflight reads no more)."""
    from transformers import Qwen2Config

    d = tmp_path_factory.mktemp("model")
    Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=512).save_pretrained(d)
    assert not list(d.glob("*.safetensors"))
    return d


def spec_of(model, tmp_path, methods: dict, train: dict | None = None, **kw):
    return parse_spec({"name": "pf", "model": str(model), "storage": str(tmp_path), "methods": methods,
                       "train": {"max_len": 256, **(train or {})}, **kw}, "pf.yaml")


def refused(spec, **kw) -> str:
    with pytest.raises(PreflightError) as e:
        preflight(spec, **kw)
    return str(e.value)


def test_memory_layers_beyond_the_models_depth(model_dir, tmp_path):
    msg = refused(spec_of(model_dir, tmp_path, {"smf": {"fixed": {**SMF, "layers": [1, 2, 9]}}}))
    assert msg.startswith("pf.yaml: methods.smf.fixed.layers: [1, 2, 9]"), msg
    assert "layer 9" in msg and "4 decoder layers (0–3" in msg and str(model_dir) in msg, msg
    preflight(spec_of(model_dir, tmp_path, {"smf": {"fixed": {**SMF, "layers": [0, 3]}}}))     # the last layer is fine


def test_a_searched_range_whose_worst_corner_exceeds_the_slots(model_dir, tmp_path):
    """top_t logint up to 4096 with n_keys down to 32 (1024 slots): refused, naming both keys."""
    fixed = {k: v for k, v in SMF.items() if k not in ("n_keys", "top_t")}
    search = {"n_keys": {"choice": [32, 64]}, "top_t": {"logint": [16, 4096]}, "lr": {"loguniform": [1e-3, 1e-1]}}
    msg = refused(spec_of(model_dir, tmp_path, {"mem": {"method": "smf", "fixed": fixed, "search": search}}))
    assert "methods.mem.search.top_t: 4096 (the high end of logint [16, 4096])" in msg, msg
    assert "1024 slots per layer of arm mem's memory" in msg and "methods.mem.search.n_keys" in msg, msg
    assert msg.count("\n") == 0, "one problem, reported once (not once per lr/selector corner)"
    ok = {**search, "top_t": {"logint": [16, 1024]}}
    preflight(spec_of(model_dir, tmp_path, {"mem": {"method": "smf", "fixed": fixed, "search": ok}}))


def test_a_point_is_checked_with_the_keys_it_leaves_to_the_search(model_dir, tmp_path):
    fixed = {k: v for k, v in SMF.items() if k not in ("n_keys", "top_t")}
    spec = spec_of(model_dir, tmp_path, {"smf": {"fixed": fixed, "search": {"n_keys": {"choice": [8, 16]},
                                                                            "top_t": {"choice": [4, 100]}},
                                                 "points": [{"top_t": 100}]}})
    msg = refused(spec)
    assert "methods.smf.points[0].top_t: 100" in msg and "64 slots" in msg, msg


def test_combinations_the_memory_refuses(model_dir, tmp_path):
    """Each value alone is valid (spec.validate), the pair is not: k must be <= n_keys."""
    fixed = {**SMF, "n_keys": 8, "k": 2, "top_t": 2}
    search = {"n_keys": {"choice": [4, 8]}, "k": {"choice": [2, 8]}}
    msg = refused(spec_of(model_dir, tmp_path, {"smf": {"fixed": fixed, "search": search}}))
    assert "methods.smf.search: {n_keys: 4, k: 8}" in msg and "k=8 must be <= n_keys=4" in msg, msg


def test_max_len_above_the_models_positions(model_dir, tmp_path):
    msg = refused(spec_of(model_dir, tmp_path, {"lora": {}}, train={"max_len": 1024}))
    assert "pf.yaml: train.max_len: 1024" in msg and "512 positions" in msg and "max_position_embeddings" in msg, msg
    msg = refused(spec_of(model_dir, tmp_path, {"lora": {"search": {"max_len": {"choice": [256, 2048]}}}}))
    assert "methods.lora.search.max_len: 2048" in msg, msg
    # SMF's retrofit sequences (only when it retrofits: additive/replace)
    smf = {**SMF, "mode": "additive", "retrofit": {"max_len": 1024}}
    assert "methods.smf.fixed.retrofit.max_len: 1024" in refused(spec_of(model_dir, tmp_path, {"smf": {"fixed": smf}}))
    preflight(spec_of(model_dir, tmp_path, {"smf": {"fixed": {**smf, "mode": "zero_values"}}}))


def test_lora_targets_must_match_a_module_of_the_architecture(model_dir, tmp_path):
    msg = refused(spec_of(model_dir, tmp_path, {"lora": {"fixed": {"target_modules": ["q_proj", "qkv_proj"]}}}))
    assert "methods.lora.fixed.target_modules" in msg and "qkv_proj of arm lora matches no module" in msg, msg
    assert "q_proj" in msg.split("module names end in:")[1], msg           # it lists what exists
    preflight(spec_of(model_dir, tmp_path, {"lora": {"fixed": {"target_modules": ["q_proj", "mlp.down_proj"]}}}))


def test_every_problem_is_reported_at_once(model_dir, tmp_path):
    msg = refused(spec_of(model_dir, tmp_path, {"smf": {"fixed": {**SMF, "layers": [7]}},
                                                "lora": {"fixed": {"target_modules": ["nope"]}}},
                          train={"max_len": 600}))
    lines = msg.splitlines()
    assert all(ln.startswith("pf.yaml: ") for ln in lines), msg
    assert any("layers" in ln for ln in lines) and any("nope" in ln for ln in lines)
    assert sum("train.max_len: 600" in ln for ln in lines) == 2      # once per arm, the arm named


def test_one_trial_checks_its_own_parameters(model_dir, tmp_path):
    spec = spec_of(model_dir, tmp_path, {"smf": {"fixed": SMF, "search": {"top_t": {"choice": [4, 100]}}},
                                         "lora": {"fixed": {"target_modules": ["nope"]}}})
    preflight(spec, arm="smf", params={"top_t": 4})          # the lora arm's problem is not this trial's
    assert "the trial's top_t: 100" in refused(spec, arm="smf", params={"top_t": 100})


def test_a_hub_config_that_cannot_be_loaded_warns_and_skips(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")       # nothing answers (as without internet)
    spec = spec_of("fake-org/no-such-model-13", tmp_path, {"smf": {"fixed": {**SMF, "layers": [40]}}})
    warnings = preflight(spec)                                    # layers cannot be checked: a warning, no error
    assert len(warnings) == 1 and "fake-org/no-such-model-13" in warnings[0] and "skipped" in warnings[0], warnings
    # the checks that need no model still run
    bad = spec_of("fake-org/no-such-model-13", tmp_path, {"smf": {"fixed": {**SMF, "top_t": 65}}})
    assert "above the 64 slots" in refused(bad)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in model_limits("fake-org/no-such-model-13")[1][0]


def test_a_missing_local_model_directory(tmp_path):
    spec = spec_of(tmp_path / "nowhere", tmp_path, {"lora": {}})
    assert refused(spec).startswith(f"pf.yaml: model: {tmp_path / 'nowhere'}: no such directory")


def test_an_unbuilt_embedded_world_is_checked_from_its_config(tmp_path, monkeypatch):
    """model "world:": the world's model on the meta device from its WorldConfig; nothing is built."""
    monkeypatch.setenv("SMF_SWEEP_CACHE", str(tmp_path / "cache"))
    spec = spec_of("world:", tmp_path, {"smf": {"fixed": {**SMF, "layers": [1, 2]}}}, world={"num_layers": 2})
    msg = refused(spec)
    assert "layer 2 of arm smf beyond the model's 2 decoder layers" in msg and "embedded world" in msg, msg
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("config.json"))


def test_the_projects_specs_pass():
    preflight(load_spec(ROOT / "search_spaces" / "smoke.yaml"))
    warnings = preflight(load_spec(ROOT / "search_spaces" / "pareto.yaml"))   # a hub model: checked when reachable
    assert all("Qwen/Qwen2.5-0.5B-Instruct" in w for w in warnings)


def test_tune_and_trial_refuse_before_ray_starts(model_dir, tmp_path, capsys):
    import ray

    from smf_sweep import trial, tune

    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nmodel: {model_dir}\nstorage: {tmp_path}\ntrain: {{max_len: 256}}\n"
                    "methods:\n  smf:\n    fixed: {layers: [1, 2, 9], n_keys: 8, heads: 2, k: 4, d_k: 16, top_t: 6, "
                    "mode: zero_values}\n")
    assert tune.main([str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {spec}: methods.smf.fixed.layers: [1, 2, 9]: layer 9" in err and "4 decoder layers" in err, err
    assert trial.main([str(spec), "--method", "smf"]) == 2
    assert "layer 9" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "bad" / "tune").exists() \
        and not (tmp_path / "bad" / "spec.json").exists()
