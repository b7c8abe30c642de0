"""Zero-shot CLIP: nothing is adapted; prediction = argmax cosine, OOD score = MSP."""
from __future__ import annotations

from benchmark.adapter import Adapter
from benchmark.registry import register_method


@register_method
class ZeroShot(Adapter):
    """The reference every method must beat: CLIP with the prompt "a photo of a {name}."."""

    name = "zero_shot"
    adapts = False
