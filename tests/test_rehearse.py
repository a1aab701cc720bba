"""The GPU rehearsal (`python -m smf_sweep.rehearse`, issue 12) keeps working between GPU sessions:
its tiny CPU run passes every check with ray, mlflow and optuna made unimportable (the GPU machine
has none of them), and its hard-coded model is Qwen2.5-0.5B-Instruct's architecture."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# ray / mlflow / optuna hidden from every finder, as if not installed (find_spec → None, import →
# ModuleNotFoundError), then the rehearsal runs as `python -m smf_sweep.rehearse`.
NO_RAY = r"""
import runpy, sys
BLOCKED = ("ray", "mlflow", "optuna")
class Hide:
    def __init__(self, inner): self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None
    def __getattr__(self, a): return getattr(self.inner, a)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv[0] = "smf_sweep.rehearse"
runpy.run_module("smf_sweep.rehearse", run_name="__main__", alter_sys=True)
"""


def test_qwen25_05b_config_is_the_real_architecture():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from smf_sweep.rehearse import QWEN25_05B, QWEN25_05B_PARAMS

    cfg = Qwen2Config(**QWEN25_05B)
    rope = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, rope, cfg.max_position_embeddings, cfg.tie_word_embeddings,
            cfg.rms_norm_eps) == (896, 24, 14, 2, 4864, 151936, 1e6, 32768, True, 1e-6)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())           # the tied embedding counted once
    assert n == QWEN25_05B_PARAMS == 494_032_768
    emb = model.get_input_embeddings().weight.numel()
    assert round((n - emb) / 1e9, 2) == 0.36                  # "0.36B non-embedding" (the model card)


@pytest.mark.slow
def test_rehearsal_tiny_cpu_passes_every_check_without_ray(tmp_path):
    out = tmp_path / "rehearsal.jsonl"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", NO_RAY, "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    recs = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
    stdout = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith('{"check"')]
    assert recs == stdout, "--out holds the same lines as stdout"
    checks = {d["check"]: d for d in recs}
    assert r.returncode == 0, (r.stderr[-3000:], [d for d in recs if not d["ok"]])
    expected = ["environment", "model", "base_probes", "smf_kl", "smf_tfidf", "lora", "full",
                *(f"null_{m}_{p}" for p in ("fp32", "bf16") for m in ("smf", "lora", "full")),
                "counters", "imports", "summary"]
    assert [d["check"] for d in recs] == expected
    assert all(d["ok"] for d in recs), [d for d in recs if not d["ok"]]
    for name in expected[7:13]:                                # the null trials
        d = checks[name]
        assert set(d["deltas"]) == {"medmcqa", "wikitext", "triviaqa"}
        assert all(abs(v) <= 1e-3 for v in d["deltas"].values()), d
        assert d["precision"] == name.rsplit("_", 1)[1] and d["steps"] == 2
    for name in ("smf_kl", "smf_tfidf", "lora", "full"):
        d = checks[name]
        assert d["steps"] == 4 and d["checkpoints"], d
        assert d["train/examples_seen"] == 4 * d["train/effective_batch"] == 64
    assert checks["smf_tfidf"]["retrofit_shared"] is True
    assert checks["imports"]["loaded"] == []                  # hidden: nothing could load them
    assert checks["summary"]["failed"] == [] and checks["summary"]["checks"] == len(expected) - 1


def test_rehearsal_help_and_unknown_world(tmp_path):
    r = subprocess.run([sys.executable, "-m", "smf_sweep.rehearse", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--tiny" in r.stdout and "null_" in r.stdout
    r = subprocess.run([sys.executable, "-m", "smf_sweep.rehearse", "--tiny", "--world", str(tmp_path), "--only",
                        "model"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no data/ directory" in r.stderr
