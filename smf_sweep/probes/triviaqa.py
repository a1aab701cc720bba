"""TriviaQA accuracy (rc.nocontext validation): the study's protocol (default) and lm-evaluation-harness's.

study   (QWEN eval_tasks.eval_triviaqa): first 1000 questions; "Question: {q}\\nAnswer:"; greedy,
        32 new tokens (stop at EOS); correct if some normalised alias is a substring of the
        normalised output. Normaliser: TriviaQA's own (lowercase, punctuation -> space, drop
        a/an/the, collapse whitespace).
harness (lm_eval/tasks/triviaqa): every question; "Question: {q}?\\nAnswer:"; greedy until "\\n", ".",
        "," or EOS (at most 256 tokens), cut at the first of them, strip; correct if the output
        equals an alias after lowercasing and deleting string.punctuation (exact_match with
        ignore_case, ignore_punctuation).
"""
from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ..data import load_triviaqa
from ..data.formats import triviaqa_harness_prompt, triviaqa_prompt
from .base import PROBES, ProbeResult, eval_mode, pad_id, resolve_limit
from .scoring import greedy_generate, max_positions

_PUNCT = frozenset(string.punctuation + "\u2018\u2019\u00b4`")  # TriviaQA's handle_punc set
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DELETE_PUNCT = str.maketrans("", "", string.punctuation)
HARNESS_UNTIL = ("\n", ".", ",")
STOP_TAIL = 8  # tokens decoded to look for a stop sequence; any match there is a match in the whole output


def normalize_answer(text: str) -> str:
    """TriviaQA's normaliser: '_' and punctuation to spaces, lowercase, no articles, single spaces."""
    text = "".join(" " if ch in _PUNCT else ch for ch in text.replace("_", " ").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


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
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str] = "mandarjoshi/trivia_qa"
    default_limit: ClassVar[int | None] = 1000
    split: str = "validation"
    max_new_tokens: int = 32

    def load(self, source: str = "hub", limit: int | None = None) -> list[dict[str, Any]]:
        return _rows(load_triviaqa(source, self.split, limit=resolve_limit(limit, self.default_limit)))

    def run(self, model, tokenizer, data: Sequence[dict], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        P = max_positions(model)
        prompts = _encode(tokenizer, [triviaqa_prompt(r["question"]) for r in data],
                          None if P is None else P - self.max_new_tokens)
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        with eval_mode(model):
            gen = greedy_generate(model, prompts, max_new_tokens=self.max_new_tokens, pad_id=pad_id(tokenizer),
                                  eos_ids=eos, batch_size=batch_size, progress=progress, desc="TriviaQA (study)")
        items = []
        for r, g in zip(data, gen):
            out = tokenizer.decode(g, skip_special_tokens=True).strip()
            items.append({"question_id": r["question_id"], "output": out, "correct": alias_in_output(out, r["aliases"])})
        acc = float(np.mean([it["correct"] for it in items])) if items else float("nan")
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data),
                           f"{self.version}+G{self.max_new_tokens}", items=items, seconds=time.perf_counter() - t0)


@PROBES.register("triviaqa:harness")
@dataclass(frozen=True)
class TriviaQAHarness:
    task: ClassVar[str] = "triviaqa"
    variant: ClassVar[str] = "harness"
    version: ClassVar[str] = "1"
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
            gen = greedy_generate(model, prompts, max_new_tokens=G, pad_id=pad_id(tokenizer), stop=stop,
                                  batch_size=batch_size, progress=progress, desc="TriviaQA (harness)")
        items = []
        for r, g in zip(data, gen):
            out = harness_postprocess(tokenizer.decode(g, skip_special_tokens=True), until)
            items.append({"question_id": r["question_id"], "output": out, "correct": harness_exact_match(out, r["aliases"])})
        acc = float(np.mean([it["correct"] for it in items])) if items else float("nan")
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data),
                           f"{self.version}+L{L}G{G}", items=items, seconds=time.perf_counter() - t0)
