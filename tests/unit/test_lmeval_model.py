"""distill-completions: the i-th identical request gets its own seed, the same one on every run."""

from __future__ import annotations

from bench.lmeval_model import MODEL_NAME, occurrence_rounds, repeat_seed


def test_rounds_hold_the_ith_occurrence_of_each_request_in_input_order() -> None:
    # lm-eval sends a document's k repeats as k identical requests; here doc "a" 3 times, "b" twice.
    assert occurrence_rounds(["a", "b", "a", "a", "b"]) == [[0, 1], [2, 4], [3]]
    assert occurrence_rounds(["a", "b", "c"]) == [[0, 1, 2]]  # a greedy task: one round, nothing changes
    assert occurrence_rounds([]) == []


def test_repeat_seeds_differ_by_occurrence_and_prompt_and_are_reproducible() -> None:
    prompt = [[1, 4, 5]]
    seeds = [repeat_seed(0, occurrence, prompt) for occurrence in range(9)]
    assert len(set(seeds)) == 9
    assert seeds == [repeat_seed(0, occurrence, [[1, 4, 5]]) for occurrence in range(9)]
    assert repeat_seed(0, 0, [[1, 4, 6]]) != seeds[0]  # another document: another stream
    assert repeat_seed(1, 0, prompt) != seeds[0]  # another run seed
    assert all(0 <= seed < 2**31 for seed in seeds)


def test_registered_with_lm_eval() -> None:
    from lm_eval.api.registry import get_model

    from bench.lmeval_model import DistillCompletionsAPI

    assert get_model(MODEL_NAME) is DistillCompletionsAPI
