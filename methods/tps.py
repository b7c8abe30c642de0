"""TPS: test-time prototype shifting (Sui, Wang, Yeung-Levy 2024), episodic, batched over test images.

Recipe (elaine-sui/TPS at 556db0f; file and line of each value in ``docs/recipes.md``): the class
prototypes are text embeddings computed once and cached (``utils/save_class_embeds.py``); for
every test image a per-class shift vector ``s_k`` (K x D, zero-initialised, fp32) is learned by one
AdamW step (lr 5e-3, weight decay 0.01, fresh optimiser state) minimising TPT's marginal entropy
of the 10% most confident of 64 views, with the class features ``normalize(normalize(p_k) + s_k)``
(``model/learnable_shift.py:202-247``, ``model/shifter.py:61-76``) and logits scaled by the
checkpoint's ``logit_scale.exp()`` (learnable_shift.py:42, 238); the original view is predicted
with the shifted prototypes, then the shifts and the optimiser are reset
(``shift_classification.py:41-63, 242-255``). fp16 autocast with ``GradScaler(init_scale=1e3)``
created once per data set (shift_classification.py:54, 185).

The views are TPT's (``augmix=len(set_id)>1``, shift_classification.py:98-99: AugMix for the
fine-grained sets, crops and flips only for the ImageNet family, which our domain shifts mirror as
in TPT's recipe), obtained through ``view_features`` so they are shared with TPT.

Prototypes: the common ``prompts`` hyper-parameter. ``single`` ("a photo of a {}.") is TPS's
``scripts/shift/shift_text_per_class.sh``; ``imagenet80`` (the mean of the 80 normalised CLIP
ImageNet template embeddings) is ``shift_text_per_class_mean_init_template.sh``. The README's
example averages that with the mean embedding of GPT-4 class descriptors
(``gpt4_descriptors/*.json``), which exist only for TPS's own data sets; not reproduced.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.adapt.episodic import EpisodicTuning
from benchmark.registry import register_method


@register_method
class TPS(EpisodicTuning):
    """Episodic per-class shifts of cached text prototypes, tuned by TPT's loss on each image's views.

    Hyper-parameters: TPT's loop (``views`` 64, ``selection`` 0.1, ``steps`` 1, ``lr`` 5e-3,
    ``weight_decay`` 0.01, ``augmix`` False, ``crop_scale``/``interpolation``, ``batch_size``) and
    ``prompts`` (the prototypes: ``single`` by default, ``imagenet80``, ``ensemble``).
    """

    name = "tps"
    defaults = dict(EpisodicTuning.defaults)

    def configure(self) -> list[nn.Parameter]:
        """Eval mode; the (K, D) zero shift is the tuned tensor (its per-image copies are what AdamW updates)."""
        self.model.eval()
        protos = self.model.text_features()  # (K, D) normalised fixed-prompt embeddings, cached
        self.prototypes = protos.detach().float().clone()
        self.shift = nn.Parameter(torch.zeros_like(self.prototypes))  # fp32, as the official Shifter
        self.check_hparams()
        return [self.shift]

    def initial(self) -> torch.Tensor:
        return self.shift.detach()

    def class_text(self, tuned: torch.Tensor) -> torch.Tensor:
        """``normalize(p_k + s_k)`` for every image's (K, D) shifts; ``p_k`` already normalised."""
        return F.normalize(self.prototypes.unsqueeze(0) + tuned.float(), dim=-1)
