"""The embedded world: deterministic, cached by content, in the real schemas, with a tokenizer that
loads exactly as it was trained, and — on the default world — the targets that make the science
meaningful (the base model knows the general facts, not the medical ones; full finetuning can learn
the medical task)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from smf_sweep.data import load_medmcqa, load_oasst1, load_triviaqa, load_wikitext, load_wikitext_documents
from smf_sweep.world import TINY, build_world, content_hash, world_key


def test_deterministic_two_builds_same_hash(tmp_path, tiny_world):
    again = build_world(TINY, tmp_path / "again", progress=False)
    a, b = json.loads((tiny_world / "world.json").read_text()), json.loads((again / "world.json").read_text())
    assert a["key"] == b["key"] == world_key(TINY)
    assert a["content_hash"] == b["content_hash"] == content_hash(again)


def test_cached_by_content(tmp_path, tiny_world):
    stamp = (tiny_world / "world.json").stat().st_mtime_ns
    assert build_world(TINY, tiny_world, progress=False) == tiny_world
    assert (tiny_world / "world.json").stat().st_mtime_ns == stamp            # reused, not rebuilt
    with pytest.raises(FileExistsError, match="holds another world"):
        build_world(TINY.replace(seed=1), tiny_world, progress=False)
    assert world_key(TINY.replace(seed=1)) != world_key(TINY)


def test_datasets_in_the_real_schemas(tiny_world):
    src = f"world:{tiny_world}"
    med = load_medmcqa(src, "train")
    assert {"id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp", "subject_name"} <= set(med.column_names)
    assert set(load_medmcqa(src, "train", single_only=False)["choice_type"]) == {"single", "multi"}
    tq = load_triviaqa(src)
    assert {"question", "question_id", "answer"} <= set(tq.column_names)
    assert tq[0]["answer"]["value"] in tq[0]["answer"]["aliases"]
    assert "text" in load_wikitext(src, "test").column_names
    assert "page" in load_wikitext_documents(src).column_names
    oa = load_oasst1(src, "train")
    assert set(oa["role"]) == {"assistant"} and all(r in (0, 1) for r in oa["rank"]) and set(oa["lang"]) == {"en"}


def test_tokenizer_loads_exactly_as_trained(tiny_world):
    from tokenizers import Tokenizer

    from smf_sweep.models import load_tokenizer
    tok = load_tokenizer(tiny_world / "model")
    raw = Tokenizer.from_file(str(tiny_world / "model" / "tokenizer.json"))
    text = "\n\n".join(r["text"] for r in load_wikitext(f"world:{tiny_world}", "test"))
    text += " It was 1715, the  Glass Tower.\nDon't"
    assert tok(text, add_special_tokens=False)["input_ids"] == raw.encode(text, add_special_tokens=False).ids


def test_medical_validation_tests_train_facts_with_new_options(tiny_world):
    src = f"world:{tiny_world}"
    train, val = load_medmcqa(src, "train"), load_medmcqa(src, "validation")
    opts = lambda r: [r["opa"], r["opb"], r["opc"], r["opd"]]  # noqa: E731
    seen = {}
    for r in train:
        fact = (r["question"], opts(r)[r["cop"]])
        seen.setdefault(fact, set()).add((frozenset(opts(r)), r["cop"]))
    for r in val:
        fact = (r["question"], opts(r)[r["cop"]])
        assert fact in seen, f"validation fact not taught in train: {fact}"
        assert (frozenset(opts(r)), r["cop"]) not in seen[fact], "same options and answer position as a train item"


def test_medical_facts_are_not_in_pretraining_text(tiny_world):
    src = f"world:{tiny_world}"
    diseases = {r["question"].split(" for ")[-1].rstrip("?") for r in load_medmcqa(src, "train")
                if r["question"].startswith("Which drug is the treatment")}
    general = " ".join(load_wikitext(src, "train")["text"]) + " ".join(load_oasst1(src, "train")["text"])
    assert diseases and not [d for d in diseases if d in general]


# The first worlds' behaviour: both fresh options off (a memorised corpus; README, issue 15).
FIRST = TINY.replace(fresh_articles=False, fresh_general=False)


def test_fresh_articles_renders_new_articles_every_epoch_and_keeps_old_keys(tmp_path):
    """`fresh_articles` (default): pretraining reads new renders of every article each epoch (the
    facts, in the templates' new combinations) instead of the train split's; the build still passes
    its checks. Off, the config (and so the key of a world built before the field) is what it was,
    and a recorded config reads back as the config it was made from."""
    from smf_sweep.world.build import _documents, fresh_texts, write_data
    from smf_sweep.world.config import WorldConfig

    on = FIRST.replace(fresh_articles=True)
    assert "fresh_articles" not in FIRST.to_dict() and on.to_dict()["fresh_articles"]
    assert WorldConfig.from_dict(FIRST.to_dict()) == FIRST and WorldConfig.from_dict(TINY.to_dict()) == TINY
    assert WorldConfig(**FIRST.to_dict()) != FIRST, "today's defaults are not the first worlds'"
    old, new = fresh_texts(FIRST), fresh_texts(on)
    copies = len(old(0))
    assert copies == FIRST.copy_texts and new(0)[:copies] == old(0), "the copy texts are the same stream"
    arts = [a for a in new(0)[copies:]]
    n_entities = TINY.n_countries + TINY.n_cities + TINY.n_people
    assert len(arts) == TINY.article_renders * n_entities and all(a.startswith("= ") for a in arts)
    assert new(1)[copies:] != arts and new(0)[copies:] == arts, "new every epoch, the same for the same epoch"
    assert fresh_texts(on, stream=1000)(0)[copies:] != arts, "the calibration's stream is another"
    train = _documents(load_wikitext(f"world:{build_world(on, tmp_path / 'on', progress=False)}", "train")
                       ["text"])
    static = write_data(on, tmp_path / "data")["pretrain_docs"]
    assert not set(train) & set(static), "the train split's articles are not repeated every epoch"
    assert set(train) <= set(write_data(FIRST, tmp_path / "data0")["pretrain_docs"])


def test_fresh_general_renders_the_generated_general_texts_anew_every_epoch(tmp_path):
    """`fresh_general`: the general multiple-choice questions, general-medicine texts and OASST replies
    come new each epoch (fresh_texts) instead of from the static corpus; only the trivia lines (and,
    without fresh_articles, the train articles) repeat. The tokenizer learns from the same texts."""
    from smf_sweep.world.build import fresh_texts, write_data

    on = FIRST.replace(fresh_general=True)
    assert "fresh_general" not in FIRST.to_dict() and on.to_dict()["fresh_general"]
    static_on, static_off = (write_data(c, tmp_path / str(i)) for i, c in enumerate((on, FIRST)))
    assert static_on["tokenizer_texts"] == static_off["tokenizer_texts"]
    exam = lambda docs: [d for d in docs if d.startswith("Exam question:")]  # noqa: E731
    assert exam(static_off["pretrain_docs"]) and not exam(static_on["pretrain_docs"])
    assert set(static_on["pretrain_docs"]) < set(static_off["pretrain_docs"])
    f = fresh_texts(on)
    assert exam(f(0)) and exam(f(0)) != exam(f(1)) and exam(f(0)) == exam(fresh_texts(on)(0))
    assert len(fresh_texts(FIRST)(0)) == FIRST.copy_texts, "off: the copy texts alone"
    assert len(f(0)) > FIRST.copy_texts + len(exam(static_off["pretrain_docs"]))


def test_world_cli_sets_config_fields_and_refuses_unknown_or_mistyped_ones(capsys):
    from smf_sweep.world.__main__ import main
    from smf_sweep.world.build import default_world_dir
    from smf_sweep.world.config import WorldConfig

    assert main(["path", "--set", "fresh_articles=false", "--set", "lr=1e-3", "--set", "steps=900"]) == 0
    assert capsys.readouterr().out.strip() == str(default_world_dir(WorldConfig(fresh_articles=False, steps=900)))
    for bad, says in (("fresh_article=true", "expected FIELD=VALUE"), ("seed=1", "the seed is --seed"),
                      ("steps=2.5", "steps is a int"), ("fresh_articles=1", "fresh_articles is a bool"),
                      ("steps", "expected FIELD=VALUE")):
        assert main(["path", "--set", bad]) == 2
        assert says in capsys.readouterr().err


# ---- the default world: the targets --------------------------------------------------------------
@pytest.mark.slow
def test_default_world_base_model_targets(world):
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.probes import run_probes

    info = json.loads((world / "world.json").read_text())
    assert info["build_seconds"] < 15 * 60
    src = f"world:{world}"
    res = run_probes(load_model(world / "model"), load_tokenizer(world / "model"),
                     [{"task": t, "source": src, "limit": 0} for t in ("medmcqa", "triviaqa", "wikitext")], batch_size=32)
    assert res["triviaqa"].value >= 0.60, res["triviaqa"]
    assert res["medmcqa"].value <= 0.40, res["medmcqa"]
    assert res["wikitext"].value < 100
    for k, r in res.items():              # world.json's numbers are what the probes give
        assert abs(info["base_probes"][k] - r.value) < 1e-3


@pytest.mark.slow
def test_default_world_full_finetuning_learns_the_task(world, tmp_path):
    """The task is learnable: full FT at the top of the calibration's range (lr 1e-3, where it gains
    +54.6 pp at the smoke budget; at 3e-4 it gains only +11 pp on this world) passes 60 %."""
    from smf_sweep.worker import train_worker

    src = f"world:{world}"
    final = train_worker({
        "model": str(world / "model"), "method": "full", "method_cfg": {}, "seed": 0, "cache_dir": str(tmp_path),
        "train": {"lr": 1e-3, "epochs": 6, "micro_batch_size": 16, "effective_batch": 16, "max_len": 512, "warmup_steps": 10,
                  "log_every": 50},
        "data": {"task": src, "retrofit": src}, "threads": 2,
        "probes": [{"task": "medmcqa", "source": src, "limit": 0}]}, reporter=lambda m, c: None)
    assert final["after/medmcqa"] >= 0.60, final


# ---- the default world: its calibration (issue 15; smf_sweep/calibrate.py) -------------------------
CALIBRATION = Path(__file__).resolve().parent / "golden" / "world_calibration.json"


def test_default_world_calibration_is_recorded_for_this_world():
    """The repository's record is of the default world as the code builds it now: a changed
    generator or config must be calibrated again (python -m smf_sweep.calibrate --record …)."""
    from smf_sweep.world import WorldConfig
    from smf_sweep.world.build import world_key

    rec = json.loads(CALIBRATION.read_text())
    assert rec["world_key"] == world_key(WorldConfig()), \
        "the default world changed: python -m smf_sweep.calibrate --write --record tests/golden/world_calibration.json"


# The build the machines since 2026-12-01 make (tests/golden/world_calibration.json's content hash) fails
# converged base narrowly: continuing pretraining at lr 1e-3, seed 0, moved WikiText by 3.7 % (rule: 3 %;
# seed 1: 0.4 %); the earlier build passed (2.6 %, 1.5 %). A known failure of the instrument, shown as
# one (README, calibration); strict: a record that passes again turns this into a failure to notice.
CONVERGED_BASE_FAILS = pytest.mark.xfail(strict=True, reason="this build's converged base: WikiText +3.7 % at lr 1e-3 "
                                         "seed 0 (rule ≤ 3 %)")


@pytest.mark.parametrize("control", ["no_spill_over", "gradual_forgetting", "resolution", "build",
                                     pytest.param("converged_base", marks=CONVERGED_BASE_FAILS)])
def test_default_world_passes_its_calibration_control(control):
    """Each control as recorded for this world passes (the first worlds failed converged base; their
    records, kept for the README, say so: the test above; this build fails it by 0.7 pp: xfail)."""
    cal = json.loads(CALIBRATION.read_text())["calibration"][control]
    numbers = {k: v for k, v in cal.items() if k not in ("passed", "runs")}
    assert cal["passed"], numbers


def test_the_earlier_build_of_the_default_world_is_kept_for_the_readme():
    """The record made on the machines before 2026-12-01, which built other weights: of today's default
    world's key, naming no build (it predates recording one), its controls as they were."""
    from smf_sweep.world import WorldConfig
    from smf_sweep.world.build import world_key

    rec = json.loads(CALIBRATION.with_name("world_calibration_previous_build.json").read_text())
    assert rec["world_key"] == world_key(WorldConfig()) and rec["content_hash"] is None and "2026-11-30" in rec["note"]
    assert all(c["passed"] for n, c in rec["calibration"].items() if n not in ("how", "format_shift"))


