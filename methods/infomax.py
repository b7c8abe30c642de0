"""InfoMax (SHOT-IM): UEO's parameters, optimiser and schedule with uniform sample weights."""

from __future__ import annotations

import torch

from benchmark.adapt.losses import infomax_loss
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.registry import register_method
from methods.ueo import UEO


@register_method
class InfoMax(UEO):
    """``mean_i H(p_i) - lam * H(mean_i p_i)`` on the same prompt context and norm affines as UEO.

    The ablation of UEO without confidence weights (tim-learn/UEO ``--noweight``, demo.py:473-475):
    only the loss and the (absent) weights differ.
    """

    name = "infomax"

    def before_adapt(self, data: UnlabeledData) -> None:
        """Nothing to precompute: every sample weighs the same."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``infomax_loss`` of the batch's ``100 * cos`` logits."""
        return infomax_loss(self.model(batch["images"]), self.hp["lam"])
