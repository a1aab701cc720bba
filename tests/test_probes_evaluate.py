"""Model/tokenizer loading and the `python -m smf_sweep.evaluate` CLI on a tiny fixture world."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import make_world, tiny_model, tiny_tokenizer  # noqa: E402

from smf_sweep import evaluate  # noqa: E402
from smf_sweep.models import DEFAULT_MODEL, ModelLoadError, load_model, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tok = tiny_tokenizer()
    return make_world(tmp_path_factory.mktemp("w"), tok, tiny_model(len(tok), seed=1, max_positions=128))


def test_load_model_and_tokenizer(world):
    model = load_model(world / "model", device="cpu")
    assert not model.training and model.dtype == torch.float32 and model.config.vocab_size == 400
    assert load_model(str(world / "model"), dtype="bf16", device="cpu").dtype == torch.bfloat16
    tok = load_tokenizer(world / "model")
    assert tok.pad_token == "<|endoftext|>" and tok.padding_side == "right"
    assert DEFAULT_MODEL == "Qwen/Qwen2.5-0.5B-Instruct"


def test_tokenizer_without_pad_gets_one(tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg.get("pad_token") is None
    assert load_tokenizer(tmp_path).pad_token == "<|endoftext|>"


def test_clear_errors_for_bad_model_dirs(world, tmp_path):
    bad = tmp_path / "noweights"
    shutil.copytree(world / "model", bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"{bad} has no model files \(expected one of model.safetensors"):
        load_model(bad)
    (bad / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=rf"{bad} has no config.json"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(tmp_path / "missing" / "x")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(world / "model", dtype="int3")


def run_cli(capsys, *argv):
    assert evaluate.main(list(argv)) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return out, json.loads(out[-1])


@pytest.mark.parametrize("variant", ["study", "harness"])
def test_cli_json_last_line_has_all_three_probes(world, capsys, variant):
    out, res = run_cli(capsys, "--data", f"world:{world}", "--variant", variant, "--limit", "3", "--batch-size", "4",
                       "--no-progress", "--json")
    assert res["model"] == str(world / "model") and res["variant"] == variant
    assert set(res["probes"]) == {"medmcqa", "triviaqa", "wikitext"}
    for task, r in res["probes"].items():
        assert r["task"] == task and r["variant"] == variant and math.isfinite(r["value"]) and r["n"] > 0
        assert any(line.startswith(f"{task}:{variant}") for line in out)  # the table
    assert res["probes"]["medmcqa"]["n"] == 3 and 0 <= res["probes"]["medmcqa"]["value"] <= 1
    assert res["probes"]["wikitext"]["value"] > 1


def test_cli_one_probe_explicit_model_and_help(world, capsys):
    out, res = run_cli(capsys, "--model", str(world / "model"), "--data", f"world:{world}", "--probes", "wikitext",
                       "--no-progress", "--json")
    assert list(res["probes"]) == ["wikitext"] and res["probes"]["wikitext"]["metric"] == "ppl"
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--model", "--data", "world:DIR", "--probes", "--variant", "--limit", "--batch-size", "--json"):
        assert flag in help_text
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(world)])  # a bare path is neither hub nor world:DIR
    assert "world:DIR" in capsys.readouterr().err
    assert evaluate.parse_args(["--data", "hub"]).model == DEFAULT_MODEL
