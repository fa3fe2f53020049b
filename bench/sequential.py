"""Adaptive verdicts: stop evaluating a (task, pair) as soon as its verdict is decided, and stop perf repeats
as soon as a cost ratio is on one side of its target, with error rates that hold however often one looks.

Why not re-use the fixed-n intervals of `bench.stats`: an interval that covers 95 % at one planned n covers
far less when it is computed after every chunk and the evaluation stops at the first decisive one (looking
ten times at a 95 % interval gives a false "non-inferior" several times as often as looking once). The
intervals here are *confidence sequences*: with probability at least `confidence`, they cover the truth at
every look at once, so any rule that stops on what it has seen keeps the error rate, including looks that
were never planned (a resumed run, a raised `limit`, a chunk size changed half way).

Quality (per-document scores in [0, 1], e.g. exact match): the gain g_i = student_i - teacher_i (sign
flipped for a lower-is-better metric) lies in [-1, 1]. The confidence sequence is the betting one of
Waudby-Smith & Ramdas (2024, "Estimating means of bounded random variables by betting", JRSS-B 86(1)):
for a candidate mean gain m, a gambler who bets a fraction lambda_i of her capital on g_i > m (and another
on g_i < m) multiplies it by 1 + lambda_i (g_i - m); if the mean is m, her capital is a non-negative
(super)martingale, and by Ville's inequality it ever reaches 2 / alpha with probability at most alpha / 2.
The lower bound at n documents is the largest m whose "above" capital has reached 2 / alpha, the upper
bound likewise, so each side errs with probability at most alpha / 2 over all looks: the same one-sided
error as the fixed-n verdict of `compare.verdict`, which reads a two-sided interval at `confidence`.
Chosen over group-sequential alpha spending (O'Brien-Fleming or Pocock boundaries through Lan-DeMets)
because (1) it is exact at every n for any distribution of g in [-1, 1], while spending boundaries rest on
a normal approximation that fails exactly where distilled students live, with a handful of discordant
documents (the reason `stats.tango_interval` is continuity-corrected); (2) it needs no plan of looks and
no maximum: more documents or blocks can be added later and the guarantee still holds; (3) it adapts to
the variance of g, so a pair that agrees on almost every document is decided after few documents. The
price is width at the last look: alpha spending keeps the final look near the fixed-n interval (OBF) or
pays everywhere (Pocock), the betting sequence is wider than Tango's interval at the full n (1.3x for
4-20 % discordant documents at n = 1,000, 1.14x for 0.5 %; `tests/perf/sequential_demo.py` measures it),
so a truth near the margin ends "inconclusive" more often than the fixed-n verdict (at a true difference
of -0.025, 15 % discordant: non-inferior in 58 % of runs against 75 %), and the error rate sits well below
its bound (1 % at the margin against Tango's 2 %, where looking ten times at Tango's interval gives 7 %).
The bets: lambda_i = sqrt(2 log(2 / alpha) / (sigma_{i-1}^2 N)), the predictable plug-in of Waudby-Smith &
Ramdas tuned to be tightest at the planned number of documents N (their "fixed-time" tuning; validity does
not depend on it, only the width), with sigma_{i-1}^2 a running variance of the gains seen so far and
lambda capped at BET_CAP / (1 +- m) so no single document can take more than BET_CAP of the capital. The
bets do not depend on m except through that cap, so the capital falls monotonically in m (rises for the
"below" side) and the set of m not yet rejected is an interval: the verdict read from the three tests at
m = -margin and m = 0 is the verdict `compare.verdict` reads from the interval.

The stopping rule: a (task, pair) stops at the first look whose verdict is non-inferior, better or
inferior; "better" is reported only if it is already shown at that look, as the question is
non-inferiority. Documents must be seen in a random order: the guarantee is for exchangeable gains, and
datasets are often sorted (by source, length, difficulty). Callers permute documents with a seeded
generator (`document_order`).

Perf repeats: per block, the log-ratio student/teacher (normal, as `stats.t_interval` assumes). The
confidence sequence is Lai's (1976) t-mixture: the scale-invariant likelihood ratio of "mean m" against a
normal mixture over the standardized effect (m - mu) / sigma, with a right-Haar prior on sigma,
M_n = sqrt(c / (n + c)) (V / (V - S^2 / (n + c)))^(n/2), S and V the sum and sum of squares of x_i - m;
a non-negative martingale under "mean m" (Wang & Ramdas 2023, "Anytime-valid t-tests and confidence
sequences for Gaussian means with unknown variance"), so {m : M_n < 1 / alpha} covers at every n at once.
It is unbounded at n = 1 (a single block says nothing about the noise) and has a closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np

from bench.compare import Verdict

# The largest share of her capital the gambler may lose on one document: WSR's truncation c (they use 1/2 or
# 3/4). Larger grows capital faster when the bets are right and loses more on the rare surprising document.
BET_CAP = 0.75
# Prior precision c of the standardized effect in the t-mixture: 0.1 is a prior sd of ~3 block-noise sds.
# Block log-ratios of a distilled student are far apart from 0 in those units (the quickstart's: mean 0.61,
# sd 0.07 over 3 blocks), and a smaller c is what lets 4-5 blocks decide such a ratio.
PERF_PRIOR_PRECISION = 0.1
_BISECTION_STEPS = 50  # halves [-1, 1] to ~1e-15


class Side(IntEnum):
    """Which way a bet goes: on gains above the candidate mean, or below it (the value is the sign)."""

    ABOVE = 1
    BELOW = -1


class RatioDecision(StrEnum):
    """Where a ratio's confidence sequence lies against its target (e.g. 1: is the student faster at all?)."""

    ABOVE = "above"
    BELOW = "below"
    UNDECIDED = "undecided"


