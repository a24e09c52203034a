"""harness.prices: the shipped GPU price table, and its overrides by file and by --price."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from harness.hardware import PEAK_FLOPS
from harness.prices import SHIPPED, PriceError, load_prices, parse_price, read_price_file

H100 = "NVIDIA H100 80GB HBM3"


def price_file(tmp_path, document) -> str:
    path = tmp_path / "prices.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def test_shipped_prices_say_where_and_when_they_were_read():
    document = json.loads(SHIPPED.read_text())
    assert document["source"] == "https://modal.com/pricing"
    assert re.fullmatch(r"\d{4}-\d{2}", document["read_on"])
    assert date(*map(int, document["read_on"].split("-")), 1) <= date.today()
    assert "check" in document["check"]
    prices = read_price_file(SHIPPED)
    assert prices.origin(H100) == f"https://modal.com/pricing, read on {document['read_on']}"
    assert all(price > 0 for price in prices.usd_per_hour.values())


def test_shipped_device_names_are_exact_torch_names():
    """Named as harness/hardware.py names them (torch.cuda.get_device_name()), so runs find their price."""
    assert set(read_price_file(SHIPPED).usd_per_hour) <= set(PEAK_FLOPS)


def test_a_device_is_matched_by_its_exact_name_whitespace_aside():
    prices = load_prices()
    assert prices.price("  NVIDIA  H100 80GB\tHBM3 ") == prices.price(H100) is not None
    assert prices.price("NVIDIA H100") is None  # a fragment is no match
    assert prices.price(None) is None and prices.price("") is None


def test_a_file_replaces_the_prices_it_names_and_keeps_the_others(tmp_path):
    rtx = {"usd_per_hour": 0.4, "device_names": ["NVIDIA GeForce RTX 4090"]}
    path = price_file(tmp_path, {"gpus": {"H100": {"usd_per_hour": 2.5, "device_names": [H100]}, "4090": rtx}})
    prices = load_prices([path])
    shipped = read_price_file(SHIPPED)
    assert prices.price(H100) == 2.5 and prices.origin(H100) == path
    assert prices.price("NVIDIA GeForce RTX 4090") == 0.4
    assert prices.price("NVIDIA A100-SXM4-80GB") == shipped.price("NVIDIA A100-SXM4-80GB")
    dated = price_file(tmp_path, {"source": "my invoice", "read_on": "2026-01-31",
                                  "gpus": {"H100": {"usd_per_hour": 2.0, "device_names": [H100]}}})  # fmt: skip
    assert load_prices([dated]).origin(H100) == "my invoice, read on 2026-01-31"


def test_a_flag_names_a_device_or_a_gpu_type_and_wins_over_files(tmp_path):
    path = price_file(tmp_path, {"gpus": {"H100": {"usd_per_hour": 2.5, "device_names": [H100]}}})
    prices = load_prices([path], [f"{H100}=3.25", "A100-80GB=1.5"])
    assert prices.price(H100) == 3.25 and prices.origin(H100) == "--price"
    assert prices.price("NVIDIA A100-SXM4-80GB") == prices.price("NVIDIA A100 80GB PCIe") == 1.5
    assert parse_price("My GPU=0", prices).usd_per_hour == {"My GPU": 0.0}


@pytest.mark.parametrize(
    "flag, message",
    [("H100", "expected DEVICE=USD_PER_HOUR"), ("H100=cheap", "expected DEVICE=USD_PER_HOUR"),
     ("=3", "no device name before '='"), ("H100=-1", "a number >= 0"), ("H100=nan", "a number >= 0")],
)  # fmt: skip
def test_bad_flags_say_what_is_expected(flag, message):
    with pytest.raises(PriceError, match=re.escape(message)):
        load_prices(flags=[flag])


@pytest.mark.parametrize(
    "document, message",
    [("{not json", "Expecting property name"),
     ({"H100": 3.95}, 'expected an object like {"gpus"'),
     ({"gpus": {"H100": {"usd_per_hour": "3.95", "device_names": [H100]}}}, "gpus.H100.usd_per_hour: expected"),
     ({"gpus": {"H100": {"usd_per_hour": 3.95, "device_names": H100}}}, "gpus.H100.device_names: expected a list")],
)  # fmt: skip
def test_bad_files_are_named_with_the_field(tmp_path, document, message):
    path = price_file(tmp_path, document)
    with pytest.raises(PriceError, match=f"price file {re.escape(path)}: .*{re.escape(message)}"):
        load_prices([path])
