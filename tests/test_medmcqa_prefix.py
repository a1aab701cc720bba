"""MedMCQA's shared question prefix (`share_prefix`, `scoring.grouped_logprobs`): the same per-option
log-likelihoods and decisions as one full pass per option, for both variants; padded prefixes of
mixed lengths in one batch; the unshared fallbacks (boundary re-tokenisation, truncation, no cache)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import FIXTURES, ScriptedLM, tiny_model, tiny_tokenizer  # noqa: E402

from smf_sweep.data.formats import HARNESS_MEDMCQA_TARGETS, medmcqa_prompt, medmcqa_target  # noqa: E402
from smf_sweep.models import load_model, load_tokenizer  # noqa: E402
from smf_sweep.probes import PROBES, scoring  # noqa: E402
from smf_sweep.probes.scoring import continuation_logprobs, encode_pair, grouped_logprobs, shareable  # noqa: E402

WORLD = f"world:{FIXTURES / 'world'}"
ATOL = 1e-4  # fp32, per option


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok), seed=0, max_positions=256)


@pytest.fixture(scope="module")
def tiny(tiny_world):
    return load_model(tiny_world / "model", dtype="float32", device="cpu"), load_tokenizer(tiny_world / "model")


class Spy:
    """Counts the shared batches that ran and the pairs scored unshared."""

    def __init__(self, monkeypatch):
        self.shared, self.unshared = 0, 0
        batch, cont = scoring._shared_batch, scoring.continuation_logprobs

        def shared_batch(*a, **k):
            r = batch(*a, **k)
            self.shared += r is not None
            return r

        def unshared(model, pairs, **k):
            self.unshared += len(pairs)
            return cont(model, pairs, **k)
        monkeypatch.setattr(scoring, "_shared_batch", shared_batch)
        monkeypatch.setattr(scoring, "continuation_logprobs", unshared)


def _compare(a, b, atol=ATOL):
    assert a.n == b.n and a.version == b.version == "1"
    for x, y in zip(a.items, b.items):
        np.testing.assert_allclose(x["scores"], y["scores"], atol=atol, rtol=0)
    assert [x["pred"] for x in a.items] == [y["pred"] for y in b.items]
    assert a.value == b.value and a.extras == b.extras


@pytest.mark.parametrize("variant", ["study", "harness"])
def test_shared_equals_unshared_on_the_tiny_world(tiny_world, tiny, variant, monkeypatch):
    model, tok = tiny
    data = PROBES[f"medmcqa:{variant}"]().load(f"world:{tiny_world}", limit=0)
    assert len(data) > 20
    old = PROBES[f"medmcqa:{variant}"](share_prefix=False).run(model, tok, data, batch_size=16)
    spy = Spy(monkeypatch)
    for bs in (4, 16, 64):
        new = PROBES[f"medmcqa:{variant}"]().run(model, tok, data, batch_size=bs)
        _compare(old, new)
    assert spy.unshared == 0 and spy.shared > 0  # every question went through the shared path


@pytest.mark.parametrize("variant", ["study", "harness"])
def test_shared_equals_unshared_with_decisive_logits(tok, model, variant):
    probe = PROBES[f"medmcqa:{variant}"]
    data = probe().load(WORLD)
    for bs in (1, 5, 13):
        _compare(probe(share_prefix=False).run(model, tok, data, batch_size=bs), probe().run(model, tok, data, batch_size=bs))


def _count_tokens(model):
    seen = []
    h = model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].numel()), with_kwargs=True)
    return seen, h


def test_the_prefix_runs_once_per_question(tok, model):
    """Computed tokens: the study's 4 options cost little more than one prompt; the harness's four
    one-token continuations share one row (lm-evaluation-harness's one-token reuse)."""
    for variant, ratio in (("study", 0.5), ("harness", 0.3)):
        probe = PROBES[f"medmcqa:{variant}"]
        data = probe().load(WORLD)
        seen, h = _count_tokens(model)
        try:
            probe(share_prefix=False).run(model, tok, data, batch_size=64)
            old, seen[:] = sum(seen), []
            probe().run(model, tok, data, batch_size=64)
            new = sum(seen)
        finally:
            h.remove()
        assert new < ratio * old, (variant, new, old)


def _groups(tok, rows):
    return [[encode_pair(tok, medmcqa_prompt(r), medmcqa_target(r, i), add_special_tokens=False) for i in range(4)]
            for r in rows]


def test_mixed_prefix_lengths_and_ragged_groups_in_one_batch(tok, model, monkeypatch):
    rows = PROBES["medmcqa:study"](single_only=False).load(WORLD)
    groups = _groups(tok, rows)
    groups += [groups[0][:1], groups[1][:3] + [(groups[1][0][0], groups[2][3][1] * 3)]]  # 1 option; a long one
    assert len({len(g[0][0]) for g in groups}) >= 4  # prefixes of different lengths, left-padded together
    assert len({len(x) for g in groups for _, x in g}) >= 4  # continuations of different lengths, right-padded
    flat = [p for g in groups for p in g]
    alone = continuation_logprobs(model, flat, pad_id=tok.pad_token_id, batch_size=1)  # reference: no padding
    spy = Spy(monkeypatch)
    for bs in (4, 9, 100):  # 100: every group in one batch
        got = grouped_logprobs(model, groups, pad_id=tok.pad_token_id, batch_size=bs, max_length=256)
        assert [len(x) for x in got] == [len(x) for _, x in flat]
        for a, b in zip(alone, got):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert spy.unshared == 0 and spy.shared >= 3


def test_boundary_retokenisation_falls_back_to_the_unshared_path(tok, model, monkeypatch):
    """A context that ends mid-word: "Cast" + "elmar, sea" tokenises as "Castelmar" and moves the split
    point, so that option's context ids differ from its siblings': the question is scored unshared."""
    ctx = "Question: Which city lies by the sea?\nAnswer: Cast"
    bad = [encode_pair(tok, ctx, c, add_special_tokens=False) for c in ("elmar, by the sea", "le", " B", "x")]
    assert len({tuple(c) for c, _ in bad}) > 1 and all(x for _, x in bad)
    good = _groups(tok, PROBES["medmcqa:study"](single_only=False).load(WORLD))
    assert not shareable(bad, None) and all(shareable(g, None) for g in good)
    groups = good[:2] + [bad] + good[2:]
    spy = Spy(monkeypatch)
    got = grouped_logprobs(model, groups, pad_id=tok.pad_token_id, batch_size=8)
    assert spy.unshared == 4 and spy.shared > 0  # only the boundary question went unshared
    want = grouped_logprobs(model, groups, pad_id=tok.pad_token_id, batch_size=8, share_prefix=False)
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_truncated_questions_fall_back(tok, model, monkeypatch):
    groups = _groups(tok, PROBES["medmcqa:study"](single_only=False).load(WORLD))
    longest = max(len(g[0][0]) + max(len(x) for _, x in g) - 1 for g in groups)
    L = longest - 2  # the longest question is left-truncated, so it cannot share
    assert sum(not shareable(g, L) for g in groups) >= 1 and sum(shareable(g, L) for g in groups) >= 1
    spy = Spy(monkeypatch)
    got = grouped_logprobs(model, groups, pad_id=tok.pad_token_id, batch_size=8, max_length=L)
    assert spy.unshared >= 4 and spy.shared >= 1
    want = continuation_logprobs(model, [p for g in groups for p in g], pad_id=tok.pad_token_id, max_length=L)
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_a_model_without_a_cache_falls_back(tok, monkeypatch):
    """ScriptedLM's "cache" is a tensor (no `batch_select_indices`): every question goes unshared."""
    data = PROBES["medmcqa:harness"]().load(WORLD)
    prompt_end = tuple(tok("Answer:")["input_ids"][-2:])
    lm = ScriptedLM({prompt_end: tok(" C")["input_ids"][-1]}, len(tok), default=tok.eos_token_id)
    spy = Spy(monkeypatch)
    r = PROBES["medmcqa:harness"]().run(lm, tok, data, batch_size=8)
    assert spy.shared == 0 and spy.unshared == 4 * len(data)
    _compare(PROBES["medmcqa:harness"](share_prefix=False).run(lm, tok, data, batch_size=8), r)
    assert len(HARNESS_MEDMCQA_TARGETS) == 4


@pytest.mark.parametrize("variant", ["study", "harness"])
def test_bf16_autocast(tiny_world, tiny, variant):
    """Under bf16 autocast the two paths differ by bf16 rounding only (different matmul shapes)."""
    model, tok = tiny
    probe = PROBES[f"medmcqa:{variant}"]
    data = probe().load(f"world:{tiny_world}", limit=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        old = probe(share_prefix=False).run(model, tok, data, batch_size=16)
        new = probe().run(model, tok, data, batch_size=16)
    fp32 = probe().run(model, tok, data, batch_size=16)
    d = max(np.abs(np.subtract(x["scores"], y["scores"])).max() for x, y in zip(old.items, new.items))
    d32 = max(np.abs(np.subtract(x["scores"], y["scores"])).max() for x, y in zip(old.items, fp32.items))
    assert 0 < d <= 2 * d32  # no further apart than bf16 is from fp32