_VERDICT_LADDER = np.array([Verdict.BETTER, Verdict.NON_INFERIOR, Verdict.INFERIOR, Verdict.INCONCLUSIVE], dtype=object)
_DECISION_LADDER = np.array([RatioDecision.ABOVE, RatioDecision.BELOW, RatioDecision.UNDECIDED], dtype=object)


@dataclass(frozen=True)
class SequentialVerdicts:
    """Sequential quality verdicts of many replicates (rows of a gains matrix): the verdict at the stopping
    look and how many documents it had used."""

    verdicts: np.ndarray  # object array of Verdict
    documents_used: np.ndarray  # int


@dataclass(frozen=True)
class QualityStop:
    """One (task, metric) of a pair evaluated in chunks and stopped at its first decisive look."""

    verdict: Verdict
    documents_used: int
    documents_planned: int
    diff_mean: float  # mean (student - teacher) over the documents used
    diff_ci_low: float  # the confidence sequence of (student - teacher) at the stopping look
    diff_ci_high: float


@dataclass(frozen=True)
class RatioStop:
    """One ratio (student / teacher over blocks) whose repeats stop at the first decisive block."""

    decision: RatioDecision
    blocks_used: int
    blocks_planned: int
    ratio: float  # exp(mean log-ratio) over the blocks used
    ci_low: float  # the confidence sequence of the ratio at the stopping block; 0 and inf while unbounded
    ci_high: float


def look_counts(documents: int, chunk_documents: int) -> np.ndarray:
    """Documents seen at each look: every `chunk_documents`, and the last look at all `documents`."""
    if documents < 1 or chunk_documents < 1:
        raise ValueError(f"need documents >= 1 and chunk_documents >= 1, got {documents} and {chunk_documents}")
    return np.unique(np.append(np.arange(chunk_documents, documents, chunk_documents), documents))


def document_order(documents: int, seed: int) -> np.ndarray:
    """The seeded random order in which documents are evaluated (see the module docstring: exchangeability)."""
    return np.random.default_rng(seed).permutation(documents)


def bet_fractions(gains: np.ndarray, planned_documents: int, confidence: float) -> np.ndarray:
    """The predictable bets lambda_i of every row of `gains` (replicates x documents), before the cap."""
    gains = np.atleast_2d(np.asarray(gains, dtype=np.float64))
    seen = np.arange(1, gains.shape[1] + 1)
    # WSR's running estimates with one pseudo-document: mean 0 and variance 1 (the most [-1, 1] allows).
    means = np.cumsum(gains, axis=1) / (seen + 1)
    squares = np.square(gains - means, out=means)  # in place: simulations pass thousands of replicates
    before = np.ones_like(gains)  # the variance before document i: predictable
    before[:, 1:] = (1.0 + np.cumsum(squares[:, :-1], axis=1)) / seen[1:]
    return np.sqrt(2 * math.log(2 / (1 - confidence)) / (before * planned_documents))


