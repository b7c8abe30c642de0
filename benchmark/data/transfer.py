"""Resumable download of one URL to a file, and file digests.

Bytes stream into ``<target>.part``. When the connection drops, the download continues from the
bytes already on disk with an HTTP ``Range`` request, both within a run (a few retries) and
across runs (a ``.part`` file left by an interrupted run is resumed). A server that ignores
``Range`` (answers 200 instead of 206) makes the download restart from zero. The file is renamed
to ``target`` only once its length equals the size the server announced (or the spec recorded),
so a ``target`` that exists is always complete.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from benchmark.data.errors import DataError

CHUNK = 1 << 20
RETRIES = 5
"""Consecutive failed attempts (without any new byte) before a download gives up."""

HASH_PROGRESS_MIN = 64 << 20
"""Files of at least this many bytes show a progress bar while hashed."""

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIABLE = re.compile(r"bytes\s+\*/(\d+)")


def partial_path(target: Path) -> Path:
    """Where the bytes of an unfinished download of ``target`` are kept."""
    return target.with_name(target.name + ".part")


def _announced_total(response, offset: int) -> tuple[int | None, bool]:
    """(total size or None, resumed?) from a response to a request starting at ``offset``."""
    status = getattr(response, "status", None) or 200
    if offset and status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            total = match.group(3)
            return (int(total) if total != "*" else None), True
        return None, False
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), False


def _check_total(url: str, total: int | None, expected: int | None) -> None:
    if total is not None and expected is not None and total != expected:
        raise DataError(
            f"{url}: the server announces {total} bytes but the data set spec records {expected}; the file "
            f"on the server differs from the one the spec describes (update the spec's size/checksum only "
            f"after checking the new file)"
        )


def fetch_url(
    url: str,
    target: Path,
    size: int | None = None,
    retries: int = RETRIES,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``target``, resuming ``target.part``; returns ``target``.

    ``size`` (bytes, from the spec) is checked against what the server announces before any
    byte is fetched. Network failures are retried ``retries`` times in a row (waiting ``backoff``
    seconds times the attempt number); then a ``DataError`` names the URL and the kept partial file.
    """
    target = Path(target)
    partial = partial_path(target)
    partial.parent.mkdir(parents=True, exist_ok=True)
    total = size
    failures = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, leave=False)
    try:
        while True:
            have = partial.stat().st_size if partial.exists() else 0
            if total is not None and have > total:
                partial.unlink()
                have = 0
            if total is not None and have == total:
                break
            bar.reset(total=total)
            bar.update(have)
            try:
                total = _attempt(url, partial, have, total, size, timeout, bar)
                break
            except (OSError, http.client.HTTPException) as exc:
                kept = partial.stat().st_size if partial.exists() else 0
                failures = 1 if kept > have else failures + 1
                if failures > retries:
                    raise DataError(
                        f"download of {url} failed after {retries} retries: {exc}. The {kept} bytes fetched "
                        f"so far are kept in {partial}; run the same command again to resume"
                    ) from exc
                bar.write(f"{target.name}: {exc}; resuming (attempt {failures}/{retries})")
                time.sleep(backoff * failures)
    finally:
        bar.close()
    partial.replace(target)
    return target


def _attempt(
    url: str, partial: Path, have: int, total: int | None, expected: int | None, timeout: float, bar: tqdm
) -> int:
    """One request from byte ``have`` to the end; returns the file's size. Raises ``OSError`` to retry."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            match = _UNSATISFIABLE.match(exc.headers.get("Content-Range", "") or "")
            if match and int(match.group(1)) == have:
                _check_total(url, have, expected)
                return have
            partial.unlink()
            raise OSError(f"HTTP 416 for a resume at byte {have}; starting over") from exc
        if 500 <= exc.code < 600:
            raise OSError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    with response:
        announced, resumed = _announced_total(response, have)
        if (getattr(response, "status", None) or 200) == 206 and not resumed:
            partial.unlink(missing_ok=True)
            raise OSError(f"the server answered a resume at byte {have} with another range; starting over")
        if have and not resumed:
            have = 0
            bar.reset(total=announced)
        _check_total(url, announced, expected)
        total = announced if announced is not None else total
        if total is not None:
            bar.total = total
        with open(partial, "ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
                have += len(block)
    if total is not None and have < total:
        raise OSError(f"connection closed after {have} of {total} bytes")
    if total is not None and have > total:
        partial.unlink()
        raise OSError(f"received {have} bytes, more than the announced {total}; starting over")
    return total if total is not None else have


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file (one read for all algorithms), with a progress bar for big files."""
    digests = {name: hashlib.new(name) for name in algorithms}
    size = path.stat().st_size
    with (
        open(path, "rb") as handle,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"checking {path.name}",
            disable=size < HASH_PROGRESS_MIN,
            leave=False,
        ) as bar,
    ):
        for block in iter(lambda: handle.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
            bar.update(len(block))
    return {name: digest.hexdigest() for name, digest in digests.items()}
