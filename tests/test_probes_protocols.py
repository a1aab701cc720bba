"""The probes' protocols: numbers that follow from the definitions (uniform model, scripted model),
window plans, normalisation, and the lm-evaluation-harness variants."""
import re
import string
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import FIXTURES, ScriptedLM, tiny_model, tiny_tokenizer  # noqa: E402

from smf_sweep.data.formats import triviaqa_harness_prompt, triviaqa_prompt  # noqa: E402
from smf_sweep.probes import PROBES, ProbeSpec, run_probes  # noqa: E402
from smf_sweep.probes.medmcqa import first_argmax  # noqa: E402
from smf_sweep.probes.triviaqa import (HARNESS_UNTIL, alias_in_output, harness_exact_match,  # noqa: E402
                                       harness_postprocess, normalize_answer)
from smf_sweep.probes.wikitext import (count_words, rolling_windows, sliding_windows,  # noqa: E402
                                       wikitext_detokenize)

WORLD = f"world:{FIXTURES / 'world'}"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def uniform(tok):
    return tiny_model(len(tok) + 7, uniform=True, max_positions=64)  # model vocab > tokenizer's, as in Qwen


def test_registry_and_declarations():
    assert PROBES.names() == [f"{t}:{v}" for t in ("medmcqa", "triviaqa", "wikitext") for v in ("harness", "study")]
    for name in PROBES:
        p = PROBES[name]()
        assert (p.task, p.variant) == tuple(name.split(":"))
        assert p.version and p.metric and isinstance(p.higher_is_better, bool) and "/" in p.hub_id
    assert PROBES["wikitext:study"].higher_is_better is False and PROBES["medmcqa:study"].higher_is_better
    assert PROBES["medmcqa:study"].default_limit == 1000 and PROBES["triviaqa:study"].default_limit == 1000


def test_uniform_model_token_perplexity_is_vocab_size(tok, uniform):
    V = uniform.config.vocab_size
    lines = PROBES["wikitext:study"]().load(WORLD)
    r = PROBES["wikitext:study"](max_length=1024, stride=512).run(uniform, tok, lines, batch_size=3)
    assert r.value == pytest.approx(V, rel=1e-4)
    assert (r.extras["max_length"], r.extras["stride"]) == (64, 32)  # capped at the model's 64 positions
    assert r.version == "1+L64S32" and r.extras["windows"] > 2
    assert r.extras["tokens"] == len(tok("\n\n".join(lines), add_special_tokens=False)["input_ids"]) - 1


def test_uniform_model_word_perplexity_counts_words_of_the_original_page(tok, uniform):
    V = uniform.config.vocab_size
    pages = PROBES["wikitext:harness"]().load(WORLD)
    r = PROBES["wikitext:harness"](max_length=32).run(uniform, tok, pages, batch_size=4)
    tokens = sum(len(tok(wikitext_detokenize(p))["input_ids"]) for p in pages)   # every token scored once
    words = sum(len(re.split(r"\s+", p)) for p in pages)                          # of the ORIGINAL pages
    assert (r.extras["tokens"], r.extras["words"]) == (tokens, words)
    assert r.extras["token_perplexity"] == pytest.approx(V, rel=1e-4)
    assert r.value == pytest.approx(V ** (tokens / words), rel=1e-4)            # exp(-Σll / #words)
    assert r.extras["byte_perplexity"] == pytest.approx(V ** (tokens / sum(len(p.encode()) for p in pages)), rel=1e-4)
    assert r.metric == "word_perplexity" and r.version == "1+L32"


def test_uniform_model_medmcqa_ties_go_to_option_a(tok, uniform):
    for variant in ("study", "harness"):
        probe = PROBES[f"medmcqa:{variant}"]()
        data = probe.load(WORLD)
        r = probe.run(uniform, tok, data, batch_size=5)
        assert [it["pred"] for it in r.items] == [0] * len(data)
        assert r.value == pytest.approx(sum(d["cop"] == 0 for d in data) / len(data))
    assert first_argmax([-1.0, -0.5, -0.5, -2.0]) == 1


def test_study_windows_score_each_token_once():
    assert sliding_windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    for n, L, S in [(1000, 64, 32), (100, 64, 32), (64, 64, 32), (5, 64, 32), (97, 16, 5), (2, 4, 3)]:
        scored = [i for b, e, k in sliding_windows(n, L, S) for i in range(e - k, e)]
        assert scored == list(range(1, n))
        assert all(e - b <= L and k <= e - b - 1 for b, e, k in sliding_windows(n, L, S))
    with pytest.raises(ValueError):
        sliding_windows(10, 4, 4)