# Earlier worlds' records, kept because the README quotes them: (file, the config it is of, the
# overrides that reproduce it with today's defaults).
EARLIER = [("world_calibration_memorised.json", dict(fresh_articles=False, fresh_general=False),
            ["world.fresh_articles=false", "world.fresh_general=false"]),
           ("world_calibration_fresh_articles.json", dict(fresh_articles=True, fresh_general=False),
            ["world.fresh_general=false"])]


@pytest.mark.parametrize("name,fields,overrides", EARLIER)
def test_earlier_worlds_calibrations_are_recorded_for_their_configs(name, fields, overrides):
    """The README's earlier worlds (the first default, memorised; fresh_articles alone): each record is
    of its config, says how to reproduce it now, and which controls it passes (converged base: neither)."""
    from smf_sweep.world import WorldConfig

    rec = json.loads(CALIBRATION.with_name(name).read_text())
    assert WorldConfig.from_dict(rec["config"]) == WorldConfig(**fields)
    assert all(f"--set {o}" in rec["reproduce"] for o in overrides), rec["reproduce"]
    cal = rec["calibration"]
    assert cal["converged_base"]["passed"] is False
    for name in ("no_spill_over", "gradual_forgetting", "resolution", "build"):
        assert cal[name]["passed"] is True


@pytest.fixture(scope="module")
def lowest_rate_trial(world, tmp_path_factory):
    """Full FT at the smoke spec's lowest rate (one trial, the smoke budget): (lr, WikiText change in %)."""
    from smf_sweep.spec import load_spec, resolve_world
    from smf_sweep.trial import worker_config
    from smf_sweep.worker import train_worker

    info = json.loads((world / "world.json").read_text())
    spec = resolve_world(load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml",
                                   [f"storage={tmp_path_factory.mktemp('controls')}"]), progress=False)
    lo = spec.methods["full"].search["lr"].low
    final = train_worker(worker_config(spec, "full", {"lr": lo}, 0), reporter=lambda m, c: None)
    return lo, 100 * (final["after/wikitext"] / info["base_probes"]["wikitext"] - 1)


