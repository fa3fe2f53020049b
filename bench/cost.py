"""The price table, and the money, energy and compute arithmetic of a measured load level.

$ per million output tokens is what the billed devices cost while they produce tokens at the measured
throughput: devices_billed × $/device-hour ÷ 3600 ÷ (output tokens/s) × 1e6. It assumes on-demand billing
for the whole measured time with no idle time and no other tenants, so it compares models fairly on the
same hardware; it is not a forecast of a real bill.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from bench.config import HardwareConfig, Section
from bench.configfile import ConfigError, error_lines, read_yaml

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MTOK = 1e6
FLOPS_PER_TFLOP = 1e12
FLOPS_PER_PARAMETER_PER_TOKEN = 2.0  # one multiply and one add per weight a token passes through
MAX_PEAK_TFLOPS = 1e6  # a million TFLOP/s per device: far above any accelerator; a typo in a unit fails here


class DevicePrice(Section):
    """The on-demand price of one device (one GPU, or one vCPU for `cpu-core`) for one hour."""

    usd_per_hour: float = Field(ge=0, allow_inf_nan=False, description="US dollars per device-hour, e.g. 6.155.")
    source: str = Field(min_length=1, description="Provider and page the price was read from.")
    date: datetime.date = Field(description="When the price was read, YYYY-MM-DD.")
    note: str | None = Field(None, description="Anything a reader needs to judge the price.")
    verified: Literal["provider-page", "third-party", "unverified"] = Field(
        "unverified",
        description=(
            "How the number was checked: `provider-page` (matched on a copy of the provider's own page), "
            "`third-party` (matched in a third party's copy of the provider's page or price API, named in "
            "`checked_against`), or `unverified` (recalled, not checked; the default)."
        ),
    )
    checked_against: str | None = Field(
        None, min_length=1, description="Address of the page or file the number was matched against."
    )
    checked: datetime.date | None = Field(
        None, description="Date that page or file shows, else the date it was read, YYYY-MM-DD."
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        le=MAX_PEAK_TFLOPS,
        allow_inf_nan=False,
        description="Dense BF16 tensor peak of one device in TFLOP/s (no 2:4 sparsity), e.g. 989.4 for an H100 "
        "SXM; `plan --estimate` divides compute by it. Absent: compute time is not estimated.",
    )
    peak_source: str | None = Field(None, min_length=1, description="Where peak_tflops was read.")

    @model_validator(mode="after")
    def _check_verification(self) -> DevicePrice:
        evidence = self.checked_against is not None, self.checked is not None
        if self.verified == "unverified" and any(evidence):
            raise ValueError("checked_against and checked name a check: set verified, or remove them")
        if self.verified != "unverified" and not all(evidence):
            raise ValueError(f"verified is {self.verified!r}: checked_against and checked are both required")
        if (self.peak_tflops is None) != (self.peak_source is None):
            raise ValueError("peak_tflops and peak_source go together (a peak needs its source)")
        return self


class PriceTable(Section):
    """Prices by device type; the keys are what `hardware.device_type` names."""

    prices: dict[str, DevicePrice]

    def price(self, device_type: str) -> DevicePrice | None:
        """The price of a device type, or None when the table does not list it."""
        return self.prices.get(device_type)


def load_price_table(path: str | Path) -> PriceTable:
    """Read and validate a price table YAML. Raises ConfigError with `file: prices.<device>.<key>: message` lines."""
    path = Path(path)
    data = read_yaml(path, "price table")
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: <root>: expected a mapping with a 'prices' key"])
    try:
        return PriceTable.model_validate(data)
    except ValidationError as error:
        raise ConfigError(error_lines(str(path), error)) from None


@dataclass(frozen=True)
class Billing:
    """What one model server is billed as while it is measured."""

    device_type: str  # price-table key, e.g. "H100-80GB" or "cpu-core"
    gpu_type: str | None  # the GPU name the driver reports; None on CPU
    gpu_count: int
    devices_billed: int
    usd_per_device_hour: float | None  # None when the table does not price device_type
    parameters: int | None
    active_parameters: int | None = None  # per token, for a mixture of experts; None: all of `parameters`


def billing_for(
    hardware: HardwareConfig,
    prices: PriceTable,
    gpu_type: str | None,
    gpu_count: int,
    parameters: int | None,
    active_parameters: int | None = None,
) -> Billing:
    """The billing of a model server: devices_per_model if set, else its GPU count (1 on CPU)."""
    price = prices.price(hardware.device_type)
    return Billing(
        device_type=hardware.device_type,
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        devices_billed=devices_billed(hardware, gpu_count),
        usd_per_device_hour=price.usd_per_hour if price is not None else None,
        parameters=parameters,
        active_parameters=active_parameters,
    )


def devices_billed(hardware: HardwareConfig, gpu_count: int) -> int:
    """Devices a model server is billed for: hardware.devices_per_model if set, else its GPUs (1 on CPU)."""
    return hardware.devices_per_model or max(gpu_count, 1)


def usd_per_mtok(output_tokens_per_s: float, billing: Billing) -> float | None:
    """$ per million output tokens at a throughput; None without a price or without throughput."""
    if billing.usd_per_device_hour is None or output_tokens_per_s <= 0:
        return None
    usd_per_s = billing.devices_billed * billing.usd_per_device_hour / SECONDS_PER_HOUR
    return usd_per_s / output_tokens_per_s * TOKENS_PER_MTOK


def j_per_token(energy_j: float | None, output_tokens: int) -> float | None:
    """Joules per output token; None without an energy reading or without tokens."""
    if energy_j is None or output_tokens <= 0:
        return None
    return energy_j / output_tokens


def flops_per_token(parameters: int | None, active_parameters: int | None = None) -> float | None:
    """Forward-pass FLOPs per token, estimated as 2 × the parameters the token passes through.

    One multiply and one add per weight per token. A mixture of experts routes each token through a few
    experts only, so its count is `active_parameters` (DeepSeek-R1: 37B of 671B); a dense model uses all of
    `parameters`. It ignores attention over the context and the KV cache, so it is a size-proportional
    estimate for comparing models (it underestimates long contexts), not a measurement. None without a count.
    """
    counted = active_parameters if active_parameters is not None else parameters
    if counted is None:
        return None
    return FLOPS_PER_PARAMETER_PER_TOKEN * counted
