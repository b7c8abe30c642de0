"""TPT: test-time prompt tuning (Shu et al., NeurIPS 2022), episodic, batched over test images.

Recipe (azshue/TPT ``tpt_classification.py`` and ``clip/custom_clip.py``; file and line of each
value in ``docs/recipes.md``): for every test image, the original view (the test transform) and
63 random resized crops + flips of the whole image (AugMix added for TPT's fine-grained data
sets only; ``augmix``), the 10% of views with the lowest softmax entropy kept (6 of 64), the
entropy of their averaged probabilities minimised over a 4-token context initialised from
"a photo of a" by one AdamW step (lr 5e-3, weight decay 0.01, fresh optimiser state), the
original view predicted with the tuned context, then context and optimiser reset.

Episodes are independent, so ``batch_size`` test images are tuned at once: each image gets its
own copy of the context in one (B, n_ctx, D) tensor, one text-encoder pass covers all B x K
prompts, and AdamW (element-wise) on that tensor is B independent optimisers. The result equals
tuning the images one after the other; the image encoder is frozen, so each view is encoded once,
and its features are shared with the other frozen-encoder methods of the sweep (``view_features``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.augment import Augment
from benchmark.adapt.views import confident_views, marginal_entropy, view_features
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method

INIT_LOSS_SCALE = 1000.0
"""TPT's ``GradScaler(init_scale=1000)`` (tpt_classification.py:149)."""
GROWTH_INTERVAL = 2000
"""Steps without overflow before the scale doubles: torch's ``GradScaler`` default, which TPT keeps."""


@register_method
class TPT(Adapter):
    """Episodic test-time prompt tuning of a shared context per test image.

    Hyper-parameters besides the optimiser's: ``views`` (64: the original and 63 augmented),
    ``selection`` (0.1: fraction of views kept), ``steps`` (1), ``n_ctx``/``ctx_init``,
    ``augmix`` (False: TPT applies AugMix only to its fine-grained data sets, not to the
    ImageNet variants this harness's domain shifts resemble), ``crop_scale``/``interpolation``
    of the random resized crops (torchvision's defaults, which TPT keeps: 0.08-1, bilinear) and
    ``batch_size`` (test images tuned at once: a speed knob that changes no result).
    """

    name = "tpt"
    regimes = ("episodic",)
    official_precision = "fp16"
    """fp32 weights, the forward under CUDA autocast with a GradScaler (tpt_classification.py:62, 149)."""
    defaults = {
        "views": 64,
        "selection": 0.1,
        "steps": 1,
        "optimizer": "adamw",
        "lr": 5e-3,
        "weight_decay": 0.01,
        "n_ctx": 4,
        "ctx_init": "a photo of a",
        "augmix": False,
        "augment": "rrc",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "batch_size": 16,
        "epochs": 1,
    }

    def configure(self) -> list[nn.Parameter]:
        """Eval mode; the context is the tuned tensor (its per-image copies are what AdamW updates)."""
        ctx = self.model.enable_prompt_learning(self.hp["n_ctx"], self.hp["ctx_init"] or None)
        self.model.eval()
        ctx.requires_grad_(True)
        self.loss_scale, self.finite_images = INIT_LOSS_SCALE, 0  # fp16's scale lives along the stream
        if self.hp["views"] < 1 or not 0 < self.hp["selection"] <= 1 or self.hp["steps"] < 1:
            raise ValueError("tpt needs views >= 1, 0 < selection <= 1 and steps >= 1")
        return [ctx]

    def view_augment(self) -> Augment:
        """The augmented views: a random resized crop + flip of the whole image, AugMix on top if ``augmix``."""
        hp = self.hp
        return Augment(
            "augmix" if hp["augmix"] else "rrc",
            scale=tuple(hp["crop_scale"]),
            interpolation=hp["interpolation"],
            mean=self.model.mean.flatten().tolist(),
        )

    def views(self) -> dict[str, Augment]:
        return {"images": self.view_augment()}

    def stream_views(self) -> dict[str, Augment]:
        return {"images": Augment("none")}

    @property
    def needs_full(self) -> bool:
        return True

    def view_features(self, batch: dict) -> torch.Tensor:
        """(B, V, D) features of every image's original view and ``views - 1`` augmented views."""
        return view_features(self.model, batch, self.hp["views"], self.view_augment(), self.view_seed)

    def tune(self, feats: torch.Tensor) -> torch.Tensor:
        """Tune one context per image on its (B, V, D) view features; returns the tuned (B, n_ctx, D) contexts."""
        hp = self.hp
        start = self.model.prompt.ctx.detach()
        ctx = start.unsqueeze(0).repeat(feats.shape[0], 1, 1).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([ctx], lr=hp["lr"], weight_decay=hp["weight_decay"])
        keep = None
        for _ in range(hp["steps"]):
            with self.autocast():
                logits = LOGIT_SCALE * torch.einsum("bvd,bkd->bvk", feats, self.model.text_features_for(ctx))
            if keep is None:  # the views chosen at the first step are kept (tpt_classification.py:68-71)
                keep = confident_views(logits.detach().float(), hp["selection"])
            chosen = logits.gather(1, keep.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            loss = marginal_entropy(chosen)
            self.last_loss = float(loss.detach().mean())
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.sum().backward()
                optimizer.step()
            else:
                self.scaled_step(loss, ctx, optimizer)
        return ctx.detach()

    def scaled_step(self, loss: torch.Tensor, ctx: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """TPT's fp16 step with a loss scale kept along the stream (``GradScaler(init_scale=1000)``,
        tpt_classification.py:149): gradients are unscaled, an image whose gradient overflows keeps
        its context (its step is skipped) and halves the scale, which doubles after 2000 images
        without overflow. Within one batch every image uses the scale the batch started with."""
        (loss.sum() * self.loss_scale).backward()
        ctx.grad.div_(self.loss_scale)
        finite = torch.isfinite(ctx.grad).flatten(1).all(dim=1)
        ctx.grad[~finite] = 0
        before = ctx.detach().clone()
        optimizer.step()
        with torch.no_grad():
            ctx[~finite] = before[~finite]
        overflows = int((~finite).sum())
        self.loss_scale *= 0.5**overflows
        self.finite_images = 0 if overflows else self.finite_images + len(finite)
        if self.finite_images >= GROWTH_INTERVAL:
            self.loss_scale, self.finite_images = self.loss_scale * 2, 0

    def stream_step(self, batch: dict) -> torch.Tensor:
        """Tune on every image's views, predict its original view with its tuned context; the model is untouched."""
        feats = self.view_features(batch)
        ctx = self.tune(feats)
        with torch.no_grad():
            return (LOGIT_SCALE * torch.einsum("bd,bkd->bk", feats[:, 0], self.model.text_features_for(ctx))).float()
