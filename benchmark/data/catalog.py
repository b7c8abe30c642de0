"""The catalog of data sets: every ``datasets/<name>/dataset.yaml`` is one data set.

Adding a data set is adding a folder; no code changes. Specs are parsed on first use and
cached (re-parsed if the file changes), and each data set is registered in the ``DATASETS``
registry as a loader so that ``DATASETS.build(dict(type=name, domain=..., setting=...))`` works.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.core.paths import DATASETS_DIR
from benchmark.data.errors import UnknownNameError
from benchmark.data.parse import parse_spec
from benchmark.data.spec import SPEC_FILE, DatasetSpec

_cache: dict[Path, tuple[int, DatasetSpec]] = {}


def spec_files(root: Path = DATASETS_DIR) -> dict[str, Path]:
    """Map each data set name to its spec file, for every ``<root>/*/dataset.yaml``."""
    return {p.parent.name: p for p in sorted(root.glob(f"*/{SPEC_FILE}"))}


def dataset_names() -> list[str]:
    """Sorted names of the available data sets."""
    return sorted(spec_files())


def get_spec(name: str) -> DatasetSpec:
    """The parsed spec of data set ``name``; an unknown name raises a ``KeyError`` listing valid ones."""
    files = spec_files()
    if name not in files:
        raise UnknownNameError("data set", name, sorted(files))
    path = files[name]
    stamp = path.stat().st_mtime_ns
    cached = _cache.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, parse_spec(path))
        _cache[path] = cached
    return cached[1]
