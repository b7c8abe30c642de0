"""``UnlabeledData``: the only view of the target data a method ever gets (images, no labels)."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from benchmark.augment import AUGMENTATIONS


class UnlabeledData:
    """The unlabeled adapt set: uint8 images at the model resolution and their positions.

    It holds no labels by construction: methods receive this object, the evaluator keeps the
    labels. Batches are dicts ``{"index": LongTensor, "images": float [0,1] tensor}`` plus one
    entry per extra requested view (``"images_strong"``...), all on ``device``.
    """

    def __init__(self, images: torch.Tensor, device: torch.device | str = "cpu", seed: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("UnlabeledData expects uint8 images of shape (N, 3, H, W)")
        self.images = images
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: str = "none",
        views: tuple[str, ...] = (),
        drop_last: bool = False,
        indices: torch.Tensor | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches over all images (or ``indices``), optionally shuffled and augmented.

        ``augment`` names the transform of ``images``; each name in ``views`` adds another
        independently augmented view under ``images_<name>`` (e.g. MUST's strong view).
        """
        for name in (augment, *views):
            if name not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
        idx = torch.arange(len(self)) if indices is None else indices.cpu()
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=self.generator)]
        stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            b = idx[start : start + batch_size]
            if len(b) == 0:
                break
            base = self.images[b].to(self.device, non_blocking=True).float().div_(255.0)
            batch = {"index": b.to(self.device), "images": AUGMENTATIONS[augment](base, self.generator)}
            for name in views:
                batch[f"images_{name}"] = AUGMENTATIONS[name](base, self.generator)
            yield batch

    def num_batches(self, batch_size: int, drop_last: bool = False, n: int | None = None) -> int:
        """How many batches ``batches`` yields for ``n`` images (default: all)."""
        n = len(self) if n is None else n
        return n // batch_size if drop_last else -(-n // batch_size)
