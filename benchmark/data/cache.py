"""An optional on-disk cache of decoded images, memory-mapped so that big domains need not fit in RAM.

Decoding a domain is the slow part of a run and a sweep decodes the same domain for every
method, setting and seed. With a cache folder (argument or ``$CLIPBENCH_CACHE``) each decoded
uint8 tensor is written once to ``<cache>/<label>-<key>.u8`` (temp file + rename, so parallel
jobs never see half a file) and later opened as a copy-on-write memory map. Keys hash the
resolution and every file's path, size and modification time, so a changed file invalidates them;
row selections of a cached tensor (a transductive adapt set) are cached the same way.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.data.images import read_images

CACHE_ENV = "CLIPBENCH_CACHE"

_ROWS_CHUNK = 1024


def cache_dir(value: str | os.PathLike | None) -> Path | None:
    """The cache folder: the argument, else ``$CLIPBENCH_CACHE``, else None (no caching)."""
    value = value if value is not None else os.environ.get(CACHE_ENV) or None
    return Path(value).expanduser() if value else None


def files_key(paths: Sequence[Path], resolution: int) -> str:
    """A digest of the resolution and each file's path, size and mtime."""
    digest = hashlib.sha1(f"uint8 resize-crop {resolution}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def rows_key(source_key: str, rows: np.ndarray) -> str:
    """A digest of a source tensor's key and the selected row indices."""
    return hashlib.sha1(source_key.encode() + np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:20]


def cached_tensor(
    folder: Path, name: str, shape: tuple[int, ...], fill: Callable[[torch.Tensor], None]
) -> torch.Tensor:
    """The uint8 tensor stored as ``folder/name``; computed by ``fill(out)`` and stored when absent."""
    file = folder / name
    if not (file.is_file() and file.stat().st_size == int(np.prod(shape))):
        folder.mkdir(parents=True, exist_ok=True)
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


def read_images_cached(
    paths: Sequence[Path],
    resolution: int,
    label: str,
    folder: Path | None,
    desc: str = "images",
    threads: int | None = None,
) -> tuple[torch.Tensor, str]:
    """``read_images`` through the cache in ``folder`` (plain decoding when None); returns images and key."""
    if folder is None or not paths:
        return read_images(paths, resolution, desc=desc, threads=threads), ""
    key = files_key(paths, resolution)
    shape = (len(paths), 3, resolution, resolution)

    def fill(out: torch.Tensor) -> None:
        read_images(paths, resolution, desc=desc, threads=threads, out=out)

    return cached_tensor(folder, f"{label}-{resolution}-{key}.u8", shape, fill), key


def select_rows(images: torch.Tensor, rows: np.ndarray, label: str, folder: Path | None, key: str) -> torch.Tensor:
    """``images[rows]`` (boolean mask); the tensor itself when all rows are kept; cached when ``key`` is set."""
    if rows.all():
        return images
    index = np.flatnonzero(rows)
    if folder is None or not key or not len(index):
        return images[torch.from_numpy(index)]

    def fill(out: torch.Tensor) -> None:
        for start in range(0, len(index), _ROWS_CHUNK):
            out[start : start + _ROWS_CHUNK] = images[torch.from_numpy(index[start : start + _ROWS_CHUNK])]

    shape = (len(index), *images.shape[1:])
    return cached_tensor(folder, f"{label}-{images.shape[-1]}-{rows_key(key, index)}.u8", shape, fill)
