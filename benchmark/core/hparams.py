"""Hyper-parameter values as tables show them: departures from a recipe and the row label."""

from __future__ import annotations

from typing import Any


def format_value(value: Any) -> str:
    """A hyper-parameter value as it is written on the command line (lists without spaces)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


def departures(hparams: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """The values of ``hparams`` that differ from ``recipe`` (sorted by key)."""
    return {k: hparams[k] for k in sorted(hparams) if k in recipe and hparams[k] != recipe[k]}


def format_departures(diffs: dict[str, Any]) -> str:
    """``epochs=3, lr=0.001``; empty when there is none."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in diffs.items())


def method_label(method: str, diffs: dict[str, Any]) -> str:
    """The row label of a method: its name plus every departure, e.g. ``ueo (epochs=10)``."""
    text = format_departures(diffs)
    return f"{method} ({text})" if text else method
