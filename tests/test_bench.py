"""The GPU benchmark script runs (CPU, tiny config) and prints every case as JSON with numbers, so it
is ready for the next GPU session (benchmarks are not tests: this only keeps the script working)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_tiny_on_cpu():
    r = subprocess.run([sys.executable, "bench/gpu_bench.py", "--tiny", "--steps", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = {d["case"]: d for d in (json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{"))}
    for name in ("train_full", "train_lora", "train_smf"):
        assert "error" not in cases[name], cases[name]
        assert cases[name]["tok_per_s"] > 0 and cases[name]["step_ms"] > 0
    assert 0 < cases["train_smf"]["select_count_mask_share"] < 1
    assert cases["train_lora"]["trainable"] < cases["train_full"]["trainable"]
    for p in ("probe_medmcqa", "probe_triviaqa", "probe_wikitext"):
        assert cases[p]["n"] == 16 and cases[p]["seconds"] > 0
