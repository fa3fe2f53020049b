"""lm-eval's `local-completions` model with one seed per repeat, registered as `distill-completions`.

Why: lm-eval sends its `seed` model argument with every request, and vLLM's seeded sampling is deterministic
per request. A task with `repeats: k` sends the same prompt k times, so with sampling the k answers came back
identical and maj@k silently equalled the first sample. Here the i-th occurrence of an identical request gets
its own seed, derived from (base seed, i, prompt tokens): the k samples differ, and a rerun gets the same k
samples at the same positions, whatever the concurrency.

How: `generate_until` splits the requests into rounds, round i holding the i-th occurrence of each distinct
(prompt, generation settings); within a round every request is distinct, so its seed is a function of its
content and the round alone, not of the order lm-eval happens to send it in. lm-eval places the i-th clone's
answer at position i of the document's responses (what `take_first_k` reads), and the rounds preserve that.
Rounds run one after the other, each at the model's full concurrency. Greedy requests (temperature 0, the
default) keep the base seed, so their payloads are exactly `local-completions`'. With `batch_size` above 1 a
payload carries several prompts and one seed, from all its prompts: they are distinct within a round, so
they still sample apart, and a rerun at the same batch size gets the same samples.

Importing this module registers the model; lm-eval is imported here, so only the evaluate stage imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

MODEL_NAME = "distill-completions"
_SEED_MODULUS = 2**31  # vLLM takes any int; a 31-bit seed is valid for every generator it may use


def repeat_seed(base_seed: int, occurrence: int, prompt: Any) -> int:
    """The seed of the `occurrence`-th (0-based) identical request for `prompt` (token ids or text)."""
    content = json.dumps([base_seed, occurrence, prompt], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "big") % _SEED_MODULUS


def occurrence_rounds(keys: list[str]) -> list[list[int]]:
    """Indices of `keys` grouped into rounds: round i lists, in input order, the i-th occurrence of each key."""
    seen: Counter[str] = Counter()
    rounds: list[list[int]] = []
    for index, key in enumerate(keys):
        occurrence = seen[key]
        seen[key] += 1
        if occurrence == len(rounds):
            rounds.append([])
        rounds[occurrence].append(index)
    return rounds


@register_model(MODEL_NAME)
class DistillCompletionsAPI(LocalCompletionsAPI):
    """`local-completions` whose repeated sampled requests each get their own, reproducible seed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._round = 0

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        keys = [json.dumps(request.args[:2], sort_keys=True, default=str) for request in requests]
        answers: list[str | None] = [None] * len(requests)
        for round_index, indices in enumerate(occurrence_rounds(keys)):
            self._round = round_index
            for index, answer in zip(
                indices, super().generate_until([requests[i] for i in indices], disable_tqdm), strict=True
            ):
                answers[index] = answer
        self._round = 0
        return answers  # type: ignore[return-value]  # every index belongs to exactly one round

    def _create_payload(
        self, messages: Any, generate: bool = False, gen_kwargs: dict | None = None, seed: int = 1234, **kwargs: Any
    ) -> dict:
        if generate and gen_kwargs and float(gen_kwargs.get("temperature", 0) or 0) > 0:
            seed = repeat_seed(seed, self._round, messages)
        return super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, **kwargs)
