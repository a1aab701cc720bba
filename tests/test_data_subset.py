"""The study's MedMCQA training subset (SMF_SPEC §6): single-choice rows, shuffled with the run's seed,
then the first `limit` — not the first `limit` rows of the file."""
import json

import datasets
import pytest

from smf_sweep.data import load_medmcqa, medmcqa_train_subset


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    """<dir>/train.jsonl: 60 MedMCQA rows, every third one multi-choice."""
    root = tmp_path_factory.mktemp("medmcqa")
    rows = [{"id": f"r{i:03d}", "question": f"q{i}", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": i % 4,
             "choice_type": "multi" if i % 3 == 2 else "single", "exp": None, "subject_name": "s", "topic_name": None}
            for i in range(60)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def test_subset_is_the_seeded_shuffles_head(train_dir):
    single = [f"r{i:03d}" for i in range(60) if i % 3 != 2]          # 40 single-choice rows, in file order
    for seed in (0, 1, 1234):
        got = medmcqa_train_subset(train_dir, seed=seed, limit=10)["id"]
        ref = datasets.load_dataset("json", data_files=f"{train_dir}/train.jsonl", split="train")
        ref = ref.filter(lambda r: r["choice_type"] == "single")
        assert got == ref.shuffle(seed=seed).select(range(10))["id"]   # datasets' own shuffle then select
        assert got != single[:10]                                       # not the first rows (today's cut)
        assert set(got) <= set(single) and len(set(got)) == 10
        assert medmcqa_train_subset(train_dir, seed=seed, limit=10)["id"] == got   # deterministic
    assert medmcqa_train_subset(train_dir, seed=0, limit=10)["id"] != medmcqa_train_subset(train_dir, seed=1,
                                                                                            limit=10)["id"]
    assert load_medmcqa(train_dir, "train", limit=10)["id"] == single[:10]          # the probes' rule is unchanged


def test_subset_limits(train_dir):
    single = [f"r{i:03d}" for i in range(60) if i % 3 != 2]
    assert medmcqa_train_subset(train_dir, seed=7, limit=None)["id"] == single      # no limit: all, file order
    everything = medmcqa_train_subset(train_dir, seed=7, limit=1000)["id"]          # more than there are: all,
    assert sorted(everything) == single and everything != single                   # in the shuffle's order
    assert medmcqa_train_subset(train_dir, seed=7, limit=0)["id"] == []
    assert len(medmcqa_train_subset(train_dir, seed=7, limit=5, single_only=False)) == 5
    with pytest.raises(ValueError, match="limit"):
        medmcqa_train_subset(train_dir, seed=7, limit=-1)
