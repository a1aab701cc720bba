"""Prompt and training-text formats, shared by the training loop and the probes (SMF_SPEC §6).

The study's (QWEN) MedMCQA text, no chat template:

    Medical exam question:
    Question: {q}
    A. {opa}
    B. {opb}
    C. {opc}
    D. {opd}
    Answer: {X}. {option}            <- training text; the probe scores " {X}. {option}" after "Answer:"
    Explanation: {exp}               <- only when exp is non-empty

lm-evaluation-harness's medmcqa (utils_medmcqa.doc_to_text) and triviaqa (default.yaml) prompts
are reproduced literally below; tests assert the exact strings.
"""
from __future__ import annotations

from typing import Any, Mapping

LETTERS = "ABCD"
OPTION_COLUMNS = ("opa", "opb", "opc", "opd")
HARNESS_MEDMCQA_TARGETS = (" A", " B", " C", " D")  # target_delimiter " " + doc_to_choice


def medmcqa_options(row: Mapping[str, Any]) -> list[str]:
    return [row[c] for c in OPTION_COLUMNS]


def medmcqa_answer_index(row: Mapping[str, Any]) -> int:
    """`cop` as 0..3; the hub stores an int 0..3, some copies a letter."""
    cop = row["cop"]
    if isinstance(cop, str) and cop.strip().upper() in tuple(LETTERS):
        return LETTERS.index(cop.strip().upper())
    if isinstance(cop, (int, float)) and not isinstance(cop, bool) and int(cop) == cop and 0 <= cop <= 3:
        return int(cop)
    raise ValueError(f"MedMCQA row {row.get('id', '?')!r}: cop must be 0..3 or A..D, got {cop!r}")


def medmcqa_prompt(row: Mapping[str, Any]) -> str:
    """The study's prompt, ending in "Answer:" (no trailing space)."""
    a, b, c, d = medmcqa_options(row)
    return f"Medical exam question:\nQuestion: {row['question']}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def medmcqa_target(row: Mapping[str, Any], i: int) -> str:
    """The study's continuation for option i: " X. {option}"."""
    return f" {LETTERS[i]}. {medmcqa_options(row)[i]}"


def medmcqa_explanation(row: Mapping[str, Any]) -> str:
    return (row.get("exp") or "").strip()


def medmcqa_train_text(row: Mapping[str, Any]) -> str:
    """Prompt + the correct option (+ "\\nExplanation: {exp}" when present): the LM training text."""
    text = medmcqa_prompt(row) + medmcqa_target(row, medmcqa_answer_index(row))
    exp = medmcqa_explanation(row)
    return (text + f"\nExplanation: {exp}") if exp else text


def medmcqa_harness_prompt(row: Mapping[str, Any]) -> str:
    """lm-evaluation-harness medmcqa doc_to_text: "Question: …\\nChoices:\\nA. …\\n…D. …\\nAnswer:"."""
    lines = "".join(f"{x}. {o}\n" for x, o in zip(LETTERS, medmcqa_options(row)))
    return f"Question: {row['question']}\nChoices:\n{lines}Answer:"


def triviaqa_prompt(question: str) -> str:
    """The study's TriviaQA prompt."""
    return f"Question: {question}\nAnswer:"


def triviaqa_harness_prompt(question: str) -> str:
    """lm-evaluation-harness triviaqa doc_to_text: note the "?" it appends to every question."""
    return f"Question: {question}?\nAnswer:"
