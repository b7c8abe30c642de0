"""Hyper-parameter values: types and numeric domains, checked when a method's values are resolved."""

from __future__ import annotations

import math
from typing import Any


class HyperParameterError(ValueError):
    """An unknown hyper-parameter key or a value of the wrong type."""


def coerce(key: str, default: Any, value: Any) -> Any:
    """Cast ``value`` to the type of ``default`` where that is lossless, else raise naming ``key``."""
    if default is None:
        return value
    if value is None:
        raise HyperParameterError(f"{key} cannot be null (default {default!r})")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise HyperParameterError(f"{key} expects true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise HyperParameterError(f"{key} expects an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HyperParameterError(f"{key} expects a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise HyperParameterError(f"{key} expects a string, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise HyperParameterError(f"{key} expects a list, got {value!r}")
        if default and not value:
            raise HyperParameterError(f"{key} expects a non-empty list, got []")
        return [coerce(key, default[0], v) for v in value] if default else list(value)
    return value


Rule = tuple[float | None, float | None]
"""A numeric domain ``(low, high)``: ``low <= value <= high``; None = unbounded on that side."""

BASE_RANGES: dict[str, Rule] = {
    "epochs": (1, None),
    "batch_size": (1, None),
    "lr": (0, None),
    "momentum": (0, 1),
    "weight_decay": (0, None),
    "warmup_epochs": (0, None),
    "warmup_lr": (0, None),
    "crop_scale": (0, 1),
}
"""The domains of the loop's hyper-parameters; a method adds its own in ``ranges``. ``lr`` must
also be positive, ``crop_scale`` a pair ``0 < low <= high <= 1``."""


def check_range(key: str, value: Any, rule: Rule) -> None:
    """Raise ``HyperParameterError`` naming ``key`` and ``rule`` when ``value`` lies outside it."""
    low, high = rule
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if (low is not None and v < low) or (high is not None and v > high) or math.isnan(v):
            bounds = f"{'-inf' if low is None else low} <= {key} <= {'inf' if high is None else high}"
            raise HyperParameterError(f"{key} = {value!r} is out of range: needs {bounds}")
