"""Loaders read every source form of docs/contracts.md, with the hub's schemas, and fail loudly."""
import json
import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import FIXTURES, WORLD_DATA  # noqa: E402

from smf_sweep.data import (DataError, load_medmcqa, load_oasst1, load_triviaqa, load_wikitext,  # noqa: E402
                            load_wikitext_documents, oasst1_texts)
from smf_sweep.data import sources  # noqa: E402

# dataset dir -> (loader call, split, expected rows as a function of the raw jsonl rows)
CASES = {
    "medmcqa": (lambda s: load_medmcqa(s, "validation", single_only=False), "validation", lambda rows: rows),
    "trivia_qa": (lambda s: load_triviaqa(s), "validation", lambda rows: rows),
    "wikitext": (lambda s: load_wikitext(s, "test"), "test", lambda rows: rows),
    "wikitext_document_level": (lambda s: load_wikitext_documents(s), "test", lambda rows: rows),
    "oasst1": (lambda s: load_oasst1(s, "train", lang=None, roles=("assistant", "prompter"), max_rank=None,
                                     min_chars=0), "train", lambda rows: rows),
}
KEY = {"medmcqa": "id", "trivia_qa": "question_id", "wikitext": "text", "wikitext_document_level": "page",
       "oasst1": "message_id"}


