"""Spec validation: every shipped spec parses; broken specs fail with a message naming the file, the
key and what is allowed — before Ray starts (no test here imports or starts Ray)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from smf_sweep.spec import SpecError, build_configs, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_spec_parses(path):
    spec = load_spec(path)
    assert spec.methods
    for name, ms in spec.methods.items():
        for pt in ms.points or [{}]:
            mcfg, tcfg = build_configs(spec, name, pt)
            assert tcfg.lr > 0


def test_shipped_specs_cover_the_study():
    names = {p.stem for p in SHIPPED}
    assert {"pareto", "smoke"} <= names
    for stem in ("pareto", "smoke"):
        spec = load_spec(ROOT / "search_spaces" / f"{stem}.yaml")
        assert {spec.algorithm(a) for a in spec.methods} == {"smf", "lora", "full"}
        assert set(spec.methods["smf"].search["selector"].values) >= {"kl", "tfidf"}
        assert [o.name for o in spec.objectives] == ["medmcqa_gain_pp", "forgetting"]


def test_pareto_points_are_the_studys_settings():
    spec = load_spec(ROOT / "search_spaces" / "pareto.yaml")
    assert spec.model == "Qwen/Qwen2.5-0.5B-Instruct"
    smf = {p["selector"]: p for p in spec.methods["smf"].points}
    assert smf["kl"]["top_t"] == 512 and smf["kl"]["n_keys"] == 128 and smf["kl"]["lr"] == 5e-4
    assert spec.methods["lora"].points[0] == {"rank": 16, "alpha": 32, "lr": 2e-4}
    assert spec.methods["full"].points[0]["lr"] == 5e-5


def test_pareto_study_arm_is_the_studys_recipe_and_ours_is_separate():
    """The study's points run the study's code path exactly (SMF_SPEC §4, §7); ours and
    zero_values are separate, named arms at the same points."""
    spec = load_spec(ROOT / "search_spaces" / "pareto.yaml")
    study = [build_configs(spec, "smf_study", pt)[0] for pt in spec.methods["smf_study"].points]
    assert {m.selector for m in study} == {"kl", "tfidf"}
    for m in study:
        assert (m.optimizer, m.count_padding, m.granularity, m.mode) == ("adamw_leaky", True, "micro", "additive")
        assert (m.n_keys, m.k, m.top_t, m.layers) == (128, 16, 512, (6, 12, 18))
    ours = build_configs(spec, "smf", spec.methods["smf"].points[0])[0]
    assert (ours.optimizer, ours.count_padding, ours.mode) == ("adamw", False, "additive")
    zero = build_configs(spec, "smf_zero", spec.methods["smf_zero"].points[0])[0]
    assert zero.mode == "zero_values" and not zero.needs_retrofit
    assert spec.train["effective_batch"] == 16 and spec.train["precision"] == "bf16"
    assert not spec.train["append_eos"]


def test_an_arm_names_a_registered_method(tmp_path):
    raw = {"name": "t", "model": str(tmp_path), "storage": str(tmp_path), "data": {"task": str(tmp_path),
           "retrofit": str(tmp_path), "triviaqa": str(tmp_path), "wikitext": str(tmp_path)},
           "methods": {"smf_x": {"fixed": {"mode": "zero_values"}}}}
    with pytest.raises(SpecError, match=r"methods\.smf_x: unknown method 'smf_x'.*method: smf"):
        parse_spec(raw)
    raw["methods"]["smf_x"]["method"] = "smff"
    with pytest.raises(SpecError, match=r"methods\.smf_x\.method: unknown method 'smff'"):
        parse_spec(raw)
    raw["methods"]["smf_x"]["method"] = "smf"
    spec = parse_spec(raw)
    assert spec.algorithm("smf_x") == "smf" and build_configs(spec, "smf_x", {})[0].mode == "zero_values"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
model: "world:"
data: {task: "world:", retrofit: "world:", triviaqa: "world:", wikitext: "world:"}
methods:
  lora: {search: {lr: {loguniform: [1.0e-4, 1.0e-3]}}}
"""

