"""Downloading the parts of a data set that have direct URLs (the spec's ``download`` list).

Each entry ``{url, domain?, dest?, extract?, md5?}`` is fetched into
``<data_root>/<root>/<dest>`` (to a ``.part`` file, renamed when complete), checked against
``md5`` when given, and ``.zip``/``.tar*`` archives are extracted there. Finished entries leave
a marker so that a rerun skips them; an interrupted one starts over.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from benchmark.data.errors import DataError
from benchmark.data.locate import DATA_ROOT_ENV
from benchmark.data.spec import DatasetSpec

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(url: str, target: Path) -> None:
    """Stream ``url`` to ``target`` with a progress bar; a failure names the URL and leaves no partial file."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {exc}") from exc
    partial.replace(target)


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into ``dest`` (member paths may not leave it)."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(dest)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(dest, filter="data")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it and download again") from exc


def download(
    spec: DatasetSpec,
    data_root: str | os.PathLike | None,
    domains: Sequence[str] | None = None,
    keep_archives: bool = False,
) -> Path:
    """Fetch (and extract) the spec's download entries for ``domains`` (all if None); returns the data set root."""
    data_root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not data_root:
        raise DataError(f"no data root: pass --data-root DIR or set {DATA_ROOT_ENV}")
    base = Path(data_root).expanduser()
    root = next((base / r for r in spec.layout.roots if (base / r).is_dir()), base / spec.layout.roots[0])
    for entry in spec.download:
        if domains is not None and entry.get("domain") is not None and entry["domain"] not in domains:
            continue
        url = str(entry["url"])
        dest = root / str(entry.get("dest", "."))
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / url.rsplit("/", 1)[-1]
        is_archive = target.name.endswith(ARCHIVE_SUFFIXES) and entry.get("extract", True)
        marker = dest / f".{target.name}.done"
        if marker.exists() or (not is_archive and target.exists()):
            print(f"have {target}")
            continue
        if not target.exists():
            print(f"fetching {url}")
            fetch_url(url, target)
        if entry.get("md5") and _md5(target) != entry["md5"]:
            raise DataError(f"{target} does not match md5 {entry['md5']} from {url}; delete it and retry")
        if is_archive:
            print(f"extracting {target}")
            extract(target, dest)
            if not keep_archives:
                target.unlink()
            marker.touch()
    return root
