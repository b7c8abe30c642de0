"""C-TPT: calibrated test-time prompt tuning (Yoon et al., ICLR 2024), episodic, batched over test images.

TPT plus a text-feature dispersion term (hee-suk-yoon/C-TPT at 085e6c2; file and line of each
value in ``docs/recipes.md``): per test image, the loss of the one AdamW step on the 4-token
context is

    TPT's marginal entropy of the confident views  -  lambda * ATFD,
    ATFD = mean_k || t_k - mean_j t_j ||_2

over the K normalised class text features ``t_k`` of the current context (the "average text
feature dispersion", ``clip/custom_clip.py:319-330``; ``tpt_classification.py:155-160``).
Everything else is TPT's loop (``benchmark/adapt/episodic.py``): 64 views, 10% kept, lr 5e-3,
one step, fp16 autocast with a GradScaler(init_scale=1000), logits scaled by the checkpoint's
``logit_scale.exp()`` (custom_clip.py:286, 334).

Our data sets (distribution shifts of the prompted classes) are mapped to C-TPT's
natural-distribution-shift setting, the ImageNet variants, as TPT's recipe here maps them to
TPT's ImageNet-variant setting: ``scripts/test_tpt_ctpt_ds.sh`` sets lambda = 20 and passes
``--I_augmix``, which turns AugMix on for the one-letter ImageNet sets too
(``tpt_classification.py:266-271``), unlike TPT. So ``lam=20`` and ``augmix=True`` by default;
the fine-grained script (ImageNet and 10 fine-grained sets) uses lambda 50
(``test_tpt_ctpt_fg.sh:10``).
"""

from __future__ import annotations

import torch

from benchmark.adapt.episodic import PromptTuning
from benchmark.registry import register_method


def text_feature_dispersion(text: torch.Tensor) -> torch.Tensor:
    """ATFD of (..., K, D) class text features: the mean over classes of the L2 distance to their centroid."""
    return (text - text.mean(dim=-2, keepdim=True)).norm(dim=-1).mean(dim=-1)


@register_method
class CTPT(PromptTuning):
    """TPT with the text-feature dispersion term: ``loss = H(mean of confident views) - lam * ATFD``.

    Hyper-parameters: TPT's (``views``, ``selection``, ``steps``, ``lr``, ``weight_decay``,
    ``n_ctx``/``ctx_init``, ``crop_scale``/``interpolation``, ``batch_size``), ``lam`` (20: the
    distribution-shift script; 50 is the fine-grained one) and ``augmix`` (True: that script
    passes ``--I_augmix``; False gives TPT's views exactly, isolating the ATFD term).
    """

    name = "ctpt"
    defaults = {**PromptTuning.defaults, "lam": 20.0, "augmix": True}

    def regulariser(self, text: torch.Tensor) -> torch.Tensor:
        """``-lam * ATFD`` of each image's (B, K, D) class text features."""
        return -self.hp["lam"] * text_feature_dispersion(text.float())