BROKEN = [  # (yaml to merge into BASE, words the message must contain)
    ({"epochs_typo": 3}, ["bad.yaml", "epochs_typo", "allowed", "methods"]),
    ({"methods": {"dora": {}}}, ["methods.dora", "unknown method", "full, lora, smf"]),
    ({"methods": {"lora": {"search": {"lr": {"loguniform": [1e-3, 1e-4]}}}}}, ["methods.lora.search.lr", "low", "< high"]),
    ({"methods": {"lora": {"search": {"lr": {"loguniform": [0, 1e-4]}}}}}, ["methods.lora.search.lr", "low > 0"]),
    ({"methods": {"lora": {"search": {"rank": {"gauss": [0, 1]}}}}}, ["search.rank", "unknown parameter type", "choice"]),
    ({"methods": {"lora": {"search": {"lr": {"gauss": [0, 1]}}}}}, ["search.lr", "a search parameter is one of"]),
    ({"methods": {"smf": {"search": {"selector": {"choice": ["kl", "bm25"]}}}}},
     ["methods.smf.search.selector", "bm25", "kl", "tfidf"]),
    ({"methods": {"lora": {"fixed": {"rnk": 8}}}}, ["methods.lora.fixed.rnk", "allowed", "rank"]),
    ({"methods": {"lora": {"fixed": {"rank": 0}}}}, ["methods.lora.fixed", "rank must be >= 1"]),
    ({"methods": {"full": {"fixed": {"zero_stage": 4}}}}, ["methods.full.fixed", "zero_stage"]),
    ({"probes": {"mmlu": {}}}, ["probes.mmlu", "unknown probe", "medmcqa"]),
    ({"probes": {"medmcqa": {"variant": "fancy"}}}, ["probes.medmcqa.variant", "study, harness"]),
    ({"data": {"task": "/no/such/medmcqa.jsonl"}}, ["data.task", "no such file", "/no/such/medmcqa.jsonl"]),
    ({"objectives": [{"name": "accuracy", "mode": "max"}]}, ["objectives[0].name", "medmcqa_gain_pp"]),
    ({"objectives": [{"name": "forgetting", "mode": "up"}]}, ["objectives[0].mode", "max or min"]),
    ({"search": {"trials": "many"}}, ["search.trials", "expected an integer"]),
    ({"train": {"loss_on": "prompt"}}, ["train", "loss_on"]),
    ({"methods": {"lora": {"points": [{"rank": 8}]}}}, ["points[0].rank", "searched parameters only"]),
    ({"storage": "s3://bucket/sweeps"}, ["storage", "'s3://bucket/sweeps' is a URI", "every node sees"]),
    ({"methods": {"full": {"resources": {"workers": 2, "gpus_per_worker": 0.5}}}},
     ["methods.full.resources", "2 workers with 0.5 GPU each", "NCCL"]),
]


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


@pytest.mark.parametrize("patch, words", BROKEN, ids=[str(i) for i in range(len(BROKEN))])
def test_broken_specs_name_file_key_and_allowed(tmp_path, patch, words):
    raw = _deep_merge(yaml.safe_load(BASE), patch)
    if "epochs_typo" in patch:                           # a typo inside a method's block
        raw = yaml.safe_load(BASE)
        raw["methods"]["lora"]["epochs_typo"] = 3
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_set_overrides_and_yaml_errors(tmp_path):
    path = _write(tmp_path, BASE)
    spec = load_spec(path, ["search.trials=3", "methods.lora.fixed.rank=8", "train.lr=0.01"])
    assert spec.search.trials == 3 and spec.methods["lora"].fixed["rank"] == 8 and spec.train["lr"] == 0.01
    with pytest.raises(SpecError, match="expected key=value"):
        load_spec(path, ["search.trials"])
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="syntax.yaml: not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_exponents_without_a_dot_are_floats(tmp_path):
    """PyYAML alone reads 1e-4 as the string '1e-4'; specs, --set and --param read it as a float."""
    from smf_sweep.spec import load_yaml
    from smf_sweep.trial import trial_params

    assert [load_yaml(x) for x in ("1e-4", "3E5", "-2.5e-3", ".5", "7", "1e-4x", "1_000")] == \
        [1e-4, 3e5, -2.5e-3, 0.5, 7, "1e-4x", 1000]
    path = _write(tmp_path, BASE)
    spec = load_spec(path, ["train.lr=1e-4"])
    assert spec.train["lr"] == 1e-4 and isinstance(spec.train["lr"], float)
    assert trial_params(spec, "lora", ["lr=2e-4"])["lr"] == 2e-4
    with pytest.raises(SpecError, match=r"--param lr=fast for method lora"):
        trial_params(spec, "lora", ["lr=fast"])
    with pytest.raises(SpecError, match="expected key=value"):
        trial_params(spec, "lora", ["lr"])


def test_cli_rejects_bad_spec_before_ray(tmp_path):
    import subprocess
    path = _write(tmp_path, BASE.replace("lora:", "dora:"))
    r = subprocess.run([sys.executable, "-m", "smf_sweep.tune", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "unknown method 'dora'" in r.stderr and "bad.yaml" in r.stderr
    assert "Started a local Ray instance" not in r.stderr + r.stdout


def test_unreachable_tracking_server_is_a_clear_error(tmp_path):
    import subprocess
    path = _write(tmp_path, BASE)
    r = subprocess.run([sys.executable, "-m", "smf_sweep.tune", str(path), "--tracking-uri", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "MLflow server http://127.0.0.1:9 is unreachable" in r.stderr
