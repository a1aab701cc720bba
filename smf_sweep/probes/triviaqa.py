"""TriviaQA accuracy (rc.nocontext validation): the study's protocol (default) and lm-evaluation-harness's.

study   (QWEN eval_tasks.eval_triviaqa; SMF_SPEC §6): first 1000 questions, one at a time;
        "Question: {q}\\nAnswer:"; `model.generate(do_sample=False, max_new_tokens=32,
        eos_token_id=tokenizer.eos_token_id)`, so the model's generation_config applies, its
        repetition_penalty included (Qwen2.5-Instruct ships 1.1; read from the model, never fixed
        here); decoded with skip_special_tokens, stripped; correct if some non-empty normalised
        alias is a substring of the normalised output. The study's normaliser (not TriviaQA's
        official one): lowercase; `\\b(a|an|the)\\b` -> space; every character outside
        [a-z0-9 .-] -> space; collapse whitespace. Options: `stop="all_eos"` also stops at every
        EOS id of the model's generation_config (the study stops at the tokenizer's only);
        `batched=True` generates left-padded batches (pads never count for the repetition
        penalty), the same answers up to float reduction order.
harness (lm_eval/tasks/triviaqa): every question; "Question: {q}?\\nAnswer:"; HFLM's
        `model.generate(do_sample=False, max_length=prompt + 256, stopping_criteria=until "\\n", ".",
        "," or the tokenizer's EOS string)`, so, as there, the model's generation_config applies: its
        repetition_penalty and every EOS id it lists (Qwen2.5-Instruct: 1.1; <|im_end|>, <|endoftext|>);
        decoded with skip_special_tokens, cut at the first stop sequence, strip; correct if the output
        equals an alias after lowercasing and deleting string.punctuation (exact_match with
        ignore_case, ignore_punctuation). Batches: left-padded with PadAwareRepetitionPenalty, the
        answers of lm_eval's default batch size of 1 (scoring.hf_generate).
"""
from __future__ import annotations

import copy
import re
import string
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
from transformers import GenerationConfig

from ..data import load_triviaqa
from ..data.formats import triviaqa_harness_prompt, triviaqa_prompt
from .base import PROBES, ProbeResult, eval_mode, pad_id, resolve_limit
from .scoring import eos_ids, hf_generate, max_positions

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_OUTSIDE = re.compile(r"[^a-z0-9 .\-]")  # the study keeps letters a-z, digits, space, "." and "-"
_DELETE_PUNCT = str.maketrans("", "", string.punctuation)
HARNESS_UNTIL = ("\n", ".", ",")
STOP_TAIL = 8  # tokens decoded to look for a stop sequence; any match there is a match in the whole output
STOP_RULES = ("tokenizer_eos", "all_eos")  # TriviaQAStudy.stop: the study's rule first


def normalize_answer(text: str) -> str:
    """The study's normaliser, in its order: lowercase; a/an/the (whole words) -> space; every
    character outside [a-z0-9 .-] -> space (so accented letters, "_", "'" and "," go, "." and "-"
    stay); collapse whitespace. Not TriviaQA's official normaliser (that one also deletes "." and "-")."""
    text = _ARTICLES.sub(" ", text.lower())
    return " ".join(_OUTSIDE.sub(" ", text).split())


def alias_in_output(output: str, aliases: Sequence[str]) -> bool:
    """The study's rule: some non-empty normalised alias is a substring of the normalised output."""
    out = normalize_answer(output)
    return any(a and a in out for a in map(normalize_answer, aliases))


def harness_exact_match(output: str, aliases: Sequence[str]) -> bool:
    """lm-evaluation-harness exact_match(ignore_case, ignore_punctuation) against any alias."""
    out = output.lower().translate(_DELETE_PUNCT)
    return any(out == a.lower().translate(_DELETE_PUNCT) for a in aliases)


