"""Images of a ``synthetic`` data set: rendered by the spec's generator module instead of read from disk.

The generator (``benchmark.data.synthetic`` for the embedded benchmark) exposes
``render(domain, n_per_class, seed, size) -> (uint8 (N, size, size, 3), int64 (N,))`` with labels
indexing its ``CLASSES``; the images are brought to the requested resolution with the same
resize-and-crop geometry as files on disk.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.data.errors import DataError
from benchmark.data.images import resize_array
from benchmark.data.spec import DatasetSpec, load_generator


def render_domain(
    spec: DatasetSpec, domain: str, resolution: int, seed: int | None = None
) -> tuple[torch.Tensor, np.ndarray, list[str], int]:
    """Render one domain: (N, 3, R, R) uint8 images, pinned labels, ids ``<name>/<domain>/<index>``, and the seed.

    ``seed`` None renders the spec's fixed images (``layout.seed``); a run passes its data seed
    when the spec says ``resample: true``, so every seed of a sweep draws fresh images (the same
    for every method of that seed).
    """
    layout = spec.layout
    generator = load_generator(layout.generator)
    seed = layout.seed if seed is None else int(seed)
    images, labels = generator.render(domain, layout.n_per_class, seed, layout.size)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"{layout.generator}.render returned images {images.shape} and labels {labels.shape}")
    if len(labels) and not (labels.min() >= 0 and labels.max() < len(spec.classes)):
        raise DataError(f"{layout.generator}.render returned labels outside 0..{len(spec.classes) - 1}")
    ids = [f"{spec.name}/{domain}/{i:04d}" for i in range(len(labels))]
    return resize_array(images, resolution), labels, ids, seed
