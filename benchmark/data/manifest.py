"""Install manifests: what ``prepare`` and ``download`` put into a data set root.

A folder layout alone cannot tell which files *should* be there; a manifest can. For each
source (archive or list file) one JSON file ``<data set root>/.clipbench_manifest/<source>.json``
records the source's size and sha256, the top-level names it installed, and every installed
file with its size, so ``verify`` names the files that went missing or changed since.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_DIR = ".clipbench_manifest"


def collect_files(root: Path, names: list[str]) -> dict[str, int]:
    """Every file below ``root/<name>`` for the given top-level names: POSIX path relative to ``root`` -> size."""
    files: dict[str, int] = {}
    for name in names:
        top = root / name
        if top.is_file():
            files[name] = top.stat().st_size
            continue
        for folder, _, entries in os.walk(top):
            for entry in entries:
                path = Path(folder) / entry
                files[path.relative_to(root).as_posix()] = path.stat().st_size
    return dict(sorted(files.items()))


def _write(target: Path, record: dict[str, Any]) -> None:
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    partial.replace(target)


def write_manifest(root: Path, source: str, facts: dict[str, Any], installed: list[str]) -> Path:
    """Record what ``source`` installed into ``root`` (``facts``: size, digests); written atomically.

    Other sources' records of the same top-level names are dropped: those parts were replaced.
    """
    folder = root / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = set(installed)
    for other in sorted(folder.glob("*.json")):
        try:
            record = json.loads(other.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("source") == source or not names & set(record.get("installed", [])):
            continue
        record["installed"] = [n for n in record["installed"] if n not in names]
        record["files"] = {f: s for f, s in record.get("files", {}).items() if f.split("/", 1)[0] not in names}
        _write(other, record)
    record = {"source": source, **facts, "installed": sorted(installed), "files": collect_files(root, installed)}
    target = folder / f"{source}.json"
    _write(target, record)
    return target


def read_manifests(root: Path) -> list[dict[str, Any]]:
    """Every manifest in ``root`` (unreadable ones are skipped: they only add detail to ``verify``)."""
    records = []
    for file in sorted((root / MANIFEST_DIR).glob("*.json")):
        try:
            records.append(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def recorded_files(root: Path) -> dict[str, int]:
    """All files the manifests of ``root`` record: relative POSIX path -> size at install time."""
    files: dict[str, int] = {}
    for record in read_manifests(root):
        files.update({str(k): int(v) for k, v in record.get("files", {}).items()})
    return files


def installed_by(root: Path, source: str) -> dict[str, Any] | None:
    """The manifest of ``source`` when every top-level name it installed is still present."""
    for record in read_manifests(root):
        if record.get("source") == source and all((root / n).exists() for n in record.get("installed", [])):
            return record
    return None
