"""The base of methods that read each test image's augmented views through the frozen image encoder.

TPT, C-TPT, TPS (``benchmark/adapt/episodic.py``), ZERO, MTA, BoostAdapter, DMN and DPE all start
from the same thing: the features of an image's test view and ``views - 1`` random resized crops
(+ flip; AugMix on top where ``augmix`` is set) of the whole image, drawn from the image's own
seeded generator (``view_seed``: every method of a seed sees the same views) and shared through
the model's view cache (``benchmark/adapt/views.py``). A method states the crop settings in its
hyper-parameters (``views``, ``crop_scale``, ``interpolation``, optionally ``augmix``) and calls
``self.view_features(batch)``.
"""

from __future__ import annotations

import torch

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.augment import Augment
from benchmark.adapt.views import view_features


class ViewMethod(Adapter):
    """An adapter whose stream steps read ``views`` views of each test image (the first: its test view)."""

    def view_augment(self) -> Augment:
        """The augmented views: a random resized crop + flip of the whole image (``crop_scale``,
        ``interpolation``), AugMix on top if the method has ``augmix`` set."""
        hp = self.hp
        return Augment(
            "augmix" if hp.get("augmix", False) else "rrc",
            scale=tuple(hp["crop_scale"]),
            interpolation=hp["interpolation"],
            mean=self.model.mean.flatten().tolist(),
        )

    @property
    def needs_full(self) -> bool:
        """Augmented views crop from the whole image; the test view alone does not need it."""
        return self.hp["views"] > 1

    def view_features(self, batch: dict) -> torch.Tensor:
        """(B, V, D) features of every image's test view and ``views - 1`` augmented views."""
        return view_features(self.model, batch, self.hp["views"], self.view_augment(), self.view_seed)
