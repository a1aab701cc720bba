"""Golden values (issue 13): the smoke spec's study points, shortened to 24 optimizer steps and run
in-process on the embedded world, give these objectives to the printed digit on a CPU. Any change
to training or probing that moves them is a visible, deliberate diff of tests/golden/smoke.json.
The digits are those of one build of the world (the file's "world": its key and content hash, and
the machine): a machine whose CPU kernels build other weights skips, saying so.

    SMF_SWEEP_UPDATE_GOLDEN=1 pytest tests/test_golden.py     # after a deliberate change: rewrite
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from smf_sweep.spec import load_spec, resolve_world
from smf_sweep.trial import _compute_base, outcome, probe_specs, trial_params, worker_config
from smf_sweep.worker import train_worker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "smoke.json"
STEPS = 24
KEYS = ("medmcqa_gain_pp", "forgetting", "medmcqa/after", "triviaqa/after", "wikitext/after")


def _printed(out: dict) -> dict:
    """What `python -m smf_sweep.trial` prints: probe values to 4 significant digits, objectives to 2 decimals."""
    return {k: (round(out[k], 2) if "/" not in k else float(f"{out[k]:.4g}")) for k in KEYS}


@pytest.fixture(scope="module")
def smoke(world, tmp_path_factory):
    spec = resolve_world(load_spec(ROOT / "search_spaces" / "smoke.yaml",
                                   [f"storage={tmp_path_factory.mktemp('golden')}"]), progress=False)
    base = _compute_base(spec.model, probe_specs(spec), spec.probe_batch_size, False, spec.train["precision"])
    return spec, base


@pytest.mark.parametrize("arm", ["smf", "lora", "full"])
def test_smoke_points_give_their_golden_objectives(smoke, arm, world, recorded_build):
    """Exact on the build of the world the values were recorded on (its content hash, in the file);
    on a machine whose CPU kernels built other weights the test says so and skips (conftest.py)."""
    from smf_sweep.calibrate import machine

    spec, base = smoke
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    update = bool(os.environ.get("SMF_SWEEP_UPDATE_GOLDEN"))
    if not update:
        assert arm in golden, f"no golden values for {arm}: run with SMF_SWEEP_UPDATE_GOLDEN=1"
        recorded_build(golden.get("world", {}), f"tests/golden/{GOLDEN.name}")
    params = trial_params(spec, arm, [f"max_steps={STEPS}"])
    final = train_worker(worker_config(spec, arm, params, spec.seeds[0]), reporter=lambda m, c: None)
    after = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("after/") and "." not in k}
    got = _printed(outcome(spec, base, after))
    if update:
        info = json.loads((world / "world.json").read_text())
        golden[arm] = got
        golden["world"] = {"key": info["key"], "content_hash": info["content_hash"], "built_on": machine()}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert got == golden[arm], f"{arm} moved: {got} vs golden {golden[arm]}"
