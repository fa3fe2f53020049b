"""Prompts and scoring of the R1 tasks: the DeepSeek-R1 paper's protocol for AIME 2024, MATH-500 and GPQA Diamond.

Protocol (DeepSeek-R1 README, "Evaluation Results" and "Usage Recommendations", github.com/deepseek-ai/DeepSeek-R1):
temperature 0.6, top-p 0.95, at most 32,768 generated tokens, k samples per question, pass@1 = the share of the
k samples that are correct, averaged over questions; no system prompt; math prompts ask for the final answer in
\\boxed{}; every response starts with "<think>\\n". GPQA Diamond uses the simple-evals multiple-choice prompt,
which the paper names for it.

The prompt is written in the chat format all R1 models share (DeepSeek-R1 and every R1-Distill model have the
same special tokens; lm-eval adds the tokenizer's BOS): "<｜User｜>{question}<｜Assistant｜><think>\\n". Other
model families need their own template.

How k samples become one score per question: the task's `repeats` (distill-bench sets it from
tasks[].samples_per_question) makes lm-eval send each question k times; the `keep_every_sample` filter hands
all k responses to `process_results`, which scores each one and returns their mean as `pass_at_1`. One
number per question is what distill-bench's paired statistics need (a bootstrap over questions).

A response is judged on its final answer: the text after the last "</think>" (the whole response when the
model never closed its reasoning, e.g. cut at the token budget).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable
from typing import Any

from lm_eval.tasks.hendrycks_math.utils import is_equiv, last_boxed_only_string, remove_boxed

USER, ASSISTANT, THINK_OPEN, THINK_CLOSE = "<｜User｜>", "<｜Assistant｜>", "<think>\n", "</think>"
MATH_DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."
GPQA_TEMPLATE = (  # simple-evals' QUERY_TEMPLATE_MULTICHOICE
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
GPQA_ANSWER = re.compile(r"(?i)Answer[ \t]*:[ \t]*\$?([A-D])\$?")  # simple-evals' ANSWER_PATTERN_MULTICHOICE
LETTERS = "ABCD"


def r1_prompt(user_message: str) -> str:
    """One user turn in the R1 chat format, with the assistant's reasoning opened."""
    return f"{USER}{user_message}{ASSISTANT}{THINK_OPEN}"


def final_answer(response: str) -> str:
    """The part of a response after its reasoning (all of it when the reasoning never closed)."""
    return response.rsplit(THINK_CLOSE, 1)[-1]


def boxed_answer(response: str) -> str | None:
    """The content of the last \\boxed{...} of the final answer, or None."""
    boxed = last_boxed_only_string(final_answer(response))
    if boxed is None:
        return None
    try:
        return remove_boxed(boxed)
    except AssertionError:  # a malformed box, e.g. "\\boxed" at the very end
        return None


def math_correct(response: str, gold: str) -> bool:
    """Whether the boxed final answer equals the gold answer after MATH's normalisation (Hendrycks et al.)."""
    answer = boxed_answer(response)
    return answer is not None and bool(is_equiv(answer, str(gold)))


def gpqa_correct(response: str, gold_letter: str) -> bool:
    """Whether the last 'Answer: X' line of the final answer names the gold letter."""
    letters = GPQA_ANSWER.findall(final_answer(response))
    return bool(letters) and letters[-1].upper() == gold_letter


def pass_at_1(responses: Iterable[str], correct: Callable[[str], bool]) -> float:
    """The share of a question's samples that are correct."""
    verdicts = [correct(response) for response in responses]
    return sum(verdicts) / len(verdicts)


def keep_every_sample(resps: Iterable[list[str]], docs: Iterable[dict]) -> Iterable[list[str]]:
    """lm-eval filter: keep all k responses of each question (the default filter keeps the first only)."""
    return resps


# -- AIME 2024 (Maxwell-Jia/AIME_2024: Problem, Answer) --------------------------------------------------


def aime_prompt(doc: dict[str, Any]) -> str:
    return r1_prompt(f"{doc['Problem']}\n{MATH_DIRECTIVE}")


def aime_results(doc: dict[str, Any], results: list[list[str]]) -> dict[str, float]:
    return {"pass_at_1": pass_at_1(results[0], lambda response: math_correct(response, doc["Answer"]))}


# -- MATH-500 (HuggingFaceH4/MATH-500: problem, answer) ----------------------------------------------------


def math500_prompt(doc: dict[str, Any]) -> str:
    return r1_prompt(f"{doc['problem']}\n{MATH_DIRECTIVE}")


def math500_results(doc: dict[str, Any], results: list[list[str]]) -> dict[str, float]:
    return {"pass_at_1": pass_at_1(results[0], lambda response: math_correct(response, doc["answer"]))}


# -- GPQA Diamond (Idavidrein/gpqa, gpqa_diamond: Question, Correct Answer, Incorrect Answer 1-3) ------------


def gpqa_choices(doc: dict[str, Any]) -> dict[str, str]:
    """The four choices in an order fixed by the question's text, and the gold letter.

    The order is seeded by the question itself, so every model and every run sees the same order (the paired
    comparison needs that) without depending on how many random numbers were drawn before this document.
    """
    options = [doc["Correct Answer"], doc["Incorrect Answer 1"], doc["Incorrect Answer 2"], doc["Incorrect Answer 3"]]
    options = [option.strip() for option in options]
    order = list(range(len(options)))
    random.Random(hashlib.sha256(doc["Question"].encode()).digest()).shuffle(order)
    shuffled = {letter: options[index] for letter, index in zip(LETTERS, order, strict=True)}
    return {**shuffled, "gold": LETTERS[order.index(0)]}


def gpqa_prompt(doc: dict[str, Any]) -> str:
    choices = gpqa_choices(doc)
    return r1_prompt(GPQA_TEMPLATE.format(question=doc["Question"].strip(), **choices))


def gpqa_target(doc: dict[str, Any]) -> str:
    return gpqa_choices(doc)["gold"]


def gpqa_results(doc: dict[str, Any], results: list[list[str]]) -> dict[str, float]:
    gold = gpqa_target(doc)
    return {"pass_at_1": pass_at_1(results[0], lambda response: gpqa_correct(response, gold))}
