"""``UnlabeledData``: the only view of the target data a method ever gets (images, no labels)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from benchmark.adapt.augment import Augment, ImageBatch, image_generators

NO_AUGMENT = Augment("none")


class UnlabeledData:
    """The unlabeled images a method adapts on (the adapt set, or the test stream), and their positions.

    It holds no labels by construction: methods receive this object, the evaluator keeps the
    labels. ``images`` is the test view (uint8, model resolution); ``full`` and ``sizes`` (when
    given) the whole-image view that augmentations crop from. Batches are dicts
    ``{"index": LongTensor, <view>: float [0,1] tensor, ..., "raw": ImageBatch}`` on ``device``,
    one entry per requested view (``images`` first; e.g. MUST adds ``images_strong``) and the
    raw uint8 views for methods that draw views of their own (TPT, TDA, ROSITA).
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device | str = "cpu",
        seed: int = 0,
        full: torch.Tensor | None = None,
        sizes: np.ndarray | torch.Tensor | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("UnlabeledData expects uint8 images of shape (N, 3, H, W)")
        if (full is None) != (sizes is None) or (full is not None and full.shape != images.shape):
            raise ValueError("the full view needs sizes and the images' shape")
        self.images = images
        self.full = full
        self.sizes = None if sizes is None else torch.as_tensor(np.asarray(sizes), dtype=torch.int64)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def image_batch(self, rows: torch.Tensor) -> ImageBatch:
        """The raw (uint8) views of ``rows`` on the device."""
        full = self.full[rows].to(self.device, non_blocking=True) if self.full is not None else None
        sizes = self.sizes[rows] if self.sizes is not None else None
        return ImageBatch(self.images[rows].to(self.device, non_blocking=True), full, sizes)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        views: dict[str, Augment] | None = None,
        drop_last: bool = False,
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        image_seed: int | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches over all images (or ``indices``), optionally shuffled, one entry per view.

        ``views`` maps batch keys to augmentations (default: ``{"images": none}``); all draw from
        ``generator`` (default: this data's own seeded generator), or with ``image_seed`` each
        image's views from its own generator (seeded by ``image_seed`` and its position).
        """
        views = views or {"images": NO_AUGMENT}
        g = generator or self.generator
        idx = torch.arange(len(self)) if indices is None else indices.cpu()
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=g)]
        stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            b = idx[start : start + batch_size]
            if len(b) == 0:
                break
            raw = self.image_batch(b)
            batch = {"index": b.to(self.device)}
            draw = g if image_seed is None else image_generators(image_seed, b)
            for key, augment in views.items():
                batch[key] = augment(raw, draw)
            batch["raw"] = raw
            yield batch

    def num_batches(self, batch_size: int, drop_last: bool = False, n: int | None = None) -> int:
        """How many batches ``batches`` yields for ``n`` images (default: all)."""
        n = len(self) if n is None else n
        return n // batch_size if drop_last else -(-n // batch_size)
