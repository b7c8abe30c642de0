"""clipbench: a benchmark harness for unsupervised CLIP adaptation in the open-set setting.

The stable import path for method authors (a ``--plugins`` file or a new ``methods/`` file)::

    from benchmark import Adapter, register_method

The names below are loaded on first use, so that importing a leaf such as ``benchmark.report``
pulls in no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "PROTOCOL_VERSION": "benchmark.core.spec",
    "RunSpec": "benchmark.core.spec",
    "Adapter": "benchmark.adapt.adapter",
    "HyperParameterError": "benchmark.adapt.adapter",
    "Augment": "benchmark.adapt.augment",
    "UnlabeledData": "benchmark.adapt.unlabeled",
    "ClipClassifier": "benchmark.model.clip",
    "LOGIT_SCALE": "benchmark.model.clip",
    "register_method": "benchmark.registry",
    "get_method": "benchmark.registry",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
