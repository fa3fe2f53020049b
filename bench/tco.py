"""Total cost of ownership: what making a student cost, and the output volume after which serving it instead of
its teacher has paid that back (the break-even point).

Distillation cost = training (`gpu_hours` × the price table's $/device-hour, or a stated `usd`) + the teacher
tokens generated for it × the teacher's $/Mtok as measured in this run.

Break-even. Per block b of a workload, the saving per million output tokens is s_b = teacher_b − student_b
($/Mtok, both from the same block: the same interleaved trial). Its mean over blocks carries a t-interval
(`stats.t_interval`, as for the cost ratios). The break-even volume is cost / saving, in millions of output
tokens; its interval is [cost / s_high, cost / s_low]. When the saving's interval reaches 0 the volume has no
upper bound (`ci_high_mtok` is None); when the saving itself is ≤ 0 the student never pays back
(`mtok` is None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.config import DistillationConfig
from bench.cost import TOKENS_PER_MTOK, PriceTable
from bench.stats import t_interval


@dataclass(frozen=True)
class BreakEven:
    """The saving per million output tokens (teacher − student, $/Mtok) and the volume that repays the
    distillation cost, in millions of output tokens; see the module docstring for the None cases."""

    distillation_usd: float
    saving_usd_per_mtok: float
    saving_ci_low: float | None
    saving_ci_high: float | None
    mtok: float | None  # None: the student saves nothing per token, so it never pays back
    ci_low_mtok: float | None
    ci_high_mtok: float | None  # None: not bounded at this confidence (the saving's interval reaches 0)
    blocks: int


def training_usd(distillation: DistillationConfig, prices: PriceTable) -> float | None:
    """What training the student cost in US dollars (`usd`, or `gpu_hours` at the price table's rate); 0 when
    only teacher tokens are declared; None for a device type the table lacks. Priced when the run starts and
    stored in the `models` table, so a comparison never needs the price table."""
    if distillation.gpu_hours is None:
        return distillation.usd or 0.0
    price = prices.price(distillation.device_type or "")
    return None if price is None else distillation.gpu_hours * price.usd_per_hour


def distillation_usd(
    training: float | None, teacher_tokens: int | None, teacher_usd_per_mtok: float | None
) -> float | None:
    """Training plus the teacher tokens generated for the student at the teacher's measured $/Mtok; None when a
    part cannot be priced (no training price, or teacher tokens without a measured teacher $/Mtok)."""
    if training is None:
        return None
    if not teacher_tokens:
        return training
    if teacher_usd_per_mtok is None:
        return None
    return training + teacher_tokens / TOKENS_PER_MTOK * teacher_usd_per_mtok


def break_even(
    cost_usd: float, teacher_usd_per_mtok: np.ndarray, student_usd_per_mtok: np.ndarray, confidence: float
) -> BreakEven | None:
    """The break-even volume from per-block $/Mtok of teacher and student (paired by block; blocks where
    either is missing are left out); None without a usable block."""
    teacher = np.asarray(teacher_usd_per_mtok, dtype=np.float64)
    student = np.asarray(student_usd_per_mtok, dtype=np.float64)
    usable = np.isfinite(teacher) & np.isfinite(student)
    if not usable.any():
        return None
    savings = teacher[usable] - student[usable]
    saving = float(savings.mean())
    interval = t_interval(savings, confidence)
    low, high = interval if interval is not None else (None, None)
    return BreakEven(
        distillation_usd=cost_usd,
        saving_usd_per_mtok=saving,
        saving_ci_low=low,
        saving_ci_high=high,
        mtok=_volume(cost_usd, saving),
        ci_low_mtok=_volume(cost_usd, high) if high is not None else None,
        ci_high_mtok=_volume(cost_usd, low) if low is not None else None,
        blocks=int(usable.sum()),
    )


def _volume(cost_usd: float, saving_usd_per_mtok: float | None) -> float | None:
    """Millions of output tokens that repay `cost_usd` at a saving per Mtok; None when nothing is saved."""
    if saving_usd_per_mtok is None or saving_usd_per_mtok <= 0:
        return None
    return cost_usd / saving_usd_per_mtok
