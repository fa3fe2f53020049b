"""An lm-eval filter that makes exact_match score pass@k: any of a document's first k sampled answers correct.

lm-eval 0.4 has majority voting as filters (`take_first_k`, `majority_vote`) but nothing for pass@k, so this
one keeps, per document, the first of its first k answers that equals the target, else its first answer;
exact_match of what it keeps is then 1 exactly when one of the k answers was right. The equality is
exact_match's own with its defaults (no case folding, no regexes): the answer string against the target.

This file is copied beside the sampled toy task (bench/toy/tasks.py), which names it with lm-eval's
`!function pass_at_k.FirstCorrectOfK`: lm-eval imports it from the task directory, so the task runs with plain
`lm_eval --include_path` too, and the directory's fingerprint (part of each cell key) covers this code.
It imports only lm-eval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lm_eval.api.filter import Filter


class FirstCorrectOfK(Filter):
    """Per document: the first of its first `k` answers equal to `doc[target]`, else its first answer.

    `target` names the document field that holds the answer (the field the task's `doc_to_target` renders).
    """

    def __init__(self, k: int, target: str) -> None:
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got {k}")
        self.k = k
        self.target = target

    def apply(self, resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[str]:
        kept = []
        for answers, doc in zip(resps, docs, strict=True):
            first = list(answers)[: self.k]
            if len(first) < self.k:
                raise ValueError(f"pass@{self.k} needs {self.k} answers per document (`repeats`), got {len(first)}")
            kept.append(next((answer for answer in first if answer == str(doc[self.target])), first[0]))
        return kept