def log_capital(gains: np.ndarray, bets: np.ndarray, null: np.ndarray | float, side: Side) -> np.ndarray:
    """Log of the capital after each document, betting on gains on `side` of `null`.

    `null` broadcasts against the rows (one candidate mean per replicate, as the bisection needs).
    """
    null = np.asarray(null, dtype=np.float64)
    capped = np.minimum(bets, BET_CAP / (1 + side * null))
    return np.cumsum(np.log1p(side * capped * (gains - null)), axis=-1)


def sequential_verdicts(
    gains: np.ndarray, looks: np.ndarray, margin: float, confidence: float, planned_documents: int | None = None
) -> SequentialVerdicts:
    """The verdict of every row of `gains` (replicates x documents, in evaluation order) at its first
    decisive look, or at the last look; bets tuned to `planned_documents` (default: the row length).

    Non-inferior: "gain <= -margin" rejected; better: "gain <= 0" rejected; inferior: "gain >= -margin"
    rejected; each test at alpha / 2, the same as the sides of the interval `compare.verdict` reads.
    """
    gains = np.atleast_2d(np.asarray(gains, dtype=np.float64))
    bets = bet_fractions(gains, planned_documents or gains.shape[1], confidence)
    threshold = math.log(2 / (1 - confidence))
    at_looks = np.asarray(looks) - 1

    def rejected(null: float, side: Side) -> np.ndarray:
        return log_capital(gains, bets, null, side)[:, at_looks] >= threshold

    better, non_inferior, inferior = (
        rejected(0.0, Side.ABOVE),
        rejected(-margin, Side.ABOVE),
        rejected(-margin, Side.BELOW),
    )
    decisive = non_inferior | inferior  # "better" implies non-inferior: the capital falls in the null
    stop = np.where(decisive.any(axis=1), decisive.argmax(axis=1), len(at_looks) - 1)
    rows = np.arange(gains.shape[0])
    # The first test that holds, in the order `compare.verdict` checks the interval; the last row always holds.
    holds = np.stack([better[rows, stop], non_inferior[rows, stop], inferior[rows, stop], np.ones(rows.size, bool)])
    return SequentialVerdicts(verdicts=_VERDICT_LADDER[holds.argmax(axis=0)], documents_used=np.asarray(looks)[stop])


def confidence_bounds(gains: np.ndarray, planned_documents: int, confidence: float) -> tuple[float, float]:
    """The confidence sequence of the mean gain after all of `gains` (one replicate, in evaluation order)."""
    gains = np.atleast_2d(np.asarray(gains, dtype=np.float64))
    bets = bet_fractions(gains, planned_documents, confidence)
    threshold = math.log(2 / (1 - confidence))

    def bound(side: Side) -> float:
        # The capital of a side falls monotonically as the candidate moves toward that side's far end.
        rejected_end, kept_end = -float(side), float(side)
        for _ in range(_BISECTION_STEPS):
            middle = (rejected_end + kept_end) / 2
            if log_capital(gains, bets, middle, side)[0, -1] >= threshold:
                rejected_end = middle
            else:
                kept_end = middle
        return (rejected_end + kept_end) / 2

    return bound(Side.ABOVE), bound(Side.BELOW)


def in_unit_interval(*values: np.ndarray) -> bool:
    """True when every per-document value lies in [0, 1], the metrics whose gains the sequence can bound."""
    return all(bool(((np.asarray(v) >= 0) & (np.asarray(v) <= 1)).all()) for v in values)


