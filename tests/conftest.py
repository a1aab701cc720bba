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


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from smf_sweep.world import TINY, build_world
    return build_world(TINY, tmp_path_factory.mktemp("worlds") / "tiny", progress=False)
