"""Training, distillation and scoring of the toy Llama models (PyTorch + transformers, CPU).

The teacher learns from ground-truth labels. The distilled student never sees a label: it learns from
the teacher's greedy answers to unlabeled prompts (sequence-level KD) and from the teacher's softened
next-token distributions over those answers (soft-target KD). The baseline student sees the same prompts
with their true answers, for the same number of steps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from bench.toy.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, vocab_size

MAX_POSITIONS = 64


@dataclass(frozen=True)
class Shape:
    """The size of a toy Llama. head_dim = hidden / heads must be one the vLLM CPU backend supports (32+)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Schedule:
    """An optimisation schedule: AdamW with linear warm-up and cosine decay."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 50
    weight_decay: float = 0.01


@dataclass(frozen=True)
class Pair:
    """A prompt and the answer a model should learn to produce (ground truth or the teacher's)."""

    prompt: str
    answer: str


def make_model(shape: Shape, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama of this shape, deterministic for the seed."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size(),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config).float()


def non_embedding_parameters(model: LlamaForCausalLM) -> int:
    """Parameters outside the (tied) token embedding: what sets the compute per token."""
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def encode_batch(pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `<s> prompt answer </s>` ids, attention mask, and labels masked to the answer."""
    rows, label_rows = [], []
    for pair in pairs:
        prompt, answer = [BOS_ID, *encode(pair.prompt)], [*encode(pair.answer), EOS_ID]
        rows.append(prompt + answer)
        label_rows.append([-100] * len(prompt) + answer)
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        ids[index, : len(row)] = torch.tensor(row)
        labels[index, : len(row)] = torch.tensor(label_row)
    return ids, (ids != PAD_ID).long(), labels


def answer_logits(model: LlamaForCausalLM, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at every answer position (predicting answer tokens and `</s>`), and those targets."""
    ids, mask, labels = encode_batch(pairs)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    return logits[keep], targets[keep]


LossFn = Callable[[LlamaForCausalLM, int], torch.Tensor]


def optimise(model: LlamaForCausalLM, schedule: Schedule, loss_at_step: LossFn, log: Callable[[str], None]) -> None:
    """Run the schedule; `loss_at_step(model, step)` draws its own batch and returns the loss."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)

    def lr_factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    model.train()
    running = 0.0
    for step in range(schedule.steps):
        loss = loss_at_step(model, step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % max(1, schedule.steps // 10) == 0:
            log(f"step {step + 1}/{schedule.steps} loss {running:.4f}")
    model.eval()


def label_loss(stream: Iterator[Pair], batch_size: int) -> LossFn:
    """Cross-entropy on ground-truth (or fixed teacher) answers, drawing batches from a stream."""

    def loss(model: LlamaForCausalLM, step: int) -> torch.Tensor:
        logits, targets = answer_logits(model, [next(stream) for _ in range(batch_size)])
        return F.cross_entropy(logits, targets)

    return loss


def distillation_loss(
    pool: Sequence[Pair], soft_targets: Sequence[torch.Tensor], batch_size: int, seed: int, temperature: float
) -> LossFn:
    """Half cross-entropy on the teacher's answers, half KL to the teacher's softened distributions."""
    order = _epoch_order(len(pool), seed)

    def loss(model: LlamaForCausalLM, step: int) -> torch.Tensor:
        indices = [next(order) for _ in range(batch_size)]
        logits, targets = answer_logits(model, [pool[i] for i in indices])
        teacher = torch.cat([soft_targets[i] for i in indices]).float()
        hard = F.cross_entropy(logits, targets)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return 0.5 * hard + 0.5 * temperature**2 * soft

    return loss


def _epoch_order(size: int, seed: int) -> Iterator[int]:
    """Indices of a pool, reshuffled (seeded) every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(size))
        rng.shuffle(order)
        yield from order


def pool_stream(pool: Sequence[Pair], seed: int) -> Iterator[Pair]:
    """The pool in the same seeded epoch order the distillation loss uses."""
    return (pool[i] for i in _epoch_order(len(pool), seed))


@torch.no_grad()
def greedy_answers(
    model: LlamaForCausalLM, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 512
) -> list[str]:
    """Greedy answers (up to `</s>`) for each prompt, batched with left padding."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [[BOS_ID, *encode(p)] for p in prompts[start : start + batch_size]]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[PAD_ID] * (width - len(row)) + row for row in rows])
        out = model.generate(
            input_ids=ids,
            attention_mask=(ids != PAD_ID).long(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
        )
        for row in out[:, width:].tolist():
            answers.append(decode(row[: row.index(EOS_ID)] if EOS_ID in row else row))
    return answers


@torch.no_grad()
def teacher_soft_targets(teacher: LlamaForCausalLM, pool: Sequence[Pair], batch_size: int = 512) -> list[torch.Tensor]:
    """The teacher's logits at each answer position of each pair, stored in float16 to save memory."""
    targets: list[torch.Tensor] = []
    for start in range(0, len(pool), batch_size):
        chunk = pool[start : start + batch_size]
        logits, _ = answer_logits(teacher, chunk)
        sizes = [len(encode(pair.answer)) + 1 for pair in chunk]
        targets.extend(part.half() for part in torch.split(logits, sizes))
    return targets


@torch.no_grad()
def choice_logprobs(model: LlamaForCausalLM, prompt: str, choices: Sequence[str]) -> list[float]:
    """Sum of log-probabilities of each choice as the continuation of the prompt (lm-eval's `acc`)."""
    pairs = [Pair(prompt, choice) for choice in choices]
    ids, mask, labels = encode_batch(pairs)
    logprobs = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    scores = []
    for row, pair in enumerate(pairs):
        # Score the choice's characters only, not the `</s>` that encode_batch appends.
        positions = (targets[row] != -100).nonzero().flatten()[: len(pair.answer)]
        scores.append(logprobs[row, positions, targets[row, positions]].sum().item())
    return scores