@pytest.mark.slow
def test_default_world_controls_hold_on_this_machine(world, lowest_rate_trial):
    """The record's cheap controls on the world this machine built, whichever build it is: 800
    validation questions and a weak base (resolution), the build time, and no spill-over at the
    spec's lowest full-FT rate."""
    from smf_sweep.calibrate import resolution
    from smf_sweep.data import load_medmcqa

    info = json.loads((world / "world.json").read_text())
    assert resolution(len(load_medmcqa(f"world:{world}", "validation")), info["base_probes"]["medmcqa"])["passed"]
    assert info["build_seconds"] <= 900
    lo, got = lowest_rate_trial
    assert got >= -3.0, f"WikiText fell {got:.1f} % at lr {lo}: the task spills over into the probe"


@pytest.mark.slow
def test_default_world_reproduces_its_record_on_the_recorded_build(lowest_rate_trial, recorded_build):
    """On the build the record was made on (its content hash), the trial above gives the record's
    number, since the world and the trial are deterministic on one kind of machine."""
    rec = json.loads(CALIBRATION.read_text())
    recorded_build({"key": rec["world_key"], "content_hash": rec.get("content_hash"), "built_on": rec.get("built_on")},
                   f"tests/golden/{CALIBRATION.name}")
    lo, got = lowest_rate_trial
    want = next(r for r in rec["calibration"]["gradual_forgetting"]["runs"] if r["lr"] == lo)["wikitext/delta"]
    assert got == pytest.approx(want, abs=0.5), (got, want)
