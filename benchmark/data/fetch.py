"""The ``download`` command: fetch a data set's direct-download files, check them, install them.

Each spec ``download`` entry ``{url, domain?, size?, sha256?, md5?}`` (an archive or a list file) is fetched
(resumably) into ``<data_root>/.clipbench_downloads/<name>/``, checked against the recorded size
and digests *before* anything is extracted, then installed into the expected layout
(``benchmark.data.install``). A file that fails the check is deleted and nothing is installed.
Entries already installed (by a manifest, or present on disk) are skipped, so a rerun only
fetches what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.data.archives import is_archive
from benchmark.data.errors import DataError
from benchmark.data.install import install, list_names, target_root
from benchmark.data.locate import DATA_ROOT_ENV
from benchmark.data.manifest import installed_by
from benchmark.data.sources import check_source, source_name
from benchmark.data.spec import DatasetSpec
from benchmark.data.transfer import RETRIES, fetch_url

DOWNLOADS_DIR = ".clipbench_downloads"


def _present(spec: DatasetSpec, root: Path, entry: dict[str, Any]) -> Path | None:
    """What of this entry is already on disk: its installed manifest, list file or domain folder."""
    name = source_name(str(entry["url"]))
    if installed_by(root, name) is not None:
        return root
    if name in list_names(spec) or not is_archive(Path(name)):
        target = root / name
        return target if target.exists() else None
    if entry.get("domain") is not None:
        for folder in spec.domain(str(entry["domain"])).folders:
            if (root / folder).is_dir():
                return root / folder
    return None


def download(
    spec: DatasetSpec,
    data_root: str | os.PathLike | None,
    domains: Sequence[str] | None = None,
    keep_archives: bool = False,
    overwrite: bool = False,
    retries: int = RETRIES,
    backoff: float = 2.0,
) -> Path:
    """Fetch, check and install the spec's download entries for ``domains`` (all if None); returns the data set root."""
    data_root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not data_root:
        raise DataError(f"no data root: pass --data-root DIR or set {DATA_ROOT_ENV}")
    base = Path(data_root).expanduser()
    root = target_root(spec, base)
    wanted = None if domains is None else {spec.resolve_domain(d) for d in domains}
    entries = [e for e in spec.download if wanted is None or e.get("domain") is None or e["domain"] in wanted]
    downloads = base / DOWNLOADS_DIR / spec.name
    odd = [
        str(e["url"])
        for e in entries
        if not is_archive(Path(source_name(str(e["url"])))) and source_name(str(e["url"])) not in list_names(spec)
    ]
    if odd:
        raise DataError(
            f"{spec.path / 'dataset.yaml'}: download entries must be archives or list files of "
            f"{spec.name}; cannot install {odd}"
        )
    for number, entry in enumerate(entries, start=1):
        url = str(entry["url"])
        name = source_name(url)
        step = f"[{number}/{len(entries)}] {name}"
        present = None if overwrite else _present(spec, root, entry)
        if present is not None:
            print(f"{step}: already present ({present}); skipped (--overwrite replaces it)")
            continue
        file = downloads / name
        if not file.exists():
            print(f"{step}: fetching {url}")
            fetch_url(url, file, size=entry.get("size"), retries=retries, backoff=backoff)
        try:
            facts = check_source(spec, file, entry)
        except DataError as exc:
            file.unlink(missing_ok=True)
            raise DataError(
                f"{exc}. The file was deleted and nothing was installed; run the command again to download it afresh"
            ) from exc
        checked = ", ".join(facts["checked"]) or "no size or checksum recorded in the spec"
        print(f"{step}: {facts['size']} bytes, sha256 {facts['sha256']} (checked: {checked})")
        install(spec, file, base, facts, overwrite=overwrite)
        if not keep_archives:
            file.unlink()
    for folder in (downloads, downloads.parent):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return root
