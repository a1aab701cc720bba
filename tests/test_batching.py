"""Batching (issue 14): length-grouped order wastes little padding and changes no epoch's examples,
for any worker count; tokenised sets are cached by content and identical to fresh tokenisation."""
from __future__ import annotations

import pytest
import torch

from smf_sweep.batching import Batcher, Example, encode, medmcqa_examples
from smf_sweep.data import load_medmcqa
from smf_sweep.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_world):
    return load_tokenizer(tiny_world / "model")


def _long_tailed(n: int = 600) -> list[Example]:
    """Lengths like MedMCQA's (most questions short, explanations with a long tail)."""
    g = torch.Generator().manual_seed(0)
    words = torch.exp(3.5 + 0.8 * torch.randn(n, generator=g)).clamp(5, 400).int().tolist()   # log-normal
    return [Example(f"Question {i}:", " " + " ".join(["fever"] * w)) for i, w in enumerate(words)]


def _epoch_rows(b: Batcher, epoch: int) -> list[int]:
    return sorted(b._order(epoch).tolist())


def test_length_grouping_cuts_padding_and_keeps_each_epochs_examples(tok):
    ex = _long_tailed()
    rnd = Batcher(ex, tok, micro_batch_size=4, max_len=1024, effective_batch=16, order="random", seed=1)
    grp = Batcher(ex, tok, micro_batch_size=4, max_len=1024, effective_batch=16, order="length_grouped", seed=1)
    for e in range(3):
        assert _epoch_rows(rnd, e) == _epoch_rows(grp, e)          # the same examples, once each
        assert len(set(grp._order(e).tolist())) == grp.steps_per_epoch * 16
    assert rnd.padding_ratio() > 1.3, rnd.padding_ratio()
    assert grp.padding_ratio() <= 1.10, grp.padding_ratio()
    assert grp._order(0).tolist() != grp._order(1).tolist()         # epochs differ


@pytest.mark.parametrize("workers", [2, 4])
def test_grouped_steps_are_the_same_for_any_worker_count(tok, workers):
    ex = _long_tailed(200)
    one = Batcher(ex, tok, micro_batch_size=2, max_len=512, effective_batch=8, order="length_grouped", seed=5)
    many = [Batcher(ex, tok, micro_batch_size=2, max_len=512, effective_batch=8, order="length_grouped", seed=5,
                    rank=r, world_size=workers) for r in range(workers)]
    acc1, accw = 4, 4 // workers
    for s in range(one.steps_per_epoch):
        a = sorted(tuple(x.tolist()) for m in range(acc1) for x in one.micro_batch(s * acc1 + m)["input_ids"])
        b = sorted(tuple(x.tolist()) for bt in many for m in range(accw)
                   for x in bt.micro_batch(s * accw + m)["input_ids"])
        assert a == b


def test_token_cache_is_identical_to_fresh_tokenisation_and_shared(tiny_world, tok, tmp_path):
    ex = medmcqa_examples(load_medmcqa(f"world:{tiny_world}", "train"))
    fresh = encode(ex, tok, max_len=96, loss_on="answer")
    first = encode(ex, tok, max_len=96, loss_on="answer", cache_dir=tmp_path)
    entries = list((tmp_path / "tokens").glob("*.pt"))
    second = encode(ex, tok, max_len=96, loss_on="answer", cache_dir=tmp_path)
    assert fresh == first == second and len(entries) == 1
    assert list((tmp_path / "tokens").glob("*.pt")) == entries        # a hit: nothing new written
    encode(ex, tok, max_len=64, loss_on="answer", cache_dir=tmp_path)  # another setting, another entry
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 2


def test_answer_only_loss_starts_after_the_prompt(tok):
    enc = encode([Example("Question: a?\nAnswer:", " B. yes")], tok, max_len=64, loss_on="answer")
    ids, start = enc[0]
    assert start == len(tok("Question: a?\nAnswer:", add_special_tokens=False)["input_ids"]) < len(ids)
    assert encode([Example("", "plain text")], tok, max_len=64, loss_on="answer")[0][1] == 0
