"""TPT: test-time prompt tuning (Shu et al., NeurIPS 2022), episodic, batched over test images.

Recipe (azshue/TPT ``tpt_classification.py`` and ``clip/custom_clip.py``; file and line of each
value in ``docs/recipes.md``): for every test image, the original view (the test transform) and
63 random resized crops + flips of the whole image (AugMix added for TPT's fine-grained data
sets only; ``augmix``), the 10% of views with the lowest softmax entropy kept (6 of 64), the
entropy of their averaged probabilities (logits scaled by the checkpoint's ``logit_scale.exp()``,
custom_clip.py:284, 317) minimised over a 4-token context initialised from "a photo of a" by one
AdamW step (lr 5e-3, weight decay 0.01, fresh optimiser state), the original view predicted with
the tuned context, then context and optimiser reset.

The loop, the per-image AdamW and the fp16 loss scale live in ``benchmark/adapt/episodic.py``
(shared with C-TPT and TPS): ``batch_size`` test images are tuned at once, each with its own
context and optimiser state, which equals tuning them one after the other.
"""

from __future__ import annotations

from benchmark.adapt.episodic import PromptTuning
from benchmark.registry import register_method


@register_method
class TPT(PromptTuning):
    """Episodic test-time prompt tuning of a shared context per test image.

    Hyper-parameters (``benchmark.adapt.episodic.EpisodicTuning``): ``views`` (64), ``selection``
    (0.1), ``steps`` (1), ``lr`` (5e-3), ``weight_decay`` (0.01), ``n_ctx``/``ctx_init`` (4, "a
    photo of a"), ``augmix`` (False), ``crop_scale``/``interpolation`` (0.08-1, bilinear) and
    ``batch_size`` (16 images tuned at once: changes no result).
    """

    name = "tpt"
    defaults = dict(PromptTuning.defaults)
