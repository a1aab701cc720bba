"""TriviaQA's study protocol (SMF_SPEC §6) is the study's own call, one question at a time:

    model.generate(do_sample=False, max_new_tokens=32, eos_token_id=tokenizer.eos_token_id)

so the model's generation_config (its repetition penalty) applies; batching, when asked for, gives
the same answers; the `all_eos` option also stops at every EOS id of the generation config."""
import sys
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, RepetitionPenaltyLogitsProcessor
from transformers.modeling_outputs import CausalLMOutputWithPast

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_lm import FIXTURES, tiny_model, tiny_tokenizer  # noqa: E402

from smf_sweep.data.formats import triviaqa_prompt  # noqa: E402
from smf_sweep.probes import scoring  # noqa: E402
from smf_sweep.probes.scoring import PadAwareRepetitionPenalty, hf_generate  # noqa: E402
from smf_sweep.probes.triviaqa import TriviaQAStudy  # noqa: E402

WORLD = f"world:{FIXTURES / 'world'}"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def data():
    return TriviaQAStudy().load(WORLD)


def qwen_like(model, tok, **gen):
    """`model` with a generation_config like Qwen2.5-Instruct's (sampling settings, two EOS ids, penalty 1.1)."""
    cfg = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1,
               eos_token_id=[tok.eos_token_id, 7], pad_token_id=tok.eos_token_id)
    model.generation_config = GenerationConfig(**(cfg | gen))
    return model


def study_call(model, tok, question, max_new_tokens=32, eos=None):
    """The study's code, literally: one question, model.generate, decode(skip_special_tokens).strip()."""
    enc = tok(triviaqa_prompt(question), return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id if eos is None else eos)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def outputs(result):
    return [it["output"] for it in result.items]


def test_generation_config_is_the_models_with_the_studys_settings(tok):
    model = qwen_like(tiny_model(len(tok) + 7), tok, repetition_penalty=1.3, no_repeat_ngram_size=0)
    before = model.generation_config.to_dict()
    gc = TriviaQAStudy().generation_config(model, tok)
    assert (gc.do_sample, gc.max_new_tokens, gc.eos_token_id, gc.pad_token_id) == (False, 32, tok.eos_token_id,
                                                                                   tok.pad_token_id)
    assert gc.repetition_penalty == 1.3                                 # read from the model, not fixed
    assert gc.eos_token_id != model.generation_config.eos_token_id      # the study stops at the tokenizer's EOS
    assert TriviaQAStudy(stop="all_eos").generation_config(model, tok).eos_token_id == [tok.eos_token_id, 7]
    assert model.generation_config.to_dict() == before                  # the model's own config is untouched
    plain = tiny_model(len(tok))                                        # no penalty in its config: 1.0
    assert TriviaQAStudy().generation_config(plain, tok).repetition_penalty == 1.0
    with pytest.raises(ValueError, match="stop must be one of tokenizer_eos, all_eos"):
        TriviaQAStudy(stop="eos")


@pytest.mark.parametrize("penalty", [1.0, 1.1, 1.5])
def test_study_is_the_studys_generate_call(tok, data, penalty):
    model = qwen_like(tiny_model(len(tok) + 7, seed=3), tok, repetition_penalty=penalty)
    r = TriviaQAStudy().run(model, tok, data, batch_size=4)
    assert outputs(r) == [study_call(model, tok, d["question"]) for d in data]
    assert r.version == f"2+G32R{penalty:g}" and r.extras["repetition_penalty"] == penalty


def test_repetition_penalty_from_generation_config_changes_the_output(tok, data):
    got = {}
    for penalty in (1.0, 1.5):
        model = qwen_like(tiny_model(len(tok) + 7, seed=3), tok, repetition_penalty=penalty)
        got[penalty] = outputs(TriviaQAStudy().run(model, tok, data))
    assert got[1.0] != got[1.5]
    no_config = tiny_model(len(tok) + 7, seed=3)        # a model without a penalty = penalty 1.0
    assert outputs(TriviaQAStudy().run(no_config, tok, data)) == got[1.0]


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_batched_equals_one_at_a_time(tok, data, penalty):
    model = qwen_like(tiny_model(len(tok) + 7, seed=5), tok, repetition_penalty=penalty)
    questions = data + [{"question_id": "short", "question": "Q", "aliases": ["x"]},
                        {"question_id": "long", "question": " ".join(d["question"] for d in data), "aliases": ["x"]}]
    one = TriviaQAStudy().run(model, tok, questions, batch_size=3)
    for b in (2, 7):
        many = TriviaQAStudy(batched=True).run(model, tok, questions, batch_size=b)
        assert outputs(many) == outputs(one) and many.version == f"2+G32R{penalty:g}+batched"
    tokens = [tok(triviaqa_prompt(q["question"]))["input_ids"] for q in questions]
    gc = TriviaQAStudy().generation_config(model, tok)
    assert hf_generate(model, tokens, generation_config=gc, batch_size=7) == hf_generate(model, tokens,
                                                                                           generation_config=gc)


