"""The price table and the $/Mtok, J/token and FLOPs/token arithmetic."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from bench import cost
from bench.config import HardwareConfig
from bench.configfile import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return path


def test_shipped_price_table_loads_and_names_its_sources():
    table = cost.load_price_table(REPO / "configs" / "prices.yaml")
    for device in ("cpu-core", "H100-80GB", "H200-141GB", "A100-80GB", "L4"):
        price = table.price(device)
        assert price is not None and price.usd_per_hour > 0 and price.source and price.note
        # Each entry either names what it was checked against and when, or says it was not checked.
        checked = price.checked_against is not None and price.checked is not None
        assert checked if price.verified != "unverified" else price.checked is None
    assert table.price("TPU-v9") is None


def test_price_table_round_trip(tmp_path):
    path = write(tmp_path, 'prices:\n  X1:\n    usd_per_hour: 2.5\n    source: "a page"\n    date: "2025-01-02"\n')
    price = cost.load_price_table(path).price("X1")
    assert price == cost.DevicePrice(usd_per_hour=2.5, source="a page", date=datetime.date(2025, 1, 2))
    assert (price.verified, price.checked_against, price.checked) == ("unverified", None, None)


def test_a_checked_price_names_its_evidence(tmp_path):
    path = write(
        tmp_path,
        "prices:\n  X1:\n    usd_per_hour: 2.5\n    source: s\n    date: 2026-01-02\n    verified: third-party\n"
        "    checked_against: https://example.org/copy\n    checked: 2026-01-02\n",
    )
    price = cost.load_price_table(path).price("X1")
    assert price is not None
    assert (price.verified, price.checked_against, price.checked) == (
        "third-party",
        "https://example.org/copy",
        datetime.date(2026, 1, 2),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    verified: third-party\n", "verified is 'third-party': checked_against and checked are both required"),
        (
            "    verified: provider-page\n    checked_against: https://example.org\n",
            "verified is 'provider-page': checked_against and checked are both required",
        ),
        ("    checked: 2026-01-02\n", "checked_against and checked name a check: set verified, or remove them"),
        ("    verified: looked-at-it\n", "Input should be 'provider-page', 'third-party' or 'unverified'"),
        ("    verified: third-party\n    checked_against: ''\n    checked: 2026-01-02\n", "at least 1 character"),
    ],
)
def test_inconsistent_verification_is_an_error(tmp_path, extra, message):
    path = write(tmp_path, f"prices:\n  L4:\n    usd_per_hour: 1\n    source: s\n    date: 2026-01-02\n{extra}")
    with pytest.raises(ConfigError) as caught:
        cost.load_price_table(path)
    [line] = caught.value.lines
    assert line.startswith(f"{path}: prices.L4") and message in line


@pytest.mark.parametrize(
    ("value", "message"),
    [('"cheap"', "valid number"), ("-1", "greater than or equal to 0"), (".inf", "finite number")],
)
def test_bad_price_names_the_key_path(tmp_path, value, message):
    path = write(tmp_path, f"prices:\n  H100-80GB:\n    usd_per_hour: {value}\n    source: s\n    date: 2025-01-02\n")
    with pytest.raises(ConfigError) as caught:
        cost.load_price_table(path)
    [line] = caught.value.lines
    assert line.startswith(f"{path}: prices.H100-80GB.usd_per_hour: ") and message in line


def test_unknown_and_missing_keys_are_errors(tmp_path):
    path = write(tmp_path, "prices:\n  L4:\n    usd_per_hour: 1\n    source: s\n    colour: red\n")
    with pytest.raises(ConfigError) as caught:
        cost.load_price_table(path)
    assert sorted(caught.value.lines) == [f"{path}: prices.L4.colour: Extra inputs are not permitted",
                                          f"{path}: prices.L4.date: Field required"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, "no such price table"), ("prices: [1, 2", "not valid YAML"), ("- 1\n", "<root>: expected a mapping")],
)
def test_unreadable_tables(tmp_path, text, expected):
    path = tmp_path / "prices.yaml" if text is None else write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        cost.load_price_table(path)
    assert caught.value.lines[0].startswith(f"{path}:") and expected in caught.value.lines[0]


def billing(usd_per_device_hour: float | None, devices_billed: int = 2) -> cost.Billing:
    return cost.Billing("H100-80GB", "NVIDIA H100 80GB HBM3", 2, devices_billed, usd_per_device_hour, 7_000_000_000)


def test_usd_per_mtok_worked_example():
    # 2 GPUs x $4/h = $8/h = $0.002222/s. At 1,000 output tokens/s a million tokens take 1,000 s: $2.222.
    assert cost.usd_per_mtok(1000.0, billing(4.0)) == pytest.approx(8 / 3.6)
    assert cost.usd_per_mtok(2000.0, billing(4.0)) == pytest.approx(8 / 3.6 / 2)


def test_usd_per_mtok_is_none_without_price_or_throughput():
    assert cost.usd_per_mtok(1000.0, billing(None)) is None
    assert cost.usd_per_mtok(0.0, billing(4.0)) is None


def test_energy_and_flops_per_token():
    assert cost.j_per_token(300.0, 1000) == pytest.approx(0.3)
    assert cost.j_per_token(None, 1000) is None
    assert cost.j_per_token(300.0, 0) is None
    assert cost.flops_per_token(7_000_000_000) == 1.4e10
    assert cost.flops_per_token(None) is None


def test_a_mixture_of_experts_counts_its_active_parameters():
    assert cost.flops_per_token(671_000_000_000, 37_000_000_000) == 7.4e10  # DeepSeek-R1: 37B of 671B per token
    assert cost.flops_per_token(None, 37_000_000_000) == 7.4e10
    table = cost.PriceTable.model_validate(
        {"prices": {"H200-141GB": {"usd_per_hour": 6, "source": "s", "date": "2025-01-02"}}}
    )
    billing = cost.billing_for(
        HardwareConfig(device_type="H200-141GB"), table, "NVIDIA H200", 8, 671 * 10**9, 37 * 10**9
    )
    assert cost.flops_per_token(billing.parameters, billing.active_parameters) == 7.4e10


def test_shipped_gpu_prices_carry_their_peak_and_its_source():
    table = cost.load_price_table(REPO / "configs" / "prices.yaml")
    peaks = {device: (price.peak_tflops, bool(price.peak_source)) for device, price in table.prices.items()}
    assert peaks == {
        "cpu-core": (None, False),
        "H100-80GB": (989.4, True),
        "H200-141GB": (989.4, True),
        "A100-80GB": (312, True),
        "L4": (121, True),
    }


def test_billing_for_defaults_to_the_gpu_count(tmp_path):
    table = cost.PriceTable.model_validate(
        {"prices": {"H100-80GB": {"usd_per_hour": 6, "source": "s", "date": "2025-01-02"}}}
    )
    gpu = cost.billing_for(HardwareConfig(device_type="H100-80GB"), table, "NVIDIA H100", 4, 10)
    assert (gpu.devices_billed, gpu.usd_per_device_hour, gpu.gpu_count) == (4, 6.0, 4)
    cpu = cost.billing_for(HardwareConfig(device_type="cpu-core"), table, None, 0, None)
    assert (cpu.devices_billed, cpu.usd_per_device_hour) == (1, None)
    pinned = cost.billing_for(HardwareConfig(device_type="H100-80GB", devices_per_model=8), table, "NVIDIA H100", 4, 10)
    assert pinned.devices_billed == 8
