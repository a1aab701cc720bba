"""Shared fixtures. Tests run real components (Ray, MLflow, DeepSpeed, peft) on tiny inputs.

- torch uses one intra-op thread in tests: on a shared 2-core machine torch's default of 2 threads
  makes each tiny op ~4000× slower (thread hand-off dominates; see docs/pitfalls.md).
- `world` is the embedded world (built once per machine, cached by content under
  $SMF_SWEEP_CACHE, ~6 min on 2 cores the first time); `tiny_world` builds in seconds for tests of
  machinery that does not need a model that learned anything.
"""
from __future__ import annotations


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def world():
    """The default embedded world (smf_sweep.world.WorldConfig()), built if needed."""
    from smf_sweep.world import WorldConfig, build_world
    return build_world(WorldConfig(), progress=False)


def _on(m: dict | None) -> str:
    return f"on {m['cpu']}, torch {m['torch']}, {m['torch_cpu_capability']} kernels" if m else "machine not recorded"


@pytest.fixture(scope="session")
def recorded_build(world):
    """check(recorded, what): skip, saying why, unless this machine built the default world with the
    weights a record was made on. The world's key (config and generator code) must match: a changed
    world fails. Its content hash (weights and data) may not: the build is deterministic on one kind
    of machine, and CPU kernels of another instruction set round differently (smf_sweep.calibrate.
    machine). A record's exact digits hold only on the build it was made on."""
    import json

    from smf_sweep.calibrate import machine

    info = json.loads((world / "world.json").read_text())

    def check(recorded: dict, what: str) -> None:
        assert recorded.get("key") == info["key"], \
            f"{what} is of another default world (key {recorded.get('key')}, this one {info['key']}): record it again"
        if recorded.get("content_hash") != info["content_hash"]:
            made = (f"a build whose weights hash to {recorded['content_hash'][:12]} ({_on(recorded.get('built_on'))})"
                    if recorded.get("content_hash") else "a build it does not name")
            pytest.skip(f"{what} was made on {made}; this machine built {info['content_hash'][:12]} "
                        f"({_on(machine())}): CPU kernels of another kind, or another torch, round differently, "
                        "so its exact digits do not apply here")
    return check


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from smf_sweep.world import TINY, build_world
    return build_world(TINY, tmp_path_factory.mktemp("worlds") / "tiny", progress=False)
