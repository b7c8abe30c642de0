"""Integrity of source files (archives, list files) against the facts recorded in a data set's spec.

A spec's ``download`` entries may record ``size`` (bytes) and ``sha256``/``md5``. A local file is
matched to an entry by file name (the last part of the URL), so an archive downloaded by hand is
checked exactly like one the ``download`` command fetched. Where the spec records nothing, the
file's sha256 is still computed and reported, so that it can be compared or recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.data.errors import DataError
from benchmark.data.spec import DatasetSpec
from benchmark.data.transfer import file_digests

DIGESTS = ("sha256", "md5")


def source_name(url: str) -> str:
    """The file name of a download URL (its last path component, without a query)."""
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def spec_entry(spec: DatasetSpec, file: Path) -> dict[str, Any] | None:
    """The download entry of ``spec`` whose URL ends in ``file``'s name, if any."""
    for entry in spec.download:
        if source_name(str(entry["url"])) == Path(file).name:
            return entry
    return None


def check_source(spec: DatasetSpec, file: Path, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check ``file`` against its spec entry's size and digests; returns ``{size, sha256[, md5], checked}``.

    ``checked`` lists what was compared with recorded facts (empty when the spec records none).
    A mismatch raises ``DataError`` saying what differs; the caller decides what to do with the file.
    """
    file = Path(file)
    entry = entry if entry is not None else spec_entry(spec, file)
    recorded = {k: entry[k] for k in ("size", *DIGESTS) if entry and entry.get(k) is not None}
    size = file.stat().st_size
    where = f"{spec.path / 'dataset.yaml'}"
    if "size" in recorded and size != recorded["size"]:
        raise DataError(
            f"{file} has {size} bytes, {where} records {recorded['size']} for {file.name}: "
            f"incomplete or a different file"
        )
    wanted = ["sha256", *(a for a in DIGESTS if a in recorded and a != "sha256")]
    digests = file_digests(file, wanted)
    for algo in DIGESTS:
        if algo in recorded and digests[algo] != recorded[algo]:
            raise DataError(
                f"{file}: {algo} {digests[algo]} does not match {recorded[algo]} recorded in {where} "
                f"for {file.name}: the file is corrupt or a different version"
            )
    return {"size": size, **digests, "checked": sorted(recorded)}
