"""Putting archives and list files into a data set's expected layout (``prepare`` and ``download``).

An archive is extracted into a temporary folder inside the data root (so on the same filesystem
as the data set), the data set's parts are found in it below any wrapper folders (domain folders
by the spec's candidate names, list files by the spec's templates) and each part is moved into
``<data_root>/<root>/`` with one rename. A failure at any point removes the temporary folder, so a
data set is never left half-extracted; parts already present are only replaced on request.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.data.archives import extract, is_archive, listing
from benchmark.data.errors import DataError
from benchmark.data.manifest import write_manifest
from benchmark.data.spec import DatasetSpec, normalise_name

MAX_DEPTH = 3
"""How many wrapper folders deep parts are searched for in an extracted archive."""

STAGING_PREFIX = ".clipbench-extract-"


@dataclass(frozen=True)
class Part:
    """One piece of a data set found in an extracted archive: ``source`` goes to ``<root>/<name>``."""

    source: Path
    name: str
    what: str


def target_root(spec: DatasetSpec, data_root: Path) -> Path:
    """The data set's folder below ``data_root``: the first candidate present, else the first name."""
    for name in spec.layout.roots:
        if (data_root / name).is_dir():
            return data_root / name
    return data_root / spec.layout.roots[0]


def list_names(spec: DatasetSpec) -> dict[str, str]:
    """The list files of a ``lists`` layout: file name -> the domain it belongs to."""
    layout = spec.layout
    if layout.kind != "lists":
        return {}
    names = {}
    for facts in spec.domain_facts.values():
        for template in (layout.adapt_list, layout.test_list):
            names[template.format(domain=facts.folders[0], name=facts.name)] = facts.name
    return names


def _folders(top: Path) -> list[Path]:
    """``top`` and its sub-folders down to ``MAX_DEPTH``, shallowest first, skipping hidden and junk."""
    found, level = [top], [top]
    for _ in range(MAX_DEPTH):
        level = [
            Path(e.path)
            for d in level
            for e in sorted(os.scandir(d), key=lambda e: e.name)
            if e.is_dir() and not e.name.startswith((".", "__MACOSX"))
        ]
        found += level
    return found


def _find_domain(spec: DatasetSpec, domain: str, folders: list[Path]) -> Part | None:
    for candidate in spec.domain(domain).folders:
        first, _, rest = candidate.partition("/")
        for folder in folders:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if (
                    entry.is_dir()
                    and normalise_name(entry.name) == normalise_name(first)
                    and (not rest or (Path(entry.path) / rest).is_dir())
                ):
                    return Part(Path(entry.path), first, f"domain {domain}")
    return None


def find_parts(spec: DatasetSpec, staging: Path) -> list[Part]:
    """The domain folders and list files of ``spec`` inside an extracted tree (shallowest match wins)."""
    folders = _folders(staging)
    parts = [p for d in spec.domains if (p := _find_domain(spec, d, folders)) is not None]
    for name in list_names(spec):
        for folder in folders:
            if (folder / name).is_file():
                parts.append(Part(folder / name, name, f"list {name}"))
                break
    inside = [p for p in parts if any(q is not p and q.source in p.source.parents for q in parts)]
    return [p for p in parts if p not in inside]


def _remove_stale_staging(data_root: Path) -> None:
    """Delete temporary folders left by killed runs (their process id is no longer alive)."""
    for folder in data_root.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _place(parts: list[Part], root: Path, staging: Path, overwrite: bool) -> list[str]:
    """Rename each part into ``root``; existing parts are moved aside into ``staging`` when overwriting."""
    present = [p.name for p in parts if (root / p.name).exists()]
    if present and not overwrite:
        raise DataError(
            f"already in {root}: {', '.join(present)}. Pass --overwrite to replace them, or remove them first"
        )
    root.mkdir(parents=True, exist_ok=True)
    replaced = staging / ".replaced"
    for part in parts:
        dest = root / part.name
        if dest.exists():
            replaced.mkdir(exist_ok=True)
            os.replace(dest, replaced / f"{len(list(replaced.iterdir()))}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part.source, dest)
    return [p.name for p in parts]


def install(
    spec: DatasetSpec,
    file: Path,
    data_root: Path,
    facts: dict[str, Any],
    overwrite: bool = False,
) -> list[str]:
    """Install one archive or list file into the data set root; returns the installed top-level names.

    Archives are extracted and arranged; a list file is copied to its name in the root. ``facts``
    (size, digests) go into the source's manifest.
    """
    file = Path(file)
    data_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(data_root)
    root = target_root(spec, data_root)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=data_root))
    try:
        if is_archive(file):
            extract(file, staging / "tree")
            parts = find_parts(spec, staging / "tree")
            if not parts:
                raise DataError(
                    f"{file} holds none of the parts of {spec.title} (domain folders "
                    f"{[f for d in spec.domain_facts.values() for f in d.folders]}"
                    f"{', list files ' + str(sorted(list_names(spec))) if list_names(spec) else ''}) within "
                    f"{MAX_DEPTH} folder levels; its top level holds: {listing(staging / 'tree')}. Is it the "
                    f"archive of another data set?"
                )
        elif file.name in list_names(spec):
            copy = staging / file.name
            shutil.copy2(file, copy)
            parts = [Part(copy, file.name, f"list {file.name}")]
        else:
            known = sorted(list_names(spec))
            raise DataError(
                f"{file} is neither an archive (.zip, .tar, .tar.gz, ...) nor a list file of {spec.name}"
                + (f" (one of {', '.join(known)})" if known else "")
            )
        installed = _place(parts, root, staging, overwrite)
        write_manifest(root, file.name, {k: v for k, v in facts.items() if k != "checked"}, installed)
        for part in parts:
            print(f"  {part.what}: {root / part.name}")
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare(spec: DatasetSpec, files: list[Path], data_root: Path, overwrite: bool = False) -> list[str]:
    """Check (size, digests recorded in the spec) and install archives or list files fetched by hand."""
    from benchmark.data.sources import check_source

    installed: list[str] = []
    for file in map(Path, files):
        if not file.is_file():
            raise DataError(f"{file} not found (pass the downloaded archive with --archive FILE)")
        facts = check_source(spec, file)
        checked = ", ".join(facts["checked"]) or "nothing recorded in the spec"
        print(f"{file.name}: {facts['size']} bytes, sha256 {facts['sha256']} (checked: {checked})")
        installed += install(spec, file, Path(data_root), facts, overwrite)
    return installed
