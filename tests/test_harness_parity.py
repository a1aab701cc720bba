"""The `harness` probe variants against lm-evaluation-harness itself (lm_eval 0.4.13, the dev extra):
its own task YAMLs, utils and HFLM on the embedded world's model and data, compared per item."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


# an in-process DeepSpeed run earlier in the session (full FT's one-rank group) leaves these set; a
# user's shell has none, and lm_eval would try to join that group's port
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def test_harness_variants_equal_lm_eval(world):
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    out = subprocess.run([sys.executable, "-m", "smf_sweep.parity", "--world", str(world),
                          "--json"], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode in (0, 1) and out.stdout.strip(), f"rc {out.returncode}: {out.stderr[-3000:]}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    checks = {(c["task"], c["what"]): c for c in report["checks"]}
    assert set(checks) == {("medmcqa", "acc"), ("medmcqa", "acc_norm"), ("triviaqa", "exact_match"),
                           ("wikitext", "word_perplexity"), ("wikitext", "byte_perplexity"),
                           ("wikitext", "bits_per_byte")}
    bad = [c for c in report["checks"] if not c["ok"]]
    assert not bad, "\n".join(out.stdout.splitlines()[-12:])
    assert checks[("medmcqa", "acc")]["worst"] < 1e-4          # per-choice log-likelihoods
    assert checks[("triviaqa", "exact_match")]["worst"] == 0   # every generated answer identical
    assert report["ok"] and out.returncode == 0


def test_triviaqa_harness_equals_lm_eval_under_qwens_generation_config(world):
    """Qwen2.5-Instruct's generation_config carries a repetition penalty (1.1) and two EOS ids, and
    lm_eval's HFLM generates under it. The world's model has neither, so the test above could not
    see a probe that ignored them (pure argmax, one EOS: 5 of 360 answers differed). Here a copy of
    the model gets a stronger penalty and a second EOS id; every answer must still be lm_eval's."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    gen = {"repetition_penalty": 1.3, "eos_token_id": [0, 1]}
    out = subprocess.run([sys.executable, "-m", "smf_sweep.parity", "--world", str(world), "--tasks", "triviaqa",
                          "--batch-size", "1", "--generation-config", json.dumps(gen), "--json"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode in (0, 1) and out.stdout.strip(), f"rc {out.returncode}: {out.stderr[-3000:]}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (check,) = report["checks"]
    assert check["task"] == "triviaqa" and check["worst"] == 0, "\n".join(out.stdout.splitlines()[-8:])
    assert report["ok"] and out.returncode == 0 and json.dumps(gen) in out.stdout
