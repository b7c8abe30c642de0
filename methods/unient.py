"""UniEnt: unified entropy optimisation for open-set test-time adaptation (Gao et al., CVPR 2024).

Recipe (gaozhengqing/UniEnt ``imagenet/tent.py`` and ``imagenet/main.py``, the TENT base; file
and line of each value in ``docs/recipes.md``), online over the test stream, one step per batch:

- outlier score of each sample: one minus its maximum cosine similarity to the classifier's rows
  under the frozen source model, min-max normalised within the batch (tent.py:72-79); for CLIP the
  rows are the class text embeddings and the source model is zero-shot CLIP;
- a two-component Gaussian mixture on those scores splits the batch: the component with the lower
  mean is "known" (tent.py:80-86); ``split: soft`` weights every sample by its posteriors
  (UniEnt+, ``ent_unf``), ``split: hard`` assigns it to its component (UniEnt, ``ent_ind_ood``);
- ``L = E_known[H(p)] - lam_unknown E_unknown[H(p)] - lam_marginal H(mean_batch p)``: entropy
  minimised on likely knowns and maximised on likely unknowns, with TENT's diversity term
  (tent.py:88-103); ``p = softmax(100 cos)`` of the adapted model;
- the norm affines train (BatchNorm with batch statistics, and LayerNorm, as UniEnt's ImageNet
  TENT collects both, tent.py:121, 156-157), SGD lr 1e-3 momentum 0.9 (main.py:44-46), continual
  (no reset); each batch is predicted by the forward pass its update comes from. UniEnt's ImageNet
  step sees 32 in-distribution and 32 outlier images (``--batch_size 32`` of each, main.py:48,
  196-204): here 64 images of the mixed test stream.

This follows UniEnt's own code rather than ROSITA's single-image CLIP variant (``unient_lda``),
which replaces the mixture by ROSITA's Otsu threshold and is not registered in ROSITA's runner.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.adapt.known_split import gmm2_posteriors
from benchmark.adapt.losses import softmax_entropy
from benchmark.registry import register_method
from methods.tent import Tent


@register_method
class UniEnt(Tent):
    """TENT's parameters and loop with UniEnt's mixture split and known/unknown entropy objective.

    Hyper-parameters besides TENT's: ``split`` (``soft``: UniEnt+, ``hard``: UniEnt),
    ``lam_unknown`` (weight of the unknowns' entropy, ``alpha[1]``) and ``lam_marginal`` (weight
    of the batch-mean entropy, ``alpha[0]``). UniEnt's code sets ``alpha[0] = 0.5`` by default
    (main.py:56) and searches both in {1, 0.5, 0.2, 0.1} (run.sh:26-31) without recording the
    choice; 0.5 is used for both.
    """

    name = "unient"
    regimes = ("online",)
    official_precision = "fp32"
    defaults = {
        **{k: v for k, v in Tent.defaults.items() if k != "recipe"},
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "nesterov": False,
        "batch_size": 64,
        "split": "soft",
        "lam_unknown": 0.5,
        "lam_marginal": 0.5,
    }
    choices = {**Tent.choices, "split": ("soft", "hard")}

    @classmethod
    def derive(cls, hp: dict, given: set[str]) -> dict:
        """UniEnt's own optimiser settings: no TENT recipe expansion."""
        return hp

    def configure(self) -> list:
        params = super().configure()
        self.source = copy.deepcopy(self.model.visual).eval()
        for p in self.source.parameters():
            p.requires_grad_(False)
        return params

    @torch.no_grad()
    def known_weights(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 2) weights (known, unknown) of a batch from the frozen source model's cosine scores."""
        x = self.model.normalize(images).to(self.model.input_dtype)
        feats = F.normalize(self.source(x).float(), dim=-1)
        best = (feats @ self.model.text_features().t()).max(dim=-1).values
        span = best.max() - best.min()
        outlier = 1 - (best - best.min()) / span if span > 0 else torch.zeros_like(best)
        post, _ = gmm2_posteriors(outlier.cpu().numpy())
        if self.hp["split"] == "hard":
            post = np.eye(2)[post.argmax(axis=1)]
        return torch.as_tensor(post, dtype=torch.float32, device=images.device)

    def forward_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(UniEnt's loss, the batch's logits)."""
        logits = self.model(images)
        weights = self.known_weights(images)
        h = softmax_entropy(logits)
        if self.hp["split"] == "hard":
            known, unknown = weights[:, 0] > 0, weights[:, 1] > 0
            loss_known = h[known].mean() if known.any() else h.sum() * 0
            loss_unknown = h[unknown].mean() if unknown.any() else h.sum() * 0
        else:
            loss_known, loss_unknown = (h * weights[:, 0]).mean(), (h * weights[:, 1]).mean()
        diversity = torch.special.entr(logits.float().softmax(dim=-1).mean(dim=0)).sum()
        loss = loss_known - self.hp["lam_unknown"] * loss_unknown - self.hp["lam_marginal"] * diversity
        return loss, logits
