"""Zero-shot CLIP: nothing is adapted; prediction = argmax cosine, OOD score = MSP."""
from __future__ import annotations

import torch

from benchmark.adapter import Adapter
from benchmark.model import LOGIT_SCALE
from benchmark.registry import register_method


@register_method
class ZeroShot(Adapter):
    """The reference every method must beat: CLIP with the prompt "a photo of a {name}."."""

    name = "zero_shot"
    adapts = False

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` from precomputed image features (the evaluator's feature-cache path)."""
        logits = (LOGIT_SCALE * (features @ self.model.text_features().t())).float()
        return logits, logits.softmax(dim=-1).max(dim=-1).values