def test_harness_rolling_windows_match_get_rolling_token_windows():
    # by hand from lm_eval.utils.get_rolling_token_windows(context_len=1) + make_disjoint_window
    assert rolling_windows(list(range(10)), -1, 4) == [([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
    assert rolling_windows([7, 8], -1, 4) == [([-1], [7, 8])]
    assert rolling_windows(list(range(8)), -1, 4) == [([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7])]
    assert rolling_windows([], -1, 4) == []
    for n, L in [(1, 4), (50, 7), (64, 8), (65, 8)]:
        w = rolling_windows(list(range(n)), -1, L)
        assert [t for _, c in w for t in c] == list(range(n))              # each token once, in order
        assert all(len(x) + len(c) <= L + 1 and x for x, c in w)           # fits, context never empty
        assert all(len(c) == L for _, c in w[:-1])                          # disjoint full windows


def test_wikitext_detokenizer_and_word_count():
    page = " = Tessaly = \n The accord ended in 1742 , after 3 @,@ 000 days ( of talks ) . It 's \" done \" . \n"
    assert wikitext_detokenize(page) == ' = Tessaly =\nThe accord ended in 1742, after 3,000 days (of talks). It\'s "done".\n'
    assert wikitext_detokenize("a @-@ b = = c = = d @.@ 5") == "a-b == c == d.5"
    assert count_words(" a  b\nc ") == 5  # re.split gives ['', 'a', 'b', 'c', '']
    assert count_words("a @-@ b") == 3 and count_words(wikitext_detokenize("a @-@ b")) == 1


# The study's normaliser (SMF_SPEC §6), by hand: lower; \b(a|an|the)\b -> " "; [^a-z0-9 .-] -> " "; collapse.
# The third column is what TriviaQA's official normaliser (versions <= 1 of the probe) gave.
@pytest.mark.parametrize("text, norm, official", [
    ("The Beatles!", "beatles", "beatles"), ("An apple a day", "apple day", "apple day"),
    ("Rock_and_Roll", "rock and roll", "rock and roll"), ("anthem", "anthem", "anthem"), ("", "", ""),
    ("  Hello,   World. ", "hello world.", "hello world"),           # "," goes, "." stays
    ("\u2018Quoted\u2019 `x\u00b4", "quoted x", "quoted x"),
    ("\u201cQuoted\u201d", "quoted", "\u201cquoted\u201d"),                 # curly double quotes: not in the old set
    ("U.S.A.", "u.s. .", "u s"),                                       # "a" between dots is a word: an article
    ("Théâtre", "th tre", "théâtre"),                                  # accented letters are outside [a-z]
    ("Ça", "a", "ça"),                                                 # "ça" is one word (no article), then "ç" goes
    ("Jean-Paul Sartre", "jean-paul sartre", "jean paul sartre"),      # hyphens stay
    ("A-ha", "-ha", "ha"),                                             # "a" before "-" is a whole word
    ("the_beatles", "the beatles", "beatles"),                         # articles go BEFORE "_" becomes a space
    ("O'Brien, Jr.", "o brien jr.", "o brien jr"), ("3.14", "3.14", "3 14"), ("x\ty\nz", "x y z", "x y z"),
])
def test_triviaqa_study_normaliser(text, norm, official):
    assert normalize_answer(text) == norm
    assert _official_normalize(text) == official


def _official_normalize(text):  # TriviaQA's utils/dataset_utils normalize_answer, as the probe had it
    punct = set(string.punctuation + "\u2018\u2019\u00b4`")
    text = "".join(" " if ch in punct else ch for ch in text.replace("_", " ").lower())
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def test_study_normaliser_changes_the_verdict():
    assert not alias_in_output("Jean-Paul Sartre wrote it", ["Jean Paul Sartre"])   # hyphen kept in the output
    assert alias_in_output("Jean-Paul Sartre wrote it", ["Jean-Paul Sartre"])
    assert not alias_in_output("It is 3.14", ["3 14"]) and alias_in_output("It is 3.14.", ["3.14"])
    assert alias_in_output("Beyoncé Knowles", ["Beyonc"])                            # "é" became a space
    assert not alias_in_output("The Beatles", ["the_beatles"])                       # alias keeps its "the"


def test_study_alias_substring_rule():
    assert alias_in_output("It was the Beatles, I think.", ["The Beatles", "Fab Four"])
    assert alias_in_output("London? No: PARIS", ["paris"])
    assert alias_in_output("Castelmar-on-Sea", ["Castelmar"])               # substring of the output
    assert alias_in_output("concatenate", ["cat"])                           # character substring, as the study
    assert not alias_in_output("Beat", ["Beatles"])                          # the alias must be inside the output
    assert not alias_in_output("the answer is unknown", ["", "The", "a"])    # empty normalised aliases never match
    assert not alias_in_output("", ["x"])


def test_harness_exact_match_and_postprocess():
    assert harness_exact_match("Paris", ["London", "paris"])
    assert harness_exact_match("U.S.A", ["USA"])
    assert not harness_exact_match("The Paris", ["Paris"])          # no article removal
    assert not harness_exact_match("New York", ["new-york"])       # punctuation is deleted, not spaced
    assert not harness_exact_match("Paris France", ["Paris"])      # exact, not substring
    until = HARNESS_UNTIL + ("<|endoftext|>",)
    assert harness_postprocess(" Paris, France.\nmore", until) == "Paris"
    assert harness_postprocess(" 3.14 is pi", until) == "3"
    assert harness_postprocess(" Castelmar<|endoftext|> x", until) == "Castelmar"


class ScriptedGenLM(Qwen2ForCausalLM):
    """ScriptedLM's rule behind transformers' `generate` (the study's TriviaQA calls it): the next token
    is table[(the last two tokens)]. It reads the whole sequence at every step: no KV cache."""

    def __init__(self, table: dict, vocab_size: int, default: int):
        super().__init__(Qwen2Config(vocab_size=vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                     num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512))
        self.table, self.default = dict(table), default
        self.generation_config.use_cache = False

    def forward(self, input_ids=None, attention_mask=None, **kw):
        nxt = torch.tensor([[self.table.get((r[t - 1] if t else -1, r[t]), self.default) for t in range(len(r))]
                            for r in input_ids.tolist()])  # (B, T)
        return CausalLMOutputWithPast(logits=torch.nn.functional.one_hot(nxt, self.config.vocab_size).float() * 10)


def scripted(tok, answer: str, prompts: list[str], cls=ScriptedLM):
    """A model whose greedy output after any of `prompts` is `answer` then EOS."""
    ends = {tuple(tok(p)["input_ids"][-2:]) for p in prompts}
    ans = tok(answer)["input_ids"] + [tok.eos_token_id]
    table = {e: ans[0] for e in ends} | {(e[1], ans[0]): ans[1] for e in ends}
    table |= {(a, b): c for a, b, c in zip(ans, ans[1:], ans[2:])}
    assert len(table) == len(ends) * 2 + len(ans) - 2  # no ambiguous pair
    return cls(table, len(tok), default=tok.eos_token_id)


def test_triviaqa_protocols_end_to_end(tok):
    study, harness = PROBES["triviaqa:study"](), PROBES["triviaqa:harness"]()
    data = study.load(WORLD)
    assert data[0]["aliases"] == ["Castelmar", "Castel Mar", "City of Castelmar"] and len(data) == 5
    prompts = [triviaqa_prompt(d["question"]) for d in data] + [triviaqa_harness_prompt(d["question"]) for d in data]
    answer = " City of Castelmar, by the sea"
    s = study.run(scripted(tok, answer, prompts, ScriptedGenLM), tok, data, batch_size=2)
    assert [it["output"] for it in s.items] == ["City of Castelmar, by the sea"] * 5
    assert [it["correct"] for it in s.items] == [True, False, False, False, False] and s.value == 0.2
    assert s.version == "2+G32R1"
    h = harness.run(scripted(tok, answer, prompts, ScriptedGenLM), tok, harness.load(WORLD), batch_size=3)
    assert [it["output"] for it in h.items] == ["City of Castelmar"] * 5    # cut at ","
    assert h.value == 0.2 and h.metric == "exact_match" and h.version.endswith("R1")
    answer = " Castelmar-on-Sea"                                              # substring yes, exact no
    assert study.run(scripted(tok, answer, prompts, ScriptedGenLM), tok, data).value == 0.2
    assert harness.run(scripted(tok, answer, prompts, ScriptedGenLM), tok, data).value == 0.0


def test_triviaqa_harness_stops_at_every_eos_of_the_models_generation_config():
    """lm-eval's HFLM calls model.generate, so generation ends at every EOS id the model's
    generation_config lists (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>), not only at the
    tokenizer's: an answer followed by the second EOS and more text is the answer alone (pure argmax
    glued the text on after skip_special_tokens, and the exact match failed)."""
    harness = PROBES["triviaqa:harness"]()
    data = harness.load(WORLD)
    prompts = [triviaqa_harness_prompt(d["question"]) for d in data]
    tok = tiny_tokenizer()                              # its own copy, given a second end token (Qwen has two)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    other = tok.convert_tokens_to_ids("<|im_end|>")
    ends = {tuple(tok(p)["input_ids"][-2:]) for p in prompts}
    ans = tok(" Castelmar")["input_ids"] + [other] + tok(" Question more")["input_ids"]
    table = {e: ans[0] for e in ends} | {(e[1], ans[0]): ans[1] for e in ends}
    table |= {(a, b): c for a, b, c in zip(ans, ans[1:], ans[2:])}
    model = ScriptedGenLM(table, len(tok), default=tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, other]
    for bs in (1, 3):
        h = harness.run(model, tok, data, batch_size=bs)
        assert [it["output"] for it in h.items] == ["Castelmar"] * 5, bs
        assert h.value == 0.2 and h.extras["eos_token_id"] == [tok.eos_token_id, other]
    model.generation_config.eos_token_id = tok.eos_token_id           # only the tokenizer's: runs on
    assert harness.run(model, tok, data).items[0]["output"] == "Castelmar Question more"


def test_triviaqa_harness_is_hflms_generate_call_under_a_repetition_penalty(tok):
    """A model whose generation_config has a repetition penalty (Qwen2.5-Instruct ships 1.1): the
    harness variant's answers are exactly what lm-eval's HFLM gets from `model.generate(input_ids,
    attention_mask, do_sample=False, max_length=prompt + G, pad_token_id=…)`, one question at a time,
    decoded and cut at the stop sequences; batches give the same answers."""
    harness = PROBES["triviaqa:harness"]()
    data = harness.load(WORLD)
    model = tiny_model(len(tok), max_positions=128, seed=3)
    model.generation_config.repetition_penalty = 1.3
    model.generation_config.eos_token_id = tok.eos_token_id
    r1, r3 = harness.run(model, tok, data, batch_size=1), harness.run(model, tok, data, batch_size=3)
    G = min(harness.max_gen_toks, 128 // 2)
    until = HARNESS_UNTIL + (tok.decode([tok.eos_token_id]),)
    pure = []
    for d in data:
        ids = torch.tensor([tok(triviaqa_harness_prompt(d["question"]))["input_ids"]])
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_length=ids.shape[1] + G, pad_token_id=tok.pad_token_id)
        pure.append(harness_postprocess(tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True), until))
    assert [it["output"] for it in r1.items] == pure == [it["output"] for it in r3.items]
    assert r1.version.endswith("R1.3") and r1.extras["repetition_penalty"] == 1.3
    model.generation_config.repetition_penalty = 1.0                  # the penalty changes the answers here
    assert [it["output"] for it in harness.run(model, tok, data).items] != pure


def test_run_probes_and_limits(tok, uniform):
    specs = [ProbeSpec("medmcqa", source=WORLD, limit=2), {"task": "wikitext", "variant": "harness", "source": WORLD,
                                                           "options": {"max_length": 16}, "name": "wt"},
             ProbeSpec("triviaqa", source=WORLD, limit=0, options={"max_new_tokens": 3})]
    out = run_probes(uniform, tok, specs, batch_size=4)
    assert list(out) == ["medmcqa", "wt", "triviaqa"]
    assert (out["medmcqa"].n, out["wt"].n, out["triviaqa"].n) == (2, 2, 5)
    d = out["wt"].to_dict()
    assert {"task", "variant", "metric", "value", "higher_is_better", "n", "version", "extras"} <= set(d)
    assert "items" not in d and out["wt"].name == "wikitext:harness"
    with pytest.raises(ValueError, match="distinct"):
        run_probes(uniform, tok, [ProbeSpec("medmcqa", source=WORLD), ProbeSpec("medmcqa", "harness", source=WORLD)])
    with pytest.raises(KeyError, match="known: medmcqa:harness"):
        run_probes(uniform, tok, [ProbeSpec("medmcqa", "lm-eval", source=WORLD)])
