"""How fast is a full pass over a domain's images: decoding every JPEG, against reading the decode cache?

Generates (or reuses) a fake Office-Home domain of JPEGs in the real layout, then times three
full passes at the model resolution, each loading the domain with ``load_split`` and handing
out every image once in uint8 batches (what the data side of an epoch does):

1. uncached: every file decoded and resized (``cache=False``);
2. first cached pass: decoded once more while the cache entry is written;
3. cached pass: the memory-mapped cache entry read back, no decoding.

For context it also times the model-side work on cached images on the CPU: the conversion to
float and the training augmentation on tensors (random resized crop + flip), both of which run
on the GPU in real runs. The OS page cache is not dropped (that needs root), so pass 3 reads warm pages; on a cold
disk it is bound by disk speed instead (150 KB per 224 px image).

    python benchmarks/data_speed.py [--images 2000] [--size 300] [--resolution 224] [--dir DIR]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.adapt.unlabeled import UnlabeledData  # noqa: E402
from benchmark.data import get_spec, load_split  # noqa: E402
from benchmark.data.images import default_threads  # noqa: E402

BATCH = 64


def make_tree(data_root: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """Write ``count`` photo-like JPEGs of ``size`` x ``size`` into ``<data_root>/office_home/Art/<class>/``."""
    classes = get_spec("office_home").classes
    per_class = math.ceil(count / len(classes))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for index in tqdm(range(per_class * len(classes)), desc="writing JPEGs", unit="img"):
        path = data_root / "office_home" / "Art" / classes[index % len(classes)] / f"{index // len(classes):05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        a, b, c = rng.uniform(0.5, 6.0, size=3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], axis=-1)
        noise = rng.normal(0, 0.15, size=(size, size, 3))
        pixels = np.clip((base * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def full_pass(images: torch.Tensor) -> float:
    """Copy every image once, batch by batch, as the uint8 batches a loader hands to the model.

    Converting to float happens after the copy to the device in ``UnlabeledData`` (on the GPU in
    real runs), so it is the model's work, timed separately by ``float_pass``.
    """
    total = 0
    for start in range(0, images.shape[0], BATCH):
        total += images[start : start + BATCH].clone().numel()
    return float(total)


def float_pass(images: torch.Tensor) -> float:
    """Every image once as a float [0, 1] batch on the CPU (the sum keeps the work from being skipped)."""
    total = 0.0
    for start in range(0, images.shape[0], BATCH):
        total += float(images[start : start + BATCH].float().div_(255.0).sum())
    return total


def augmented_pass(images: torch.Tensor) -> float:
    """One shuffled epoch with the weak training augmentation on the CPU, as ``UnlabeledData`` yields it."""
    total = 0.0
    for batch in UnlabeledData(images, seed=0).batches(BATCH, shuffle=True, augment="weak"):
        total += float(batch["images"].sum())
    return total


def timed(label: str, load: Callable[[], torch.Tensor], visit: Callable[[torch.Tensor], float]) -> tuple[float, int]:
    """Seconds for ``visit(load())`` and the number of images."""
    start = time.perf_counter()
    images = load()
    visit(images)
    seconds = time.perf_counter() - start
    print(f"  {label:<38s} {seconds:7.2f} s  {images.shape[0] / seconds:8.1f} img/s", flush=True)
    return seconds, images.shape[0]


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; prints the table and the cached/uncached ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="at least this many JPEGs (default 2000)")
    parser.add_argument("--size", type=int, default=300, help="JPEG side in pixels (default 300)")
    parser.add_argument("--resolution", type=int, default=224, help="model resolution (default 224)")
    parser.add_argument("--dir", type=Path, default=None, help="data root to create/reuse (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: CPUs, at most 8)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*incomplete data")

    temp = None if args.dir else Path(tempfile.mkdtemp(prefix="clipbench-speed-"))
    data_root = args.dir or temp
    try:
        paths = make_tree(data_root, args.images, args.size)
        cache = data_root / "speed-cache"
        shutil.rmtree(cache, ignore_errors=True)
        threads = args.threads or default_threads()
        print(
            f"{len(paths)} JPEGs of {args.size}x{args.size} in {data_root}; full pass at {args.resolution} px, "
            f"{threads} decoding threads"
        )

        def load(cached: bool) -> Callable[[], torch.Tensor]:
            return lambda: (
                load_split(
                    "office_home",
                    "Art",
                    "cda",
                    data_root=data_root,
                    resolution=args.resolution,
                    threads=threads,
                    cache=cache if cached else False,
                ).test.images
            )

        uncached, n = timed("uncached (decode + resize every file)", load(False), full_pass)
        building, _ = timed("first cached pass (decode + write)", load(True), full_pass)
        cached, _ = timed("cached pass (memory-mapped)", load(True), full_pass)
        print("for context, model-side work on the cached images (on the GPU in real runs):")
        timed("cached pass as float [0, 1] on the CPU", load(True), float_pass)
        timed("cached pass + weak augmentation, CPU", load(True), augmented_pass)
        print(
            f"cached pass: {uncached / cached:.1f}x the images per second of the uncached pass "
            f"({n / uncached:.0f} -> {n / cached:.0f} img/s); the first cached pass costs "
            f"{building / uncached:.2f}x an uncached one; cache on disk "
            f"{sum(p.stat().st_size for p in cache.glob('*.u8')) / 2**20:.0f} MiB"
        )
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
