"""A fingerprint of the data a run reads, so that a record is reused only while its data is unchanged.

For a data set on disk: the SHA-256 of the domain's image lists (adapt and test: path, size and
modification time of every file, as the decode cache keys them) and of the list files
themselves. For a generated data set: the generator module's source and the spec's layout, so a
change of the generator makes old records stale too. Computed once per process and domain.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from benchmark.data.catalog import get_spec
from benchmark.data.locate import locate
from benchmark.data.spec import load_generator


def _stat_lines(paths: list[Path]) -> list[str]:
    lines = []
    for path in paths:
        st = os.stat(path)
        lines.append(f"{path}\t{st.st_size}\t{st.st_mtime_ns}")
    return lines


@functools.lru_cache(maxsize=64)
def _fingerprint(dataset: str, domain: str, data_root: str | None) -> str:
    spec = get_spec(dataset)
    digest = hashlib.sha256()
    if spec.layout.kind == "synthetic":
        module = load_generator(spec.layout.generator)
        digest.update(Path(module.__file__).read_bytes())
        digest.update(repr(spec.layout).encode())
        return "generated:" + digest.hexdigest()[:16]
    files = locate(spec, domain, data_root)
    for part in (files.adapt, files.test):
        digest.update("\n".join(_stat_lines(part.paths)).encode())
        digest.update(part.labels.tobytes())
    digest.update("\n".join(_stat_lines(files.sources)).encode())
    return "files:" + digest.hexdigest()[:16]


def data_fingerprint(dataset: str, domain: str, data_root: str | os.PathLike | None) -> str:
    """The fingerprint of one domain's data (``files:<hex>`` or ``generated:<hex>``)."""
    return _fingerprint(dataset, domain, None if data_root is None else str(data_root))


def forget() -> None:
    """Drop the fingerprints computed so far (a long-lived process whose data may have changed)."""
    _fingerprint.cache_clear()
