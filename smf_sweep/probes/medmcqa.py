"""MedMCQA accuracy: the study's protocol (default) and lm-evaluation-harness's.

study   (QWEN eval_tasks.eval_medmcqa, score_mode answer_norm): validation, choice_type single,
        first 1000; prompt ends "Answer:"; each option " X. {option}" scored by the MEAN
        log-likelihood of its tokens; argmax, ties to the lowest index.
harness (lm_eval/tasks/medmcqa): whole validation split (no choice_type filter); prompt
        "Question: …\\nChoices:\\nA. …\\nAnswer:"; SUM log-likelihood of " A".." D"; acc (and
        acc_norm, which divides by the choice's length in characters: 1 for every letter).

Both score a question's four options with the question's prefix run once and its KV cache reused
(`share_prefix`, default; `scoring.grouped_logprobs`): the same log-likelihoods as one full pass per
option (`share_prefix=False`, the original path) to float tolerance, so the versions did not change.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ..data import load_medmcqa
from ..data.formats import (HARNESS_MEDMCQA_TARGETS, medmcqa_answer_index, medmcqa_harness_prompt,
                            medmcqa_prompt, medmcqa_target)
from .base import PROBES, ProbeResult, eval_mode, pad_id, resolve_limit
from .scoring import encode_pair, grouped_logprobs, max_positions


def first_argmax(scores: Sequence[float]) -> int:
    """Index of the highest score; exact ties go to the lowest index."""
    return int(np.argmax(np.asarray(scores, dtype=np.float64)))


def _accuracy(rows: Sequence[dict], scores: list[list[float]]) -> tuple[float, list[dict]]:
    items = []
    for row, s in zip(rows, scores):
        gold, pred = medmcqa_answer_index(row), first_argmax(s)
        items.append({"id": row.get("id"), "gold": gold, "pred": pred, "scores": [float(x) for x in s]})
    acc = float(np.mean([it["pred"] == it["gold"] for it in items])) if items else float("nan")
    return acc, items


@PROBES.register("medmcqa:study")
@dataclass(frozen=True)
class MedMCQAStudy:
    task: ClassVar[str] = "medmcqa"
    variant: ClassVar[str] = "study"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str] = "openlifescienceai/medmcqa"
    default_limit: ClassVar[int | None] = 1000
    split: str = "validation"      # the test split has no labels
    single_only: bool = True       # the study keeps choice_type == "single"
    share_prefix: bool = True      # run the prompt once per question (False: once per option; same numbers)

    def load(self, source: str = "hub", limit: int | None = None) -> list[dict[str, Any]]:
        lim = resolve_limit(limit, self.default_limit)
        return load_medmcqa(source, self.split, single_only=self.single_only, limit=lim).to_list()

    def run(self, model, tokenizer, data: Sequence[dict], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        groups = [[encode_pair(tokenizer, medmcqa_prompt(r), medmcqa_target(r, i), add_special_tokens=False)
                   for i in range(4)] for r in data]
        with eval_mode(model):
            lps = grouped_logprobs(model, groups, pad_id=pad_id(tokenizer), share_prefix=self.share_prefix,
                                   batch_size=batch_size, max_length=max_positions(model), progress=progress,
                                   desc="MedMCQA (study)")
        means = [float(lp.sum() / len(lp)) for lp in lps]  # float64: equal tokens give exactly equal means
        acc, items = _accuracy(data, [means[4 * q:4 * q + 4] for q in range(len(data))])
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data),
                           self.version, items=items,
                           seconds=time.perf_counter() - t0)


@PROBES.register("medmcqa:harness")
@dataclass(frozen=True)
class MedMCQAHarness:
    task: ClassVar[str] = "medmcqa"
    variant: ClassVar[str] = "harness"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str] = "openlifescienceai/medmcqa"
    default_limit: ClassVar[int | None] = None   # the harness scores the whole validation split
    split: str = "validation"
    share_prefix: bool = True      # run the prompt once per question (False: once per option; same numbers)

    def load(self, source: str = "hub", limit: int | None = None) -> list[dict[str, Any]]:
        lim = resolve_limit(limit, self.default_limit)
        return load_medmcqa(source, self.split, single_only=False, limit=lim).to_list()

    def run(self, model, tokenizer, data: Sequence[dict], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        groups = [[encode_pair(tokenizer, medmcqa_harness_prompt(r), t, add_special_tokens=True)
                   for t in HARNESS_MEDMCQA_TARGETS] for r in data]
        with eval_mode(model):
            lps = grouped_logprobs(model, groups, pad_id=pad_id(tokenizer), share_prefix=self.share_prefix,
                                   batch_size=batch_size, max_length=max_positions(model), progress=progress,
                                   desc="MedMCQA (harness)")
        sums = [float(lp.sum()) for lp in lps]
        per_q = [sums[4 * q:4 * q + 4] for q in range(len(data))]
        acc, items = _accuracy(data, per_q)
        lengths = np.array([len(t.lstrip(" ")) for t in HARNESS_MEDMCQA_TARGETS], dtype=np.float64)  # doc_to_choice
        acc_norm = float(np.mean([first_argmax(np.array(s) / lengths) == it["gold"]
                                  for s, it in zip(per_q, items)])) if items else float("nan")
        return ProbeResult(self.task, self.variant, self.metric, acc, self.higher_is_better, len(data),
                           self.version, extras={"acc_norm": acc_norm}, items=items,
                           seconds=time.perf_counter() - t0)
