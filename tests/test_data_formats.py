"""The prompt and training-text formats, as literal strings (SMF_SPEC §6, lm-evaluation-harness)."""
import pytest

from smf_sweep.data.formats import (HARNESS_MEDMCQA_TARGETS, medmcqa_answer_index, medmcqa_harness_prompt,
                                    medmcqa_prompt, medmcqa_target, medmcqa_train_text, triviaqa_harness_prompt,
                                    triviaqa_prompt)

ROW = {"id": "x1", "question": "Which drug treats vorlax fever?", "opa": "Zentamir", "opb": "Quolidone",
       "opc": "Brexafen", "opd": "Morvatine", "cop": 1, "choice_type": "single",
       "exp": "  Quolidone is first-line. ", "subject_name": "Pharmacology", "topic_name": None}

STUDY_PROMPT = ("Medical exam question:\nQuestion: Which drug treats vorlax fever?\nA. Zentamir\nB. Quolidone\n"
                "C. Brexafen\nD. Morvatine\nAnswer:")


def test_study_prompt_target_and_training_text():
    assert medmcqa_prompt(ROW) == STUDY_PROMPT
    assert [medmcqa_target(ROW, i) for i in range(4)] == [" A. Zentamir", " B. Quolidone", " C. Brexafen",
                                                          " D. Morvatine"]
    assert medmcqa_train_text(ROW) == STUDY_PROMPT + " B. Quolidone\nExplanation: Quolidone is first-line."
    for exp in (None, "", "   "):
        assert medmcqa_train_text({**ROW, "exp": exp}) == STUDY_PROMPT + " B. Quolidone"


def test_harness_prompts_are_the_harness_strings():
    assert medmcqa_harness_prompt(ROW) == ("Question: Which drug treats vorlax fever?\nChoices:\nA. Zentamir\n"
                                           "B. Quolidone\nC. Brexafen\nD. Morvatine\nAnswer:")
    assert HARNESS_MEDMCQA_TARGETS == (" A", " B", " C", " D")
    assert triviaqa_prompt("Who wrote Hamlet?") == "Question: Who wrote Hamlet?\nAnswer:"
    assert triviaqa_harness_prompt("Who wrote Hamlet") == "Question: Who wrote Hamlet?\nAnswer:"
    assert triviaqa_harness_prompt("Who wrote Hamlet?") == "Question: Who wrote Hamlet??\nAnswer:"  # sic


def test_answer_index():
    assert [medmcqa_answer_index({**ROW, "cop": c}) for c in (0, 3, "b", "D")] == [0, 3, 1, 3]
    for bad in (4, -1, "E", None, True):
        with pytest.raises(ValueError, match="x1"):
            medmcqa_answer_index({**ROW, "cop": bad})
