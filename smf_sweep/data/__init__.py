"""Datasets of the study (MedMCQA, TriviaQA, WikiText, OASST1) from the hub or local copies.

Sources, the world layout and the schemas are in docs/contracts.md; prompt and training-text
formats in `formats`.
"""
from .formats import (HARNESS_MEDMCQA_TARGETS, LETTERS, medmcqa_answer_index, medmcqa_harness_prompt,
                      medmcqa_options, medmcqa_prompt, medmcqa_target, medmcqa_train_text, triviaqa_harness_prompt,
                      triviaqa_prompt)
from .loaders import (MEDMCQA, OASST1, TRIVIAQA, WIKITEXT, WIKITEXT_DOCUMENTS, load_medmcqa, load_oasst1,
                      load_triviaqa, load_wikitext, load_wikitext_documents, medmcqa_train_subset, oasst1_texts)
from .sources import DataError, DatasetSpec, read_split, resolve_source

__all__ = [
    "DataError", "DatasetSpec", "HARNESS_MEDMCQA_TARGETS", "LETTERS", "MEDMCQA", "OASST1", "TRIVIAQA", "WIKITEXT",
    "WIKITEXT_DOCUMENTS", "load_medmcqa", "load_oasst1", "load_triviaqa", "load_wikitext", "load_wikitext_documents",
    "medmcqa_answer_index", "medmcqa_harness_prompt", "medmcqa_options", "medmcqa_prompt", "medmcqa_target",
    "medmcqa_train_subset", "medmcqa_train_text", "oasst1_texts", "read_split", "resolve_source",
    "triviaqa_harness_prompt", "triviaqa_prompt",
]