def raw(sub, split):
    return [json.loads(x) for x in (WORLD_DATA / sub / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """Every local source form, for every dataset: {form: {dataset dir: source string}}."""
    root = tmp_path_factory.mktemp("forms")
    out = {f: {} for f in ("world", "jsonl_dir", "parquet_dir", "parquet_shards", "save_to_disk",
                           "saved_dataset", "jsonl_file", "parquet_file")}
    for sub in CASES:
        splits = {p.stem: datasets.Dataset.from_list(raw(sub, p.stem)) for p in (WORLD_DATA / sub).glob("*.jsonl")}
        split = CASES[sub][1]
        (root / "pq" / sub).mkdir(parents=True)
        (root / "shards" / sub).mkdir(parents=True)
        for name, ds in splits.items():
            ds.to_parquet(root / "pq" / sub / f"{name}.parquet")
            half = len(ds) // 2
            ds.select(range(half)).to_parquet(root / "shards" / sub / f"{name}-00000-of-00002.parquet")
            ds.select(range(half, len(ds))).to_parquet(root / "shards" / sub / f"{name}-00001-of-00002.parquet")
        datasets.DatasetDict(splits).save_to_disk(root / "disk" / sub)
        splits[split].save_to_disk(root / "one" / sub)
        out["world"][sub] = f"world:{FIXTURES / 'world'}"
        out["jsonl_dir"][sub] = str(WORLD_DATA / sub)
        out["parquet_dir"][sub] = str(root / "pq" / sub)
        out["parquet_shards"][sub] = str(root / "shards" / sub)
        out["save_to_disk"][sub] = str(root / "disk" / sub)
        out["saved_dataset"][sub] = str(root / "one" / sub)
        out["jsonl_file"][sub] = str(WORLD_DATA / sub / f"{split}.jsonl")
        out["parquet_file"][sub] = str(root / "pq" / sub / f"{split}.parquet")
    return out


@pytest.mark.parametrize("form", ["world", "jsonl_dir", "parquet_dir", "parquet_shards", "save_to_disk",
                                  "saved_dataset", "jsonl_file", "parquet_file"])
@pytest.mark.parametrize("sub", list(CASES))
def test_every_form_reads_every_schema(forms, form, sub):
    load, split, expect = CASES[sub]
    ds = load(forms[form][sub])
    want = expect(raw(sub, split))
    assert [r[KEY[sub]] for r in ds] == [r[KEY[sub]] for r in want]
    assert set(want[0]) <= set(ds.column_names)
    if sub == "trivia_qa":
        assert ds[0]["answer"]["aliases"] == want[0]["answer"]["aliases"]


def test_medmcqa_single_filter_then_limit():
    src = f"world:{FIXTURES / 'world'}"
    assert [r["id"] for r in load_medmcqa(src, "validation")] == ["fx-0001", "fx-0002", "fx-0004", "fx-0005",
                                                                  "fx-0006"]
    assert [r["id"] for r in load_medmcqa(src, "validation", limit=2)] == ["fx-0001", "fx-0002"]
    assert len(load_medmcqa(src, "train", single_only=False)) == 3


def test_oasst1_study_filter():
    src = str(WORLD_DATA / "oasst1")
    kept = load_oasst1(src, "train")  # English assistant turns, rank 0..1, >= 50 chars
    assert kept["message_id"] == ["m2", "m3"]
    assert list(oasst1_texts(src, "train")) == kept["text"]
    assert load_oasst1(src, "train", max_rank=None)["message_id"] == ["m2", "m3", "m4", "m7"]
    assert load_oasst1(src, "train", lang=None)["message_id"] == ["m2", "m3", "m6"]
    assert load_oasst1(src, "train", roles=("prompter",), max_rank=None)["message_id"] == ["m8"]
    assert load_oasst1(src, "validation")["message_id"] == ["m21"]


def test_hub_sources_use_the_real_ids(monkeypatch):
    calls = []
    real = datasets.load_dataset

    def fake(path, name=None, split=None, **kw):
        if path in ("json", "parquet"):
            return real(path, name, split=split, **kw)
        calls.append((path, name, split))
        sub = {"openlifescienceai/medmcqa": "medmcqa", "mandarjoshi/trivia_qa": "trivia_qa",
               "Salesforce/wikitext": "wikitext", "wikitext": "wikitext",
               "EleutherAI/wikitext_document_level": "wikitext_document_level",
               "OpenAssistant/oasst1": "oasst1"}[path]
        return real("json", data_files=str(WORLD_DATA / sub / f"{split}.jsonl"), split="train")

    monkeypatch.setattr(sources.datasets, "load_dataset", fake)
    assert len(load_medmcqa("hub", "validation")) == 5
    assert len(load_triviaqa("hub")) == 5
    assert len(load_wikitext("hub")) == 10
    assert len(load_wikitext("wikitext", config="wikitext-103-raw-v1")) == 10
    assert len(load_wikitext_documents("hub")) == 2
    assert len(load_oasst1("hub")) == 2
    assert len(load_medmcqa("openlifescienceai/medmcqa", "train", single_only=False)) == 3
    assert calls == [("openlifescienceai/medmcqa", None, "validation"), ("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
                     ("Salesforce/wikitext", "wikitext-103-v1", "test"), ("wikitext", "wikitext-103-raw-v1", "test"),
                     ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"),
                     ("OpenAssistant/oasst1", None, "train"), ("openlifescienceai/medmcqa", None, "train")]


def test_hub_failure_is_a_data_error(monkeypatch):
    def offline(path, name=None, split=None, **kw):
        raise ConnectionError("no network")
    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"TriviaQA.*'validation'.*mandarjoshi/trivia_qa.*rc.nocontext.*no network"):
        load_triviaqa("hub")


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_column_names_dataset_file_and_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "opd"} for r in raw("medmcqa", "validation")]
    f = _write_jsonl(tmp_path / "mq" / "validation.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_medmcqa(str(tmp_path / "mq"), "validation")
    assert "MedMCQA" in str(e.value) and str(f) in str(e.value) and "opd" in str(e.value)

    rows = raw("trivia_qa", "validation")
    for r in rows:
        del r["answer"]["aliases"]
    f = _write_jsonl(tmp_path / "tq.jsonl", rows)
    with pytest.raises(DataError, match=r"TriviaQA: .*tq\.jsonl lacks column\(s\) answer\.aliases"):
        load_triviaqa(str(f))

    f = _write_jsonl(tmp_path / "wt.jsonl", [{"page": "x"}])
    with pytest.raises(DataError, match=r"WikiText: .*wt\.jsonl lacks column\(s\) text; it has page"):
        load_wikitext(str(f))


def test_wrong_split_lists_available_splits(forms):
    for src in (str(WORLD_DATA / "medmcqa"), forms["save_to_disk"]["medmcqa"], forms["parquet_shards"]["medmcqa"],
                f"world:{FIXTURES / 'world'}"):
        with pytest.raises(DataError) as e:
            load_medmcqa(src, "test")
        msg = str(e.value)
        assert "MedMCQA" in msg and "'test'" in msg and "train, validation" in msg, msg
        assert src.removeprefix("world:") in msg


def test_unreadable_files_name_dataset_and_path(tmp_path):
    bad_pq = tmp_path / "validation.parquet"
    bad_pq.write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as e:
        load_medmcqa(str(tmp_path), "validation")
    assert "MedMCQA" in str(e.value) and str(bad_pq) in str(e.value)

    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"question": "q", "answer": {"aliases": ["a"]}\n{not json\n')
    with pytest.raises(DataError, match=r"TriviaQA: cannot read .*broken\.jsonl"):
        load_triviaqa(str(bad_json))

    csv = tmp_path / "x.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"WikiText: .*x\.csv: unsupported file type"):
        load_wikitext(str(csv))


def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match=r"MedMCQA: no such file or directory: .*nope\.jsonl"):
        load_medmcqa(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"OASST1: world directory .*absent does not exist"):
        load_oasst1(f"world:{tmp_path / 'absent'}")
    (tmp_path / "w" / "data").mkdir(parents=True)
    with pytest.raises(DataError, match=r"TriviaQA: world .* has no data/trivia_qa/"):
        load_triviaqa(f"world:{tmp_path / 'w'}")
    assert sources.resolve_source("owner/name", sources.DatasetSpec("X", "a/b", "x", ())) == ("hub", "owner/name")


def test_wikitext_default_is_the_canonical_hub_id_and_bare_wikitext_still_reads(monkeypatch):
    from smf_sweep.data.loaders import WIKITEXT
    from smf_sweep.probes import PROBES
    from smf_sweep.spec import Data
    assert Data().wikitext == "Salesforce/wikitext"                    # the spec's default source
    assert WIKITEXT.hub_id == PROBES["wikitext:study"].hub_id == "Salesforce/wikitext"
    assert sources.resolve_source("hub", WIKITEXT) == ("hub", "Salesforce/wikitext")
    assert sources.resolve_source("Salesforce/wikitext", WIKITEXT) == ("hub", "Salesforce/wikitext")
    assert sources.resolve_source("wikitext", WIKITEXT) == ("hub", "wikitext")  # the legacy id, still the hub

    calls = []

    def fake(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"text": "x\n"}])

    monkeypatch.setattr(sources.datasets, "load_dataset", fake)
    for src in (Data().wikitext, "wikitext", "hub"):
        assert load_wikitext(src)["text"] == ["x\n"]
    assert calls == [("Salesforce/wikitext", "wikitext-103-v1", "test"), ("wikitext", "wikitext-103-v1", "test"),
                     ("Salesforce/wikitext", "wikitext-103-v1", "test")]