def harness_postprocess(text: str, until: Sequence[str]) -> str:
    """Cut at the first stop sequence, then strip (the remove_whitespace filter)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text.strip()


def greedy_config(model, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """`model.generate(do_sample=False, max_new_tokens=…, pad_token_id=tokenizer's)` as an explicit
    config: a copy of model.generation_config (repetition_penalty, eos_token_id and all) with those set."""
    own = getattr(model, "generation_config", None)
    gc = copy.deepcopy(own) if own is not None else GenerationConfig()
    gc.do_sample = False
    gc.max_new_tokens = max_new_tokens
    gc.pad_token_id = pad_id(tokenizer)
    gc.repetition_penalty = float(gc.repetition_penalty) if gc.repetition_penalty is not None else 1.0
    return gc


def _rows(ds) -> list[dict[str, Any]]:
    return [{"question_id": q, "question": t, "aliases": list(a["aliases"])}
            for q, t, a in zip(ds["question_id"], ds["question"], ds["answer"])]


def _encode(tokenizer, prompts: Sequence[str], keep: int | None) -> list[list[int]]:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    return ids if keep is None else [x[-keep:] for x in ids]  # left truncation, as the harness does


@PROBES.register("triviaqa:study")
@dataclass(frozen=True)
class TriviaQAStudy:
    task: ClassVar[str] = "triviaqa"
    variant: ClassVar[str] = "study"
    version: ClassVar[str] = "2"  # 2: HF generate with the model's generation_config; the study's normaliser
    metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str] = "mandarjoshi/trivia_qa"
    default_limit: ClassVar[int | None] = 1000
    split: str = "validation"
    max_new_tokens: int = 32
    stop: str = "tokenizer_eos"   # the study: stop at tokenizer.eos_token_id only; "all_eos": also at every
    #                               eos id of model.generation_config (Qwen2.5-Instruct: <|im_end|>, <|endoftext|>)
    batched: bool = False         # False: one question per generate call (the study); True: batches of batch_size

    def __post_init__(self):
        if self.stop not in STOP_RULES:
            raise ValueError(f"TriviaQAStudy.stop must be one of {', '.join(STOP_RULES)}, got {self.stop!r}")

    def load(self, source: str = "hub", limit: int | None = None) -> list[dict[str, Any]]:
        return _rows(load_triviaqa(source, self.split, limit=resolve_limit(limit, self.default_limit)))

    def stop_ids(self, model, tokenizer) -> list[int]:
        """Token ids that end an answer: the tokenizer's EOS (+ the generation_config's EOS ids for "all_eos")."""
        if tokenizer.eos_token_id is None:
            raise ValueError("TriviaQA (study) stops at tokenizer.eos_token_id, and the tokenizer has none")
        ids = [tokenizer.eos_token_id]
        if self.stop == "all_eos":
            ids += eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        return list(dict.fromkeys(ids))

    def generation_config(self, model, tokenizer) -> GenerationConfig:
        """The study's `model.generate(do_sample=False, max_new_tokens=32, eos_token_id=tokenizer.eos_token_id)`
        as an explicit config: a copy of model.generation_config (repetition_penalty and all) with those set."""
        gc = greedy_config(model, tokenizer, self.max_new_tokens)
        stop = self.stop_ids(model, tokenizer)
        gc.eos_token_id = stop[0] if len(stop) == 1 else stop
        return gc

    def run(self, model, tokenizer, data: Sequence[dict], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        """`batch_size` is used only when `batched`; the study generates one question at a time."""
        t0 = time.perf_counter()
        gc = self.generation_config(model, tokenizer)
        P = max_positions(model)
        prompts = _encode(tokenizer, [triviaqa_prompt(r["question"]) for r in data],
                          None if P is None else P - self.max_new_tokens)
        with eval_mode(model):
            gen = hf_generate(model, prompts, generation_config=gc, batch_size=batch_size if self.batched else 1,
                              progress=progress, desc="TriviaQA (study)")
        items = []
        for r, g in zip(data, gen):
            out = tokenizer.decode(g, skip_special_tokens=True).strip()
            items.append({"question_id": r["question_id"], "output": out, "correct": alias_in_output(out, r["aliases"])})
        acc = float(np.mean([it["correct"] for it in items])) if items else float("nan")
        rp = gc.repetition_penalty
        version = (f"{self.version}+G{self.max_new_tokens}R{rp:g}"  # R: the model's repetition penalty
                   + ("" if self.stop == STOP_RULES[0] else f"+{self.stop}") + ("+batched" if self.batched else ""))
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data), version,
                           extras={"repetition_penalty": rp, "max_new_tokens": self.max_new_tokens},
                           items=items, seconds=time.perf_counter() - t0)


@PROBES.register("triviaqa:harness")
@dataclass(frozen=True)
class TriviaQAHarness:
    task: ClassVar[str] = "triviaqa"
    variant: ClassVar[str] = "harness"
    version: ClassVar[str] = "2"  # 2: HF generate under the model's generation_config, as HFLM (1: pure argmax)
    metric: ClassVar[str] = "exact_match"
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str] = "mandarjoshi/trivia_qa"
    default_limit: ClassVar[int | None] = None   # all 17,944 validation questions
    split: str = "validation"
    max_gen_toks: int = 256   # HFLM's default
    max_length: int = 2048    # HFLM's default when set; capped at the model's max_position_embeddings

    def load(self, source: str = "hub", limit: int | None = None) -> list[dict[str, Any]]:
        return _rows(load_triviaqa(source, self.split, limit=resolve_limit(limit, self.default_limit)))

    def run(self, model, tokenizer, data: Sequence[dict], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        L = min(self.max_length, max_positions(model) or self.max_length)
        G = min(self.max_gen_toks, L // 2)  # only a model with < 512 positions generates fewer than 256
        eos_str = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""
        until = HARNESS_UNTIL + ((eos_str,) if eos_str else ())

        def stop(tokens: list[int]) -> bool:  # checked after every token, so the newest few suffice
            text = tokenizer.decode(tokens[-STOP_TAIL:], skip_special_tokens=False)
            return any(u in text for u in until)

        prompts = _encode(tokenizer, [triviaqa_harness_prompt(r["question"]) for r in data], L - G)
        with eval_mode(model):
            gc = greedy_config(model, tokenizer, G)   # HFLM's generate(do_sample=False, …): the model's EOS ids
            gen = hf_generate(model, prompts, generation_config=gc, batch_size=batch_size, stop=stop,
                              progress=progress, desc="TriviaQA (harness)")
        items = []
        for r, g in zip(data, gen):
            out = harness_postprocess(tokenizer.decode(g, skip_special_tokens=True), until)
            items.append({"question_id": r["question_id"], "output": out, "correct": harness_exact_match(out, r["aliases"])})
        acc = float(np.mean([it["correct"] for it in items])) if items else float("nan")
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data),
                           f"{self.version}+L{L}G{G}R{gc.repetition_penalty:g}",
                           extras={"repetition_penalty": gc.repetition_penalty, "eos_token_id": gc.eos_token_id},
                           items=items, seconds=time.perf_counter() - t0)
