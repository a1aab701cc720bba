"""One rule for hub ids (smf_sweep.hub.is_hub_id, used by the model loader, the data sources and the
spec's path checks) and one parser for `key=value` flags (spec.parse_assignment: --set and --param)."""
from __future__ import annotations

import pytest

from smf_sweep.data import DatasetSpec, resolve_source
from smf_sweep.data.sources import DataError
from smf_sweep.hub import is_hub_id
from smf_sweep.models import ModelLoadError, _local_dir
from smf_sweep.spec import SpecError, load_spec, parse_assignment

HUB_IDS = [
    ("Qwen/Qwen2.5-0.5B-Instruct", True),             # owner/name
    ("openlifescienceai/medmcqa", True),
    ("EleutherAI/wikitext_document_level", True),
    ("wikitext", True),                               # a bare (canonical) id
    ("gpt2", True),
    ("/data/medmcqa", False),                         # local paths
    ("./medmcqa", False),
    ("../x/y", False),
    ("~/data/x.jsonl", False),
    (".hidden", False),
    ("world:", False),                                # the embedded world
    ("world:/tmp/w", False),
    ("a//b", False),                                  # not valid ids
    ("a/b/c", False),
    ("--x", False),
    ("a--b", False),
    ("a..b", False),
    ("x.git", False),
    ("with space", False),
    ("back\\slash", False),
    ("", False),
    ("x" * 97, False),
]


@pytest.mark.parametrize("s, hub", HUB_IDS, ids=[repr(s)[:30] for s, _ in HUB_IDS])
def test_the_hub_id_rule(s, hub):
    assert is_hub_id(s) is hub


def test_an_existing_relative_path_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("medmcqa") and is_hub_id("data/medmcqa")
    (tmp_path / "data" / "medmcqa").mkdir(parents=True)
    assert is_hub_id("medmcqa")                       # a different name, still absent
    assert not is_hub_id("data") and not is_hub_id("data/medmcqa")


@pytest.mark.parametrize("s, hub", [(s, h) for s, h in HUB_IDS if s and not s.startswith("world:")],
                         ids=[repr(s)[:30] for s, _ in HUB_IDS if s and not s.startswith("world:")])
def test_the_three_users_apply_the_same_rule(tmp_path, s, hub):
    """The data sources pass a hub id through and call anything else that is not there a missing
    path; the model loader the same; the spec skips the existence check for hub ids only."""
    spec = DatasetSpec("X", "owner/x", "x", ())
    if hub:
        assert resolve_source(s, spec) == ("hub", s)
        assert _local_dir(s, ("model.safetensors",), "model") == s
    else:
        with pytest.raises(DataError, match="no such file or directory"):
            resolve_source(s, spec)
        with pytest.raises(ModelLoadError, match="not a model directory"):
            _local_dir(s, ("model.safetensors",), "model")
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nmethods: {lora: {}}\n")
    if hub:
        assert load_spec(path, [f"data.task={s}"]).data.task == s
    else:
        with pytest.raises(SpecError, match="data.task: no such file or directory"):
            load_spec(path, [f"data.task='{s}'"])


# ---- --set and --param: one parser --------------------------------------------------------------------
VALUES = [
    ("lr=1e-4", ("lr", 1e-4)),                        # YAML 1.2: an exponent without a dot is a float
    ("lr=3E5", ("lr", 3e5)),
    ("wd=-2.5e-3", ("wd", -2.5e-3)),
    ("lr=0.01", ("lr", 0.01)),
    ("top_t=64", ("top_t", 64)),
    ("layers=[1, 2]", ("layers", [1, 2])),
    ("append_eos=true", ("append_eos", True)),
    ("max_steps=null", ("max_steps", None)),
    ("selector=kl", ("selector", "kl")),
    ("retrofit={max_steps: 6}", ("retrofit", {"max_steps": 6})),
    (" lr =1e-4", ("lr", 1e-4)),                      # the key is stripped
    ("tag=a=b", ("tag", "a=b")),                      # the first = splits
    ("version=1e-4x", ("version", "1e-4x")),
]


@pytest.mark.parametrize("text, kv", VALUES, ids=[t for t, _ in VALUES])
def test_set_and_param_read_values_the_same_way(tmp_path, text, kv):
    from smf_sweep.trial import trial_params

    assert parse_assignment(text, "--set") == parse_assignment(text, "--param") == kv
    assert type(parse_assignment(text, "--set")[1]) is type(kv[1])
    if kv[0] == "lr":                                 # both flags, end to end
        path = tmp_path / "s.yaml"
        path.write_text("name: t\nmethods: {lora: {}}\n")
        spec = load_spec(path, [f"train.{text.strip()}"])
        assert spec.train["lr"] == kv[1] and isinstance(spec.train["lr"], float)
        assert trial_params(spec, "lora", [text])["lr"] == kv[1]


@pytest.mark.parametrize("text, words", [
    ("lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("lr=[1, 2", "the value is not valid YAML"),
    ("lr={a: ", "the value is not valid YAML"),
])
@pytest.mark.parametrize("flag", ["--set", "--param"])
def test_bad_assignments_name_the_flag(flag, text, words):
    with pytest.raises(SpecError) as e:
        parse_assignment(text, flag)
    assert str(e.value).startswith(f"{flag} ") and words in str(e.value), str(e.value)


def test_bad_assignments_through_load_spec_and_trial_params(tmp_path):
    from smf_sweep.trial import trial_params

    path = tmp_path / "s.yaml"
    path.write_text("name: t\nmethods: {lora: {}}\n")
    with pytest.raises(SpecError, match=r"^--set search\.trials=\[1: the value is not valid YAML"):
        load_spec(path, ["search.trials=[1"])
    spec = load_spec(path)
    with pytest.raises(SpecError, match=r"^--param lr=\[1: the value is not valid YAML"):
        trial_params(spec, "lora", ["lr=[1"])
    with pytest.raises(SpecError, match=r"^--param 'lr': expected key=value"):
        trial_params(spec, "lora", ["lr"])
