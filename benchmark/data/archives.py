"""Extracting zip and tar archives safely, with a progress bar over the archive's bytes.

Member paths may not leave the destination (tar: the ``data`` filter, which also refuses links
pointing outside and device files; zip: names are checked before anything is written). A broken
archive raises ``DataError`` naming it; the caller extracts into a temporary folder and discards
it, so a failure never leaves a half-extracted data set.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from benchmark.data.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_JUNK = ("__MACOSX",)


def is_archive(path: Path) -> bool:
    """True for file names this module can extract (by suffix)."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


class _CountingReader:
    """A read-only stream that reports the bytes read to a progress bar (tar streams need only ``read``)."""

    def __init__(self, handle, bar: tqdm) -> None:
        self.handle = handle
        self.bar = bar

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.bar.update(len(block))
        return block


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts


def _extract_zip(archive: Path, dest: Path, bar: tqdm) -> int:
    with zipfile.ZipFile(archive) as handle:
        members = [m for m in handle.infolist() if not m.filename.startswith(_JUNK)]
        unsafe = [m.filename for m in members if not _safe_member(m.filename)]
        if unsafe:
            raise DataError(f"{archive}: refusing member paths that leave the destination: {unsafe[:5]}")
        bar.reset(total=sum(m.compress_size for m in members))
        for member in members:
            handle.extract(member, dest)
            bar.update(member.compress_size)
        return sum(1 for m in members if not m.is_dir())


def _extract_tar(archive: Path, dest: Path, bar: tqdm) -> int:
    files = 0
    with open(archive, "rb") as raw, tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*") as handle:
        for member in handle:
            if member.name.startswith(_JUNK):
                continue
            if hasattr(tarfile, "data_filter"):
                handle.extract(member, dest, filter="data")
            elif _safe_member(member.name) and (member.isfile() or member.isdir()):
                handle.extract(member, dest)
            else:
                raise DataError(f"{archive}: refusing member {member.name!r} (link or path outside the destination)")
            files += member.isfile()
    return files


def extract(archive: Path, dest: Path) -> int:
    """Extract ``archive`` (zip or tar, any compression) into ``dest``; returns the number of files."""
    archive = Path(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(dest).free < archive.stat().st_size:
        raise DataError(
            f"not enough free space in {dest} to extract {archive} ({archive.stat().st_size >> 20} MiB archive, "
            f"{shutil.disk_usage(dest).free >> 20} MiB free)"
        )
    with tqdm(
        total=archive.stat().st_size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"extracting {archive.name}",
        leave=False,
    ) as bar:
        try:
            if archive.name.lower().endswith(".zip"):
                return _extract_zip(archive, dest, bar)
            return _extract_tar(archive, dest, bar)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise DataError(
                f"cannot extract {archive}: {exc} (truncated or corrupt archive? download it again)"
            ) from exc


def listing(folder: Path, limit: int = 12) -> str:
    """The first names in ``folder``, for error messages."""
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".")) if folder.is_dir() else []
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return shown or "(nothing)"
