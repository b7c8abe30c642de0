"""Decoding and resizing images into uint8 tensors: the model's test transform minus normalisation.

Every image becomes ``Resize(short side R, bicubic, antialias) + CenterCrop(R)`` as a
``torch.uint8`` tensor of shape (3, R, R), the same geometry as open_clip's eval transform, so
a model only has to scale to [0, 1] and normalise. Files are decoded with PIL in a few threads
(PIL releases the GIL while decoding) straight into one preallocated tensor to keep memory low.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from benchmark.data.errors import DataError

PROGRESS_MIN = 500
"""Sets with at least this many images show a progress bar."""

TRANSFORM = "rgb, resize short side (bicubic, antialias), center crop, uint8"
"""What ``eval_transform`` does, in words: part of every cache key, so changing it invalidates caches."""

_CHUNK = 1024


def default_threads() -> int:
    """Decoding threads: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def eval_transform(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB, resize the short side to ``resolution`` (bicubic, antialiased), centre-crop; (3, R, R) uint8."""
    image = image.convert("RGB")
    image = TF.resize(image, resolution, interpolation=InterpolationMode.BICUBIC, antialias=True)
    image = TF.center_crop(image, [resolution, resolution])
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Decode one file with ``eval_transform``; an unreadable or corrupt file raises ``DataError`` naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return eval_transform(image, resolution)
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc} (corrupt or truncated file? re-extract the archive)") from exc


def probe_image(path: str | os.PathLike, decode: bool = False) -> str | None:
    """Why a file is not a usable image (missing, empty, unidentifiable, or with ``decode`` undecodable), else None.

    Without ``decode`` only the header is parsed (fast: finds empty, foreign and garbage files);
    ``decode`` decodes every pixel and also finds truncated or damaged image data.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            if decode:
                image.load()
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return str(exc) or type(exc).__name__
    return None


def read_images(
    paths: Sequence[str | os.PathLike],
    resolution: int,
    desc: str = "images",
    threads: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode files in order into one (N, 3, R, R) uint8 tensor (``out`` if given), in threads, with progress."""
    if out is None:
        out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    workers = threads or default_threads()
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < PROGRESS_MIN, leave=False)

    def fill(index: int) -> None:
        out[index] = read_image(paths[index], resolution)

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, len(paths), _CHUNK):
            indices = range(start, min(start + _CHUNK, len(paths)))
            if pool is None:
                for i in indices:
                    fill(i)
            else:
                list(pool.map(fill, indices))
            bar.update(len(indices))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def resize_array(images: np.ndarray, resolution: int) -> torch.Tensor:
    """Bring an (N, H, W, 3) uint8 array to (N, 3, R, R) uint8 with the same resize-and-crop geometry."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"expected an (N, H, W, 3) uint8 array, got {images.dtype} {images.shape}")
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    height, width = batch.shape[-2:]
    if (height, width) == (resolution, resolution):
        return batch.contiguous()
    scale = resolution / min(height, width)
    size = (max(resolution, int(height * scale)), max(resolution, int(width * scale)))
    out = torch.empty((batch.shape[0], 3, resolution, resolution), dtype=torch.uint8)
    for start in range(0, batch.shape[0], 256):
        chunk = batch[start : start + 256].float()
        chunk = F.interpolate(chunk, size=size, mode="bicubic", antialias=True, align_corners=False)
        chunk = TF.center_crop(chunk, [resolution, resolution])
        out[start : start + 256] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def as_paths(paths: Sequence[Path], root: Path) -> list[str]:
    """File paths as POSIX strings relative to ``root`` (portable across machines), else absolute."""
    out = []
    for p in paths:
        try:
            out.append(p.relative_to(root).as_posix())
        except ValueError:
            out.append(p.as_posix())
    return out