class EosAfterAnswer(Qwen2ForCausalLM):
    """After the prompt's last token: the answer's tokens, then EOS with logit 10 and `runner_up` with 9.
    A pad (= EOS) counted as seen would turn EOS's 10 into 10/penalty < 9: the answer would go on."""

    def __init__(self, vocab_size, prompt_end: int, answer: list[int], eos: int, runner_up: int):
        super().__init__(Qwen2Config(vocab_size=vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                     num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512))
        self.prompt_end, self.answer, self.eos, self.runner_up = prompt_end, answer, eos, runner_up
        self.generation_config.use_cache = False  # forward reads the whole sequence

    def forward(self, input_ids=None, attention_mask=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                k = next((j for j in range(len(row[:t + 1]) - 1, -1, -1) if row[j] == self.prompt_end), None)
                n = t - k if k is not None else None  # tokens generated after the prompt's end
                if n is not None and n < len(self.answer):
                    logits[b, t, self.answer[n]] = 10.0
                else:
                    logits[b, t, self.eos], logits[b, t, self.runner_up] = 10.0, 9.0
        return CausalLMOutputWithPast(logits=logits)


def test_pads_never_count_for_the_repetition_penalty(tok, data, monkeypatch):
    end = tok("\nAnswer:")["input_ids"][-1]
    answer = tok(" Castelmar")["input_ids"]
    model = EosAfterAnswer(len(tok), end, answer, tok.eos_token_id, runner_up=tok(" sea")["input_ids"][-1])
    model.generation_config.repetition_penalty = 1.5
    probe = TriviaQAStudy(batched=True)
    one = outputs(TriviaQAStudy().run(model, tok, data))
    assert one == ["Castelmar"] * len(data) == [study_call(model, tok, d["question"]) for d in data]
    assert len({len(tok(triviaqa_prompt(d["question"]))["input_ids"]) for d in data}) > 1  # padding happens
    assert outputs(probe.run(model, tok, data, batch_size=5)) == one

    class CountsPads(PadAwareRepetitionPenalty):  # what a penalty over every input id does
        def __init__(self, penalty, n_pad):
            super().__init__(penalty, torch.zeros_like(n_pad))
    monkeypatch.setattr(scoring, "PadAwareRepetitionPenalty", CountsPads)
    assert outputs(probe.run(model, tok, data, batch_size=5)) != one  # so the equality above is not luck


def test_pad_aware_penalty_is_hfs_on_unpadded_rows():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 9))
    scores = torch.randn(3, 40) * 5                         # ids >= 40: beyond the logits, ignored by both
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.equal(PadAwareRepetitionPenalty(1.3, torch.zeros(3, dtype=torch.long))(ids, scores.clone()), ref)
    padded = torch.cat([torch.full((3, 4), 0), ids], dim=1)  # 4 pads of id 0 in front of every row
    got = PadAwareRepetitionPenalty(1.3, torch.full((3,), 4))(padded, scores.clone())
    assert torch.equal(got, ref)


def test_batching_refuses_settings_that_read_the_padded_input(tok, data):
    model = qwen_like(tiny_model(len(tok) + 7), tok, no_repeat_ngram_size=3)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        TriviaQAStudy(batched=True).run(model, tok, data, batch_size=4)
    assert len(TriviaQAStudy().run(model, tok, data, batch_size=4).items) == len(data)  # one at a time: fine


def test_all_eos_stops_at_every_eos_of_the_generation_config(data):
    tok = tiny_tokenizer()
    tok.add_special_tokens({"eos_token": "<|im_end|>"})     # as Qwen2.5-Instruct: eos <|im_end|>, pad <|endoftext|>
    im_end, endoftext = tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")
    assert im_end != endoftext and tok.pad_token_id == endoftext
    end = tok("\nAnswer:")["input_ids"][-1]
    answer = tok(" Castel")["input_ids"] + [endoftext] + tok(" Mar")["input_ids"]
    model = EosAfterAnswer(len(tok), end, answer, im_end, runner_up=5)
    model.generation_config.eos_token_id = [im_end, endoftext]
    study = TriviaQAStudy().run(model, tok, data)
    assert outputs(study) == ["Castel Mar"] * len(data)    # <|endoftext|> skipped in decoding, generation went on
    assert outputs(study) == [study_call(model, tok, d["question"]) for d in data]
    every = TriviaQAStudy(stop="all_eos").run(model, tok, data)
    assert outputs(every) == ["Castel"] * len(data)
    assert outputs(every) == [study_call(model, tok, d["question"], eos=[im_end, endoftext]) for d in data]
    assert (study.version, every.version) == ("2+G32R1", "2+G32R1+all_eos")
    assert outputs(TriviaQAStudy(stop="all_eos", batched=True).run(model, tok, data, batch_size=3)) == outputs(every)


def test_world_model_batched_equals_one_at_a_time():
    from smf_sweep.world import default_world_dir
    world = default_world_dir()
    if not (world / "world.json").is_file():
        pytest.skip("the embedded world is not built (python -m smf_sweep.world build)")
    from smf_sweep.models import load_model, load_tokenizer
    tok, model = load_tokenizer(str(world / "model")), load_model(str(world / "model"), dtype="float32")
    model.generation_config.repetition_penalty = 1.1
    data = TriviaQAStudy().load(f"world:{world}", limit=48)
    one = TriviaQAStudy().run(model, tok, data)
    assert outputs(one)[:4] == [study_call(model, tok, d["question"]) for d in data[:4]]
    assert outputs(TriviaQAStudy(batched=True).run(model, tok, data, batch_size=16)) == outputs(one)
