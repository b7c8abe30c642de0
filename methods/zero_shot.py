"""Zero-shot CLIP: nothing is adapted; prediction = argmax cosine, every OOD score from its logits."""

from __future__ import annotations

import torch

from benchmark.adapt.adapter import Adapter
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method


@register_method
class ZeroShot(Adapter):
    """The reference every method must beat: CLIP with the prompt "a photo of a {name}."."""

    name = "zero_shot"
    adapts = False
    trains = False
    regimes = ("none",)
    official_precision = "fp16_weights"
    """UEO's zero-shot evaluation runs CLIP as ``clip.load`` returns it (tim-learn/UEO demo.py:367)."""

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """``predict`` from precomputed image features (the evaluator's feature-cache path)."""
        return (LOGIT_SCALE * (features @ self.model.text_features().t())).float()
