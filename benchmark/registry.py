"""The registries (mmengine ``Registry``) that the command line derives its choices from.

- ``METHODS``: adapter classes, registered with ``@METHODS.register_module()`` in ``methods/``.
- ``DATASETS``: data set specs, one per folder of ``datasets/`` (registered from data, not code).
- ``LAUNCHERS``: how a sweep's runs are executed.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from mmengine.registry import Registry

METHODS = Registry("method", scope="clipbench")
DATASETS = Registry("dataset", scope="clipbench")
LAUNCHERS = Registry("launcher", scope="clipbench")

_imported = False


def import_methods() -> None:
    """Import every module of the ``methods`` package so their decorators register them."""
    global _imported
    if _imported:
        return
    import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        importlib.import_module(f"methods.{info.name}")
    _imported = True


def load_plugins(paths: list[str]) -> None:
    """Import user files (outside the repo) that register extra methods.

    Each path is a Python file or an importable module name, in the spirit of mmengine's
    ``custom_imports``. A missing file raises ``FileNotFoundError`` naming it.
    """
    for p in paths:
        path = Path(p)
        if path.suffix == ".py":
            if not path.is_file():
                raise FileNotFoundError(f"plugin file not found: {path}")
            name = f"clipbench_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(p)


def method_names() -> list[str]:
    """Sorted names of the registered methods."""
    import_methods()
    return sorted(METHODS.module_dict)


def get_method(name: str):
    """The adapter class registered as ``name``; ``KeyError`` lists the valid names."""
    import_methods()
    cls = METHODS.get(name) if name in METHODS.module_dict else None
    if cls is None:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(method_names())}")
    return cls


def register_method(cls):
    """Class decorator: register an ``Adapter`` subclass in ``METHODS`` under its ``name``."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    METHODS.register_module(name=cls.name, module=cls)
    return cls
