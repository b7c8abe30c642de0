"""The registries (mmengine ``Registry``) that the command line derives its choices from.

- ``METHODS``: adapter classes, registered with ``@METHODS.register_module()`` in ``methods/``.
- ``DATASETS``: data set specs, one per folder of ``datasets/`` (registered from data, not code).
- ``LAUNCHERS``: how a sweep's runs are executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import traceback
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


class PluginError(ImportError):
    """A ``--plugins`` file or module that is missing, fails at import, or registers a taken name."""


def _where(err: BaseException, path: Path | None) -> str:
    """`` (line N)`` of the plugin's own frame nearest the error, when there is one."""
    if isinstance(err, SyntaxError) and err.lineno:
        return f" (line {err.lineno})"
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if path is not None and Path(f.filename).resolve() == path.resolve()
    ]
    return f" (line {frames[-1].lineno})" if frames else ""


def load_plugins(paths: list[str]) -> None:
    """Import user files (outside the repo) that register extra methods.

    Each path is a Python file or an importable module name, in the spirit of mmengine's
    ``custom_imports``. The built-in methods are registered first, so a plugin cannot take their
    names. A missing file, an exception while importing it, or a method name registered twice
    raises :class:`PluginError` naming the file, the error and its line (both places for a
    duplicate name); a plugin that failed leaves nothing registered under its module name.
    """
    import_methods()
    for p in paths:
        path = Path(p)
        if path.suffix == ".py":
            if not path.is_file():
                raise PluginError(f"plugin file not found: {path}")
            name = f"clipbench_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except PluginError as err:
                sys.modules.pop(name, None)
                raise PluginError(f"plugin {path}: {err}") from None
            except Exception as err:
                sys.modules.pop(name, None)
                raise PluginError(
                    f"plugin {path} failed to import: {type(err).__name__}: {err}{_where(err, path)}"
                ) from None
        else:
            try:
                importlib.import_module(p)
            except PluginError as err:
                raise PluginError(f"plugin module {p}: {err}") from None
            except Exception as err:
                raise PluginError(f"plugin module {p} failed to import: {type(err).__name__}: {err}") from None


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


def _origin(cls) -> str:
    """Where a class is defined: ``file:line (module.Class)``."""
    try:
        file, line = inspect.getsourcefile(cls), inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        file, line = None, None
    place = f"{file}:{line} " if file else ""
    return f"{place}({cls.__module__}.{cls.__qualname__})"


def register_method(cls):
    """Class decorator: register an ``Adapter`` subclass in ``METHODS`` under its ``name``.

    A name registered already raises :class:`PluginError` naming both classes and their files.
    """
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    taken = METHODS.module_dict.get(cls.name)
    if taken is not None and taken is not cls:
        raise PluginError(f"method name {cls.name!r} of {_origin(cls)} is already registered by {_origin(taken)}")
    METHODS.register_module(name=cls.name, module=cls)
    return cls
