"""A disk cache of decoded images: each image is decoded and resized once, then memory-mapped.

Decoding JPEGs is the slow part of loading a domain, and a sweep loads the same domain for every
method, setting and seed. The cache writes each decoded ``uint8`` tensor once, as raw bytes, to
``<cache>/<label>-<R>px-<key>.u8`` and afterwards opens it as a copy-on-write memory map: no
decoding, big domains need not fit in RAM, and parallel jobs share the pages.

- Where: the ``cache`` argument, else ``$CLIPBENCH_CACHE``, else ``<data_root>/.clipbench_cache``
  when the data root is writable, else ``$XDG_CACHE_HOME/clipbench`` (``~/.cache/clipbench``).
  ``off`` (or ``cache=False``) turns it off.
- Key: the label names the data set, domain, image set and data set root; the digest covers the
  transform (interpolation, crop), the resolution and every file's path, size and modification
  time. A changed, added or removed file gives a new key, and the entries of the old key are deleted.
- Concurrency: a lock file per entry makes parallel jobs decode once; entries appear by rename,
  so a reader never sees half of one.
- Images are stored in class order, so an adapt set of the first classes is a view of its
  domain; other row selections (e.g. the UEO protocol's opda adapt set) are cached beside their
  source as ``<source name>-rows-<digest>.u8``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.data.images import FULL_TRANSFORM, TRANSFORM, read_images

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; parallel jobs may then decode the same domain twice
    fcntl = None

CACHE_ENV = "CLIPBENCH_CACHE"
CACHE_FOLDER = ".clipbench_cache"
FORMAT = "clipbench-u8-v2"
OFF = ("off", "none", "0", "false", "no")

_ROWS_CHUNK = 1024


def cache_dir(value: str | os.PathLike | bool | None, data_root: Path | None = None) -> Path | None:
    """The cache folder (see the module docstring for the order); None when caching is off."""
    if value is False:
        return None
    if value is None or value is True:
        value = os.environ.get(CACHE_ENV) or None
    if value is not None:
        return None if str(value).strip().lower() in OFF else Path(value).expanduser()
    if data_root is not None and os.access(data_root, os.W_OK):
        return Path(data_root) / CACHE_FOLDER
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "clipbench"


def digest(text: str, length: int = 10) -> str:
    """A short hex digest of a string (used to tell data roots apart in entry names)."""
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def files_key(paths: Sequence[Path], resolution: int, view: str = "center") -> str:
    """A digest of the format, transform (of ``view``), resolution and each file's path, size and mtime."""
    transform = FULL_TRANSFORM if view == "full" else TRANSFORM
    hasher = hashlib.sha1(f"{FORMAT}\0{transform}\0{resolution}".encode())
    for path in paths:
        stat = os.stat(path)
        hasher.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return hasher.hexdigest()[:20]


def rows_key(rows: np.ndarray) -> str:
    """A digest of selected row indices."""
    return hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<file>.lock`` (a no-op where ``fcntl`` is missing)."""
    if fcntl is None:
        yield
        return
    with open(file.with_name(f"{file.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(file: Path, shape: tuple[int, ...]) -> bool:
    return file.is_file() and file.stat().st_size == int(np.prod(shape))


def cached_tensor(
    folder: Path, name: str, shape: tuple[int, ...], fill: Callable[[torch.Tensor], None]
) -> torch.Tensor:
    """The uint8 tensor stored as ``folder/name``; computed by ``fill(out)`` and stored when absent."""
    file = folder / name
    if not _complete(file, shape):
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(file):
            if not _complete(file, shape):
                partial = file.with_name(f"{file.name}.{os.getpid()}.tmp")
                try:
                    array = np.memmap(partial, dtype=np.uint8, mode="w+", shape=shape)
                    fill(torch.from_numpy(array))
                    array.flush()
                    del array
                    os.replace(partial, file)
                finally:
                    partial.unlink(missing_ok=True)
    return torch.from_numpy(np.memmap(file, dtype=np.uint8, mode="c", shape=shape))


def prune(folder: Path, prefix: str, keep: str) -> list[str]:
    """Delete entries (and their locks) named ``prefix*`` but not ``keep*``: stale versions of one image set."""
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(prefix) and not entry.name.startswith(keep) and ".tmp" not in entry.name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def read_images_cached(
    paths: Sequence[Path],
    resolution: int,
    label: str,
    folder: Path | None,
    desc: str = "images",
    threads: int | None = None,
    view: str = "center",
) -> tuple[torch.Tensor, str, np.ndarray]:
    """``read_images`` through the cache in ``folder`` (plain decoding when None).

    Returns the images, the entry's name stem (``""`` when not cached), which names the row
    selections made from it, and the valid (h, w) of every image (an (N, 2) array; all R for the
    ``center`` view). The sizes of a ``full`` view are stored beside it as ``<stem>.sizes.npy``,
    written before the images are renamed into place.
    """
    n = len(paths)
    sizes = np.full((n, 2), resolution, dtype=np.int32)
    if folder is None or not paths:
        images = read_images(paths, resolution, desc=desc, threads=threads, view=view, sizes=sizes)
        return images, "", sizes
    kind = "" if view == "center" else f"{view}-"
    prefix = f"{label}-{kind}{resolution}px-"
    stem = prefix + files_key(paths, resolution, view)
    shape = (n, 3, resolution, resolution)
    sizes_file = folder / f"{stem}.sizes.npy"

    def fill(out: torch.Tensor) -> None:
        read_images(paths, resolution, desc=desc, threads=threads, out=out, view=view, sizes=sizes)
        if view == "full":
            tmp = sizes_file.with_name(f"{sizes_file.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, sizes)
            os.replace(tmp, sizes_file)

    if view == "full" and not sizes_file.is_file():
        (folder / f"{stem}.u8").unlink(missing_ok=True)
    images = cached_tensor(folder, f"{stem}.u8", shape, fill)
    if view == "full":
        sizes = np.load(sizes_file)
    prune(folder, prefix, stem)
    return images, stem, sizes


def select_rows(images: torch.Tensor, rows: np.ndarray, folder: Path | None, stem: str) -> torch.Tensor:
    """``images[rows]`` (boolean mask) without copying where possible.

    All rows: the tensor itself; one contiguous block: a view (of the memory map when cached);
    otherwise a copy, cached beside its source when ``stem`` is set.
    """
    if rows.all():
        return images
    index = np.flatnonzero(rows)
    if len(index) and index[-1] - index[0] + 1 == len(index):
        return images[int(index[0]) : int(index[-1]) + 1]
    if folder is None or not stem or not len(index):
        return images[torch.from_numpy(index)]

    def fill(out: torch.Tensor) -> None:
        for start in range(0, len(index), _ROWS_CHUNK):
            out[start : start + _ROWS_CHUNK] = images[torch.from_numpy(index[start : start + _ROWS_CHUNK])]

    shape = (len(index), *images.shape[1:])
    return cached_tensor(folder, f"{stem}-rows-{rows_key(index)}.u8", shape, fill)
