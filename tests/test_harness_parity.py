"""The `harness` probe variants against lm-evaluation-harness itself (lm_eval 0.4.13, the dev extra):
its own task YAMLs, utils and HFLM on the embedded world's model and data, compared per item."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_harness_variants_equal_lm_eval(world):
    out = subprocess.run([sys.executable, "-m", "smf_sweep.parity", "--world", str(world),
                          "--json"], capture_output=True, text=True, timeout=900)
    assert out.returncode in (0, 1), out.stderr[-3000:]
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
