"""Decoding and resizing images into uint8 tensors: the model's test transform minus normalisation.

Two views of every image, each a ``torch.uint8`` tensor of shape (3, R, R):

- ``center`` (the test transform): ``Resize(short side R, bicubic, antialias) + CenterCrop(R)``,
  the same geometry as open_clip's eval transform, so a model only has to scale to [0, 1] and
  normalise;
- ``full`` (what train augmentations crop from, as the official loaders crop the whole image):
  the whole image resized so that its long side is R (bicubic, antialias), placed at the top
  left and padded by repeating its last row and column; its valid size (h, w) is kept beside it.

Files are decoded with PIL in a few threads (PIL releases the GIL while decoding) straight into
one preallocated tensor to keep memory low.
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
FULL_TRANSFORM = "rgb, resize long side (bicubic, antialias), pad bottom-right by edge, uint8"
"""What ``full_transform`` does, in words (part of the cache key of ``full`` views)."""
VIEWS = ("center", "full")

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


def full_transform(image: Image.Image, resolution: int) -> tuple[torch.Tensor, int, int]:
    """The whole image with its long side at ``resolution``, edge-padded to (3, R, R); and its (h, w)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / max(w, h)
    nw, nh = max(1, min(resolution, round(w * scale))), max(1, min(resolution, round(h * scale)))
    image = TF.resize(image, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pad_edge(x, resolution), nh, nw


def pad_edge(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Pad a (..., 3, h, w) tensor to (..., 3, R, R) at the bottom and right by repeating its edge."""
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x
    rows = torch.arange(resolution).clamp(max=h - 1)
    cols = torch.arange(resolution).clamp(max=w - 1)
    return x[..., rows, :][..., cols].contiguous()


def read_image(path: str | os.PathLike, resolution: int, view: str = "center") -> tuple[torch.Tensor, int, int]:
    """Decode one file into ``view`` (``center`` or ``full``) with its valid (h, w).

    An unreadable or corrupt file raises ``DataError`` naming it.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if view == "full":
                return full_transform(image, resolution)
            return eval_transform(image, resolution), resolution, resolution
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
    view: str = "center",
    sizes: np.ndarray | None = None,
) -> torch.Tensor:
    """Decode files in order into one (N, 3, R, R) uint8 tensor (``out`` if given), in threads, with progress.

    ``view`` is ``center`` (the test transform) or ``full`` (the whole image, letterboxed); the
    valid (h, w) of every image is written into ``sizes`` (an (N, 2) integer array) when given.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if out is None:
        out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    workers = threads or default_threads()
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < PROGRESS_MIN, leave=False)

    def fill(index: int) -> None:
        out[index], h, w = read_image(paths[index], resolution, view)
        if sizes is not None:
            sizes[index] = (h, w)

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
    """Bring an (N, H, W, 3) uint8 array to (N, 3, R, R) uint8 with the same resize-and-crop geometry.

    Generated images are square, so this is also their ``full`` view (the whole image at R).
    """
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
