"""What crosses Ray: one typed, frozen WorkerConfig per trial (smf_sweep/trial_config.py), built from the
spec by trial.worker_config. It survives pickling unchanged, refuses a wrong type at construction
naming the field, and carries no test hooks (tests wrap the worker function instead)."""
from __future__ import annotations

import dataclasses
import inspect
import pickle
from pathlib import Path

import pytest

from smf_sweep import worker
from smf_sweep.methods import METHODS
from smf_sweep.probes import ProbeSpec
from smf_sweep.spec import parse_spec
from smf_sweep.stage import TrainConfig
from smf_sweep.trial import run_trial, worker_config
from smf_sweep.trial_config import Sources, WorkerConfig


def _spec(tmp_path):
    return parse_spec({
        "name": "t", "storage": str(tmp_path), "threads_per_worker": 2, "probe_batch_size": 8,
        "train": {"lr": 1e-3, "max_steps": 4},
        "methods": {"lora": {"search": {"rank": {"choice": [4, 8]}}, "points": [{"rank": 8}]},
                    "smf_study": {"method": "smf", "fixed": {"selector": "tf", "retrofit": {"max_steps": 3}}}}})


@pytest.mark.parametrize("arm, params", [("lora", {"rank": 4, "lr": 2e-4}), ("smf_study", {"top_t": 64})])
def test_the_trials_config_round_trips_through_pickle(tmp_path, arm, params):
    cfg = worker_config(_spec(tmp_path), arm, params, seed=3)
    assert isinstance(cfg, WorkerConfig) and cfg == cfg
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back is not cfg
    assert WorkerConfig.from_dict(cfg.to_dict()) == cfg          # plain data, the same config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 4


def test_the_config_is_the_spec_at_the_params(tmp_path):
    spec = _spec(tmp_path)
    lora = worker_config(spec, "lora", {"rank": 4, "lr": 2e-4}, seed=3)
    assert (lora.model, lora.method, lora.arm, lora.seed) == (spec.model, "lora", "lora", 3)
    assert lora.method_cfg == METHODS["lora"].Config(rank=4) and lora.train.lr == 2e-4 and lora.train.max_steps == 4
    assert lora.data == Sources(task=spec.data.task, retrofit=spec.data.retrofit)
    assert {p.task for p in lora.probes} == {"medmcqa", "wikitext", "triviaqa"}
    assert (lora.probe_batch_size, lora.threads, lora.cache_dir) == (8, 2, spec.sweep_dir() / "cache")
    smf = worker_config(spec, "smf_study", {}, seed=0)
    assert (smf.method, smf.arm) == ("smf", "smf_study")
    assert smf.method_cfg.selector == "tf" and smf.method_cfg.retrofit.max_steps == 3


GOOD = dict(model="m", method="lora", method_cfg=METHODS["lora"].Config(), train=TrainConfig(), seed=0,
            data=Sources("world:/w", "world:/w"))
BAD = [
    ({"seed": "0"}, "WorkerConfig.seed: expected int"),
    ({"seed": True}, "WorkerConfig.seed: expected int"),
    ({"model": Path("m")}, "WorkerConfig.model: expected str"),
    ({"train": {"lr": 1e-3}}, "WorkerConfig.train: expected TrainConfig"),
    ({"data": {"task": "x", "retrofit": "y"}}, "WorkerConfig.data: expected Sources"),
    ({"probes": [ProbeSpec("medmcqa")]}, "WorkerConfig.probes: expected tuple"),
    ({"probes": ({"task": "medmcqa"},)}, "WorkerConfig.probes: expected tuple"),
    ({"cache_dir": "/tmp/c"}, "WorkerConfig.cache_dir: expected"),
    ({"threads": 1.5}, "WorkerConfig.threads: expected"),
    ({"method_cfg": METHODS["smf"].Config()}, "WorkerConfig.method_cfg: expected LoraConfig"),
    ({"method_cfg": {}}, "WorkerConfig.method_cfg: expected LoraConfig"),
    ({"method": "dora"}, "WorkerConfig.method: unknown method 'dora'; known: "),
    ({"probe_batch_size": 0}, "WorkerConfig.probe_batch_size: must be >= 1"),
]


@pytest.mark.parametrize("change, words", BAD, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(BAD)])
def test_a_wrong_type_fails_at_construction_naming_the_field(change, words):
    WorkerConfig(**GOOD)
    with pytest.raises((TypeError, ValueError)) as e:
        WorkerConfig(**{**GOOD, **change})
    assert words in str(e.value), str(e.value)
    with pytest.raises((TypeError, ValueError)):                  # replace() constructs too
        dataclasses.replace(WorkerConfig(**GOOD), **change)


def test_plain_data_is_typed_and_unknown_keys_are_refused():
    d = {"model": "m", "method": "lora", "method_cfg": {"rank": 4}, "seed": 0, "train": {"lr": 1e-3},
         "data": {"task": "t", "retrofit": "r"}, "probes": [{"task": "medmcqa", "limit": 8}], "cache_dir": "/c"}
    cfg = WorkerConfig.from_dict(d)
    assert cfg.method_cfg == METHODS["lora"].Config(rank=4) and cfg.train == TrainConfig(lr=1e-3)
    assert cfg.probes == (ProbeSpec("medmcqa", limit=8),) and cfg.cache_dir == Path("/c")
    for hook in ("fault", "debug_dir"):                            # the old test hooks are not fields
        with pytest.raises(TypeError, match=rf"WorkerConfig: unknown key\(s\) \['{hook}'\]"):
            WorkerConfig.from_dict({**d, hook: "x"})
    with pytest.raises(TypeError, match="WorkerConfig.seed: expected int"):
        WorkerConfig.from_dict({**d, "seed": "0"})
    with pytest.raises(ValueError, match="train: lr must be > 0"):
        WorkerConfig.from_dict({**d, "train": {"lr": 0}})


def test_test_hooks_live_in_the_tests_not_the_worker():
    src = inspect.getsource(worker)
    for name in ("\"fault\"", "debug_dir", "_crash_after_checkpoint", "_wait_for_report_queue", "_write_weights_digest",
                 "get_result_queue", "os._exit"):
        assert name not in src, name
    assert "train_fn" in inspect.signature(run_trial).parameters
