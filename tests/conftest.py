"""Shared fixtures: tiny random-weight open_clip models (a ViT and a ResNet) and unlabeled data.

Nothing here downloads: the architectures are registered from JSON configs in tests/configs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import pytest
import torch

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import ClipClassifier, load_clip

CONFIGS = Path(__file__).parent / "configs"
CLASSNAMES = ["circle", "square", "triangle", "star", "Alarm_Clock"]

for _cfg in sorted(CONFIGS.glob("*.json")):
    if _cfg.stem not in open_clip.list_models():
        open_clip.add_model_config(_cfg)
logging.getLogger().setLevel(logging.ERROR)


def make_classifier(arch: str, classnames: list[str] = CLASSNAMES) -> ClipClassifier:
    """A fresh ClipClassifier over a tiny random-weight model ("vit" or "rn")."""
    torch.manual_seed(0)
    return ClipClassifier(load_clip(f"test-tiny-{arch}", "none"), classnames)


@pytest.fixture(params=["vit", "rn"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_vit() -> ClipClassifier:
    return make_classifier("vit")


@pytest.fixture
def tiny_rn() -> ClipClassifier:
    return make_classifier("rn")


def make_data(model: ClipClassifier, n: int = 24, seed: int = 0) -> UnlabeledData:
    """Random uint8 images at the model's resolution, wrapped as the unlabeled adapt set."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, model.image_size, model.image_size), generator=g, dtype=torch.uint8)
    return UnlabeledData(images, seed=seed)
