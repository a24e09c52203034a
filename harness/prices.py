"""GPU prices per hour, for the cost columns of ``harness compare``. No torch here.

The shipped table (``gpu_prices.json``) holds Modal's list prices, with the page they were read from and when:
prices change, so check them there before trusting a cost, and refresh the file, or override it per call with
``--prices FILE.json`` (the same format) or ``--price "NVIDIA H100 80GB HBM3=3.95"``. Devices are matched by their
exact ``torch.cuda.get_device_name()`` string (as in ``harness/hardware.py``); a device without a price gets
no cost, never a guess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SHIPPED = Path(__file__).with_name("gpu_prices.json")
FORMAT = '{"gpus": {"H100": {"usd_per_hour": 3.95, "device_names": ["NVIDIA H100 80GB HBM3"]}}}'


class PriceError(HarnessError, ValueError):
    """A price file or --price value that cannot be read; the message names it and the expected form."""


def device_key(name: str) -> str:
    """A device name with its whitespace normalised, as hardware.peak_flops matches it."""
    return " ".join(name.split())


@dataclass(frozen=True)
class Prices:
    """USD per GPU-hour by exact device name, and where each price came from (shown under cost columns)."""

    usd_per_hour: dict[str, float]
    origins: dict[str, str]  # device name -> "https://modal.com/pricing, read on 2025-06", a file, or "--price"
    types: dict[str, tuple[str, ...]]  # GPU type (Modal's name, "H100") -> its device names, so --price H100=… works

    def price(self, device_name: str | None) -> float | None:
        return None if not device_name else self.usd_per_hour.get(device_key(device_name))

    def origin(self, device_name: str) -> str:
        return self.origins[device_key(device_name)]

    def updated(self, other: Prices) -> Prices:
        """These prices with other's replacing them where both name a device."""
        return Prices({**self.usd_per_hour, **other.usd_per_hour}, {**self.origins, **other.origins},
                      {**self.types, **other.types})  # fmt: skip


def _usd(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PriceError(f"{where}: expected a price in USD per hour (a number >= 0), got {value!r}")
    return float(value)


def _gpu(entry: Any, where: str) -> tuple[float, tuple[str, ...]]:
    """(USD per hour, device names) of one entry of a price file's "gpus"."""
    names = entry.get("device_names") if isinstance(entry, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise PriceError(f"{where}.device_names: expected a list of torch.cuda.get_device_name() strings")
    return _usd(entry.get("usd_per_hour"), f"{where}.usd_per_hour"), tuple(device_key(name) for name in names)


def read_price_file(path: str | Path) -> Prices:
    """The prices of a file in the shipped format; its origin is its "source" and "read_on", else its path."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PriceError(f"price file {path}: {error}") from None
    gpus = document.get("gpus") if isinstance(document, dict) else None
    if not isinstance(gpus, dict):
        raise PriceError(f"price file {path}: expected an object like {FORMAT}")
    read_on = document.get("read_on")
    origin = ", ".join(filter(None, [document.get("source"), read_on and f"read on {read_on}"])) or str(path)
    usd, origins, types = {}, {}, {}
    for gpu, entry in gpus.items():
        price, names = _gpu(entry, f"price file {path}: gpus.{gpu}")
        types[gpu] = names
        usd.update(dict.fromkeys(names, price))
        origins.update(dict.fromkeys(names, origin))
    return Prices(usd, origins, types)


def parse_price(text: str, known: Prices) -> Prices:
    """One --price "DEVICE=USD_PER_HOUR"; DEVICE is an exact device name or a GPU type of known ("H100")."""
    name, _, value = text.rpartition("=")
    example = "for example --price 'NVIDIA H100 80GB HBM3=3.95' or --price 'H100=3.95'"
    try:
        number = float(value)
    except ValueError:
        raise PriceError(f"--price {text!r}: expected DEVICE=USD_PER_HOUR, {example}") from None
    if not name.strip():
        raise PriceError(f"--price {text!r}: no device name before '=', {example}")
    price = _usd(number, f"--price {text!r}")
    names = known.types.get(name.strip(), (device_key(name),))
    return Prices(dict.fromkeys(names, price), dict.fromkeys(names, "--price"), {})


def load_prices(files: Iterable[str | Path] = (), flags: Iterable[str] = ()) -> Prices:
    """The shipped prices, replaced by each file's in turn, then by each --price flag."""
    prices = read_price_file(SHIPPED)
    for file in files:
        prices = prices.updated(read_price_file(file))
    for flag in flags:
        prices = prices.updated(parse_price(flag, prices))
    return prices
