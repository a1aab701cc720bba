"""Batched scoring and generation give what one sequence at a time (and HF's own loss/generate) give."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import FIXTURES, tiny_model, tiny_tokenizer  # noqa: E402

from smf_sweep.data.formats import medmcqa_prompt, medmcqa_target, triviaqa_prompt  # noqa: E402
from smf_sweep.probes import PROBES  # noqa: E402
from smf_sweep.probes.scoring import continuation_logprobs, encode_pair, greedy_generate  # noqa: E402

WORLD = f"world:{FIXTURES / 'world'}"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok), seed=0, max_positions=256)


def hf_mean_loglik(model, ctx, cont):
    """Reference: -HF loss with the context masked = mean log-likelihood of the continuation."""
    ids = torch.tensor([ctx + cont])
    labels = ids.clone()
    labels[:, :len(ctx)] = -100
    with torch.no_grad():
        return -model(input_ids=ids, labels=labels).loss.item()


def test_option_scores_batched_equal_unbatched_and_hf(tok, model):
    rows = PROBES["medmcqa:study"](single_only=False).load(WORLD)
    pairs = [encode_pair(tok, medmcqa_prompt(r), medmcqa_target(r, i), add_special_tokens=False)
             for r in rows for i in range(4)]
    assert len({len(c) + len(x) for c, x in pairs}) > 3  # ragged: padding really happens
    one = continuation_logprobs(model, pairs, pad_id=tok.pad_token_id, batch_size=1)
    many = continuation_logprobs(model, pairs, pad_id=tok.pad_token_id, batch_size=7)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for (ctx, cont), lp in list(zip(pairs, one))[::5]:
        assert lp.mean() == pytest.approx(hf_mean_loglik(model, ctx, cont), abs=1e-5)


def test_medmcqa_probes_batched_equal_unbatched(tok, model):
    for variant in ("study", "harness"):
        probe = PROBES[f"medmcqa:{variant}"]()
        data = probe.load(WORLD)
        r1, r2 = (probe.run(model, tok, data, batch_size=b) for b in (1, 13))
        assert r1.value == r2.value and r1.n == len(data)
        for a, b in zip(r1.items, r2.items):
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5, rtol=0)
            assert a["pred"] == b["pred"]


def test_encode_pair_splits_at_the_context():
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Question: x\nAnswer: ", "A", add_special_tokens=False)  # trailing space moves
    assert tok.decode(ctx) == "Question: x\nAnswer:" and tok.decode(cont) == " A"


def test_wikitext_windows_batched_equal_unbatched_and_hf(tok, model):
    study = PROBES["wikitext:study"](max_length=16, stride=8)
    lines = study.load(WORLD)
    r1, r2 = (study.run(model, tok, lines, batch_size=b) for b in (1, 5))
    assert r1.extras["windows"] > 5
    assert r2.value == pytest.approx(r1.value, rel=1e-5)
    # reference: HF loss over each window's scored tokens, summed over windows
    ids = tok("\n\n".join(lines), add_special_tokens=False)["input_ids"]
    from smf_sweep.probes.wikitext import sliding_windows
    nll = sum(-hf_mean_loglik(model, ids[b:e - k], ids[e - k:e]) * k for b, e, k in sliding_windows(len(ids), 16, 8))
    assert r1.value == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    # one window covering everything = plain HF loss on the whole text
    whole = PROBES["wikitext:study"](max_length=256, stride=128).run(model, tok, lines[:3], batch_size=4)
    ids3 = torch.tensor([tok("\n\n".join(lines[:3]), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert whole.value == pytest.approx(math.exp(model(input_ids=ids3, labels=ids3).loss.item()), rel=1e-5)

    harness = PROBES["wikitext:harness"](max_length=16)
    pages = harness.load(WORLD)
    h1, h2 = (harness.run(model, tok, pages, batch_size=b) for b in (1, 6))
    assert h1.extras["windows"] > 5
    assert h2.value == pytest.approx(h1.value, rel=1e-5)
    for a, b in zip(h1.items, h2.items):
        assert a["loglikelihood"] == pytest.approx(b["loglikelihood"], abs=1e-4)


def test_scoring_holds_at_most_the_logits_budget_and_scores_the_same(tok, model):
    """A batch whose logits would pass the budget (rows × longest continuation × vocabulary) runs as
    forwards of fewer rows, each within it (Qwen's vocabulary made a 64-row WikiText batch of 1,023
    scored tokens 18.5 GiB of bf16 logits: more than a 24 GB card holds), with the same scores."""
    from smf_sweep.probes.scoring import logit_rows

    ids = tok("\n\n".join(PROBES["wikitext:study"]().load(WORLD)), add_special_tokens=False)["input_ids"]
    pairs = [(ids[i:i + 8], ids[i + 8:i + 8 + k]) for i, k in zip(range(0, 120, 10), [9, 12, 3, 12, 7, 5] * 2)]
    assert len(ids) >= 130 and all(len(c) == k for (_, c), k in zip(pairs, [9, 12, 3, 12, 7, 5] * 2))
    V = model.config.vocab_size
    seen = []
    real = model.forward

    def counting(*a, **kw):
        out = real(*a, **kw)
        seen.append(out.logits.numel())
        return out

    whole = continuation_logprobs(model, pairs, pad_id=tok.pad_token_id, batch_size=12)
    assert seen == [] and logit_rows(model, 12, budget=3 * 12 * V) == 3
    model.forward = counting
    try:
        budget = 3 * 12 * V                                        # three rows of the longest continuation
        parts = continuation_logprobs(model, pairs, pad_id=tok.pad_token_id, batch_size=12, budget=budget)
        assert len(seen) == 4 and max(seen) <= budget, seen       # 12 rows, 3 at a time
        seen.clear()
        continuation_logprobs(model, pairs, pad_id=tok.pad_token_id, batch_size=12, budget=1)
        assert len(seen) == 12                                     # never fewer than one row a forward
    finally:
        del model.forward
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_wrapped_model_is_probed_in_its_own_context(tok, model):
    """A wrapper without a config of its own (DeepSpeedEngine, DDP: `.module`) gets the windows of the
    model inside it, not the protocol's 1024 past the model's positions."""
    class Wrapper(torch.nn.Module):               # what DeepSpeedEngine and DDP look like to a probe
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *a, **kw):
            return self.module(*a, **kw)

    study = PROBES["wikitext:study"]()            # max_length 1024 > the model's 256 positions
    lines = study.load(WORLD)
    plain, wrapped = (study.run(m, tok, lines, batch_size=4) for m in (model, Wrapper(model)))
    assert wrapped.extras["max_length"] == plain.extras["max_length"] == 256
    assert wrapped.value == pytest.approx(plain.value, rel=1e-6)


def test_batched_greedy_equals_one_at_a_time_and_hf_generate(tok, model):
    questions = [r["question"] for r in PROBES["triviaqa:study"]().load(WORLD)]
    prompts = [tok(triviaqa_prompt(q))["input_ids"] for q in questions] + [tok("Q")["input_ids"]]
    assert len({len(p) for p in prompts}) > 2
    alone = [greedy_generate(model, [p], max_new_tokens=12, pad_id=tok.pad_token_id)[0] for p in prompts]
    batched = greedy_generate(model, prompts, max_new_tokens=12, pad_id=tok.pad_token_id, batch_size=4)
    assert batched == alone and all(len(g) == 12 for g in alone)
    for p, g in zip(prompts[:3], alone):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
        assert ref[0, len(p):].tolist() == g

    # EOS ends a row (and is kept); the others go on; result unchanged by batching
    eos = alone[0][3]
    cut = greedy_generate(model, prompts, max_new_tokens=12, pad_id=tok.pad_token_id, eos_ids=[eos], batch_size=3)
    for g, full in zip(cut, alone):
        n = full.index(eos) + 1 if eos in full else len(full)
        assert g == full[:n]
    # a stop rule (the harness's "until") ends rows the same way
    stop = greedy_generate(model, prompts, max_new_tokens=12, pad_id=tok.pad_token_id, batch_size=5,
                           stop=lambda t: len(t) >= 2 and t[-1] == t[-2] or len(t) == 7)
    for g, full in zip(stop, alone):
        assert g == full[:len(g)] and (len(g) == 7 or g[-1] == g[-2])