def sequential_quality(
    teacher: np.ndarray,
    student: np.ndarray,
    chunk_documents: int,
    margin: float,
    confidence: float,
    higher_is_better: bool = True,
    planned_documents: int | None = None,
) -> QualityStop:
    """Replay one paired (task, metric), its documents already in evaluation order, chunk by chunk.

    The documents given may be the first chunks of `planned_documents` (default: all of them are given), as
    in a run that is deciding whether to evaluate the next chunk: the bets, and so the verdicts, are those
    of the whole planned run up to the documents given. Per-document values must lie in [0, 1]: the
    confidence sequence needs bounded differences.
    """
    teacher, student = np.asarray(teacher, dtype=np.float64), np.asarray(student, dtype=np.float64)
    if teacher.size == 0 or not in_unit_interval(teacher, student):
        raise ValueError("sequential verdicts need at least one document and per-document values in [0, 1]")
    gains = (student - teacher) if higher_is_better else (teacher - student)
    planned = planned_documents or gains.size
    looks = look_counts(planned, chunk_documents)
    looks = np.union1d(looks[looks < gains.size], [gains.size])  # a look at whatever has been evaluated
    result = sequential_verdicts(gains[np.newaxis], looks, margin, confidence, planned)
    used = int(result.documents_used[0])
    low, high = confidence_bounds(gains[:used], planned, confidence)
    diff_low, diff_high = (low, high) if higher_is_better else (-high, -low)
    return QualityStop(
        verdict=result.verdicts[0], documents_used=used, documents_planned=int(planned),
        diff_mean=float((student[:used] - teacher[:used]).mean()), diff_ci_low=diff_low, diff_ci_high=diff_high,
    )  # fmt: skip


def ratio_confidence_sequence(log_ratios: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Lai's t-mixture confidence sequence of the mean log-ratio after each block, for every row
    (replicates x blocks); -inf / inf where it is still unbounded (always after one block)."""
    x = np.atleast_2d(np.asarray(log_ratios, dtype=np.float64))
    n = np.arange(1, x.shape[1] + 1)
    c = PERF_PRIOR_PRECISION
    mean = np.cumsum(x, axis=1) / n
    variance = np.maximum(np.cumsum(x * x, axis=1) / n - mean * mean, 0.0)  # biased: V / n at m = mean
    # M_n < 1/alpha  <=>  u (1 - A c / (n + c)) < s^2 (A - 1), u = (mean - m)^2, A = (sqrt((n + c) / c) / alpha)^(2/n).
    a = (np.sqrt((n + c) / c) / (1 - confidence)) ** (2 / n)
    room = 1 - a * c / (n + c)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.where(room > 0, np.sqrt(variance * (a - 1) / room), np.inf)
    return mean - half, mean + half


def ratio_decisions(low: np.ndarray, high: np.ndarray, target_ratio: float) -> np.ndarray:
    """Where each interval of a log-ratio lies against ln(target_ratio), as an object array of RatioDecision."""
    target = math.log(target_ratio)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    holds = np.stack([low > target, high < target, np.ones(low.shape, bool)])
    return _DECISION_LADDER[holds.argmax(axis=0)]


def sequential_ratios(log_ratios: np.ndarray, target_ratio: float, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(decisions, blocks used) of every row: the first block at which the confidence sequence of the mean
    log-ratio lies above or below ln(target_ratio), or the last block (UNDECIDED) if none does."""
    low, high = ratio_confidence_sequence(log_ratios, confidence)
    decisions = ratio_decisions(low, high, target_ratio)
    decisive = decisions != RatioDecision.UNDECIDED
    stop = np.where(decisive.any(axis=1), decisive.argmax(axis=1), low.shape[1] - 1)
    return decisions[np.arange(low.shape[0]), stop], stop + 1


def sequential_ratio(student: np.ndarray, teacher: np.ndarray, target_ratio: float, confidence: float) -> RatioStop:
    """Replay one perf ratio over its blocks in block order (blocks with a non-positive value are left out)."""
    student, teacher = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    usable = np.isfinite(student) & np.isfinite(teacher) & (student > 0) & (teacher > 0)
    if not usable.any():
        raise ValueError("no block has a positive value for both models")
    logs = np.log(student[usable] / teacher[usable])
    decisions, used = sequential_ratios(logs[np.newaxis], target_ratio, confidence)
    blocks = int(used[0])
    low, high = ratio_confidence_sequence(logs[np.newaxis], confidence)  # each block's bounds use blocks up to it
    return RatioStop(
        decision=decisions[0], blocks_used=blocks, blocks_planned=int(logs.size),
        ratio=math.exp(float(logs[:blocks].mean())), ci_low=math.exp(low[0, blocks - 1]),
        ci_high=math.exp(high[0, blocks - 1]),
    )  # fmt: skip
