"""A disk cache of frozen image features, for work that never changes the image encoder.

Zero-shot evaluation, UEO's confidence weights and UPL's pseudo-label selection all encode the
un-augmented images with the pre-trained encoder. Across the methods and seeds of a sweep these
are the same features, so they are computed once and stored under ``<out>/features/`` (or
``$CLIPBENCH_FEATURES``), keyed by everything that determines them: the architecture, the
weights (file content hash or tag), the device type, the model's normalisation and the content
of the uint8 image tensor (which already carries the resolution and resize transform).

Features are always computed the same way, cached or not (float32, no autocast, fixed batches
in data set order), so a cache hit returns exactly what a miss would have computed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path

import torch

from benchmark.core.records import atomic_write

FORMAT = 2
"""Version of the key and file format; bump when the feature computation changes."""
BATCH = 64
"""Images per forward pass while extracting features."""
ENV = "CLIPBENCH_FEATURES"


@functools.lru_cache(maxsize=16)
def weights_id(pretrained: str | None) -> str:
    """What identifies the weights: a file's SHA-1 (its path may move), else the tag itself."""
    if pretrained and Path(pretrained).is_file():
        h = hashlib.sha1()
        with open(pretrained, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"sha1:{h.hexdigest()}"
    return f"tag:{pretrained}"


def tensor_digest(images: torch.Tensor) -> str:
    """SHA-1 of a tensor's shape, dtype and bytes (the images' identity, whatever their source)."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha1(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Image features of one model identity, stored as ``<root>/<key>.pt`` files written atomically."""

    def __init__(self, root: Path | str, model: str, pretrained: str | None):
        self.root = Path(root)
        self.model = model
        self.weights = weights_id(pretrained)
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_run(cls, out: Path, model: str, pretrained: str | None) -> FeatureCache:
        """The cache of a sweep: ``$CLIPBENCH_FEATURES`` when set, else ``<out>/features``."""
        return cls(os.environ.get(ENV) or Path(out) / "features", model, pretrained)

    def key(self, mean: torch.Tensor, std: torch.Tensor, images: torch.Tensor, device: str) -> str:
        """Digest of everything that determines the features of ``images``."""
        parts = [
            str(FORMAT),
            self.model,
            self.weights,
            device,
            torch.__version__,
            repr(mean.flatten().tolist()),
            repr(std.flatten().tolist()),
            tensor_digest(images),
        ]
        return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:24]

    def load(self, key: str) -> torch.Tensor | None:
        """The stored features of ``key``, or None when absent or unreadable (then recomputed)."""
        path = self.root / f"{key}.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            return None

    def store(self, key: str, feats: torch.Tensor) -> None:
        """Write atomically (temp file + rename) so concurrent runs never read a partial file."""
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(feats.detach().cpu().contiguous(), buf)
        atomic_write(self.root / f"{key}.pt", buf.getvalue())


def _encoder_frozen(model) -> bool:
    """Only an image encoder in eval mode gives the cached features (train-mode BN would not)."""
    return not any(m.training for m in model.visual.modules())


@torch.no_grad()
def compute_image_features(model, images: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
    """(N, D) normalised float32 features of uint8 ``images``, in order, on ``model.device``."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(model.device).float().div_(255.0)
        out.append(model.image_features(x).float())
    return torch.cat(out) if out else torch.empty(0, 0, device=model.device)


@torch.no_grad()
def frozen_image_features(model, images: torch.Tensor) -> torch.Tensor:
    """Features of ``images`` under the model's current (unchanged) encoder, via its cache if any.

    ``model.feature_cache`` is attached by the runner; without it, or while the encoder is in
    train mode, the features are computed directly. Callers must only use this before any update
    to the image encoder.
    """
    cache: FeatureCache | None = getattr(model, "feature_cache", None)
    if cache is None or not _encoder_frozen(model):
        return compute_image_features(model, images)
    key = cache.key(model.mean, model.std, images, f"{model.device.type}/{model.input_dtype}")
    feats = cache.load(key)
    if feats is None:
        cache.misses += 1
        feats = compute_image_features(model, images)
        cache.store(key, feats)
    else:
        cache.hits += 1
    return feats.to(model.device)
