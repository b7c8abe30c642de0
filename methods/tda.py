"""TDA: training-free dynamic adapter (Karmanov et al., CVPR 2024), online over the test stream.

Recipe (kdiAAA/TDA ``tda_runner.py``, ``utils.py``, ``configs/*.yaml``; file and line of each value
in ``docs/recipes.md``). Nothing is trained; two caches grow along the stream, keyed by the
zero-shot pseudo-label ``argmax_k 100 cos``:

- positive cache: every image is offered; a class keeps its ``pos_shot_capacity`` (3) entries of
  lowest prediction entropy ``H`` (a new entry replaces the highest-entropy one when it is lower);
- negative cache: only images with ``neg_entropy_lower < H / log2(K) < neg_entropy_upper``
  (0.2, 0.5; TDA normalises the natural-log entropy by ``log2 K``), ``neg_shot_capacity`` (2) per
  class, each with its probability vector;
- logits: ``100 cos + A_pos - A_neg`` with ``A = alpha * exp(-beta (1 - f . keys)) @ values``;
  positive values are the keys' one-hot pseudo-labels, negative values the mask
  ``neg_mask_lower < p < neg_mask_upper`` (0.03, 1) of the stored probabilities.

The caches are updated before the image's own logits are computed (so it can match itself), as
in ``tda_runner.py:83-93``. The caches and their rules live in ``benchmark/adapt/caches.py``, shared
with BoostAdapter. With ``views > 1`` (TDA's ImageNet-A/V/R/Sketch setting: 64 AugMix
views) the feature, logits, entropy and probabilities are those of the 10% lowest-entropy views
(mean feature, not re-normalised; mean logits; entropy of the mean probability; mean probability).
"""

from __future__ import annotations

import torch

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.augment import Augment
from benchmark.adapt.caches import ClassCache, TDACaches, cache_logits, confident_statistics
from benchmark.adapt.views import confident_views, view_features
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method

__all__ = ["TDA", "ClassCache", "cache_logits"]


@register_method
class TDA(Adapter):
    """Positive and negative caches of test features, their affinities added to the zero-shot logits.

    Defaults: TDA's ImageNet configuration (``configs/imagenet.yaml``: positive alpha 2, beta 5;
    every config shares the negative cache's values) and, as TDA does for ImageNet and its ten
    cross-domain data sets, one view per image (``views``; 64 with AugMix is its setting for the
    ImageNet variants). ``batch_size`` images are encoded together; the caches still see one
    image at a time, in stream order.
    """

    name = "tda"
    trains = False
    regimes = ("online",)
    official_precision = "fp16_weights"
    """``clip.load``'s fp16 model (TDA/clip/model.py:430); caches in fp16 (tda_runner.py:54-61)."""
    defaults = {
        "pos_shot_capacity": 3,
        "pos_alpha": 2.0,
        "pos_beta": 5.0,
        "neg_shot_capacity": 2,
        "neg_alpha": 0.117,
        "neg_beta": 1.0,
        "neg_entropy_lower": 0.2,
        "neg_entropy_upper": 0.5,
        "neg_mask_lower": 0.03,
        "neg_mask_upper": 1.0,
        "views": 1,
        "selection": 0.1,
        "augmix": True,
        "batch_size": 64,
    }

    def configure(self) -> list:
        self.model.eval()
        self.caches = TDACaches(self.hp)
        return []

    def reset(self) -> None:
        super().reset()
        self.caches = TDACaches(self.hp)

    @property
    def positive(self) -> ClassCache:
        return self.caches.positive

    @property
    def negative(self) -> ClassCache:
        return self.caches.negative

    @property
    def needs_full(self) -> bool:
        return self.hp["views"] > 1

    @torch.no_grad()
    def image_statistics(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """Per image: feature, zero-shot logits ``100 cos``, entropy and probabilities (TDA's ``get_clip_logits``)."""
        text = self.model.text_features()
        feats = self.model.image_features(batch["images"])
        if self.hp["views"] == 1:
            logits = LOGIT_SCALE * feats @ text.t()
            entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
            return feats, logits, entropy, logits.softmax(-1)
        augment = Augment(
            "augmix" if self.hp["augmix"] else "rrc",
            scale=(0.08, 1.0),
            interpolation="bilinear",
            mean=self.model.mean.flatten().tolist(),
        )
        out = []
        for f in view_features(self.model, batch, self.hp["views"], augment, self.view_seed):
            z = LOGIT_SCALE * f @ text.t()
            keep = confident_views(z.unsqueeze(0), self.hp["selection"])[0]
            out.append(confident_statistics(f, z, keep))
        return tuple(torch.stack(x) for x in zip(*out))

    @torch.no_grad()
    def stream_step(self, batch: dict) -> torch.Tensor:
        """Offer each image to the caches in order, then its logits ``100 cos + A_pos - A_neg``."""
        k = self.model.num_classes
        feats, logits, entropy, probs = self.image_statistics(batch)
        out = []
        for f, z, h, p in zip(feats, logits, entropy.tolist(), probs):
            self.caches.offer(int(z.argmax()), f, h, p, k)
            out.append(self.caches.logits(f, z, k))
        return torch.stack(out).float()

    def stream_stats(self) -> dict[str, float]:
        """How full the caches are (TDA trains nothing, so it has no loss)."""
        return {"positive_cache": float(len(self.positive)), "negative_cache": float(len(self.negative))}
