"""Loaders for the study's datasets, from the hub or from local copies with the hub's schema.

    from smf_sweep.data import load_medmcqa
    val = load_medmcqa("world:/tmp/world", "validation", limit=1000)   # datasets.Dataset

Every loader takes a source string (docs/contracts.md; resolved by `sources.read_split`) and
returns a `datasets.Dataset` with the hub's columns, filtered and cut as documented.
"""
from __future__ import annotations

from typing import Iterator

import datasets

from .sources import DatasetSpec, read_split

MEDMCQA = DatasetSpec(
    "MedMCQA", "openlifescienceai/medmcqa", "medmcqa",
    ("id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp"))
TRIVIAQA = DatasetSpec(
    "TriviaQA", "mandarjoshi/trivia_qa", "trivia_qa",
    ("question", "question_id", "answer", "answer.aliases"), hub_config="rc.nocontext")
# "Salesforce/wikitext" is the hub's canonical id; the bare legacy id "wikitext" is still a hub source
WIKITEXT = DatasetSpec("WikiText", "Salesforce/wikitext", "wikitext", ("text",), hub_config="wikitext-103-v1")
WIKITEXT_DOCUMENTS = DatasetSpec(
    "WikiText (document level)", "EleutherAI/wikitext_document_level", "wikitext_document_level",
    ("page",), hub_config="wikitext-2-raw-v1")
OASST1 = DatasetSpec(
    "OASST1", "OpenAssistant/oasst1", "oasst1",
    ("message_id", "parent_id", "text", "role", "lang", "rank", "message_tree_id"))

WIKITEXT_CONFIGS = ("wikitext-103-v1", "wikitext-103-raw-v1", "wikitext-2-v1", "wikitext-2-raw-v1")


def first(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first `limit` rows (all when limit is None)."""
    if limit is None or limit >= len(ds):
        return ds
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return ds.select(range(limit))


def load_medmcqa(source: str = "hub", split: str = "validation", *, single_only: bool = True,
                 limit: int | None = None) -> datasets.Dataset:
    """MedMCQA rows; `single_only` keeps choice_type == "single" (the study's filter) before the cut."""
    ds = read_split(source, split, spec=MEDMCQA)
    if single_only:
        ds = ds.filter(lambda t: [x == "single" for x in t], input_columns="choice_type", batched=True)
    return first(ds, limit)


def medmcqa_train_subset(source: str = "hub", *, seed: int, limit: int | None, split: str = "train",
                         single_only: bool = True) -> datasets.Dataset:
    """The study's MedMCQA training rows (SMF_SPEC §6): choice_type == "single", shuffled with the
    run's `seed`, then the first `limit` — `ds.shuffle(seed=seed).select(range(limit))`.

    `limit=None` keeps every filtered row in dataset order (no shuffle); a `limit` above the number
    of rows keeps them all, in the seeded shuffle's order. Not `load_medmcqa(limit=…)`, which takes
    the first rows (the probes' rule)."""
    ds = load_medmcqa(source, split, single_only=single_only, limit=None)
    if limit is None:
        return ds
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return ds.shuffle(seed=seed).select(range(min(limit, len(ds))))


def load_triviaqa(source: str = "hub", split: str = "validation", *, limit: int | None = None) -> datasets.Dataset:
    """TriviaQA rc.nocontext rows (question, answer.aliases, …)."""
    return first(read_split(source, split, spec=TRIVIAQA), limit)


def load_wikitext(source: str = "hub", split: str = "test", *, config: str = "wikitext-103-v1") -> datasets.Dataset:
    """Line-level WikiText (`text`, one line per row, empty lines kept as on the hub).

    `config` picks the hub configuration (wikitext-103-v1, wikitext-103-raw-v1, …); a local source
    holds one configuration and ignores it."""
    if config not in WIKITEXT_CONFIGS:
        raise ValueError(f"unknown WikiText config {config!r}; known: {', '.join(WIKITEXT_CONFIGS)}")
    return read_split(source, split, spec=WIKITEXT, hub_config=config)


def load_wikitext_documents(source: str = "hub", split: str = "test", *,
                            config: str = "wikitext-2-raw-v1") -> datasets.Dataset:
    """Document-level WikiText (`page`, one article per row), lm-evaluation-harness's wikitext data."""
    return read_split(source, split, spec=WIKITEXT_DOCUMENTS, hub_config=config)


def load_oasst1(source: str = "hub", split: str = "train", *, lang: str | None = "en",
                roles: tuple[str, ...] = ("assistant",), max_rank: int | None = 1,
                min_chars: int = 50) -> datasets.Dataset:
    """OASST1 messages after the study's filter: English assistant turns of rank 0..1 with ≥50 chars.

    A message without a rank (None) fails any rank filter, as in the study (`rank in (0.0, 1.0)`);
    `lang=None` or `max_rank=None` switch that part of the filter off."""
    ds = read_split(source, split, spec=OASST1)

    def keep(batch: dict) -> list[bool]:
        rows = zip(batch["lang"], batch["role"], batch["rank"], batch["text"])
        return [(lang is None or lg == lang) and role in roles
                and (max_rank is None or (rank is not None and 0 <= rank <= max_rank))
                and len(text or "") >= min_chars
                for lg, role, rank, text in rows]

    return ds.filter(keep, batched=True)


def oasst1_texts(source: str = "hub", split: str = "train", **filters) -> Iterator[str]:
    """The plain texts of `load_oasst1(source, split, **filters)`, in dataset order."""
    yield from load_oasst1(source, split, **filters)["text"]
