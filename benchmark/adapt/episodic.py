"""TPT's machinery, shared by the episodic methods that tune something per test image on its views.

TPT (azshue/TPT ``tpt_classification.py:54-80``), C-TPT (hee-suk-yoon/C-TPT, the same loop plus a
text-feature dispersion term, ``tpt_classification.py:113-168``) and TPS (elaine-sui/TPS
``shift_classification.py:41-63``) do the same thing for every test image: encode the original
view and ``V - 1`` augmented views with the frozen image encoder, keep the 10% of views with the
lowest softmax entropy, minimise the entropy of their averaged probabilities by AdamW steps on a
small tensor that shapes the class text features (a prompt context; per-class shifts of fixed
prototypes), predict the original view, then reset the tensor and the optimiser. All three run
under fp16 autocast with a ``GradScaler(init_scale=1000)`` created once per data set, and scale
their logits by the checkpoint's ``logit_scale.exp()``.

Episodes are independent, so ``batch_size`` test images are tuned at once: each image gets its
own copy of the tuned tensor, one text-encoder pass covers all of them, and each copy is its own
parameter of one AdamW, so each has its own moments and step count. The result equals tuning
the images one after the other.

- :class:`StreamLossScale`: the official ``GradScaler`` along the stream; an image whose
  gradient overflows skips its optimiser step entirely (no moment, step-count or weight-decay
  update), as ``scaler.step`` skips ``optimizer.step()`` for that image.
- :class:`EpisodicTuning`: the loop (views, selection, marginal entropy, per-image AdamW,
  prediction); a method says what it tunes (``initial``) and how that gives the (B, K, D) class
  text features (``class_text``), and may add a per-image ``regulariser``.
- :class:`PromptTuning`: TPT's tuned tensor, a 4-token CoOp context (TPT, C-TPT).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from benchmark.adapt.augment import Augment
from benchmark.adapt.view_method import ViewMethod
from benchmark.adapt.views import confident_views, marginal_entropy
from benchmark.model.clip import LOGIT_SCALE

INIT_LOSS_SCALE = 1000.0
"""TPT's ``GradScaler(init_scale=1000)`` (azshue/TPT tpt_classification.py:149; C-TPT :242; TPS
shift_classification.py:185 writes ``1e3``)."""
GROWTH_INTERVAL = 2000
"""Steps without overflow before the scale doubles: torch's ``GradScaler`` default, which TPT keeps."""


class StreamLossScale:
    """The fp16 loss scale of an episodic method, kept along the stream as the official ``GradScaler``.

    It starts at 1000. Each image's gradient is unscaled and checked; an image whose gradient is
    not finite skips its step (its gradient is set to None, so torch's AdamW leaves that
    parameter, its moments and its step count untouched: ``scaler.step`` skipping
    ``optimizer.step()``, tpt_classification.py:79) and halves the scale; after
    :data:`GROWTH_INTERVAL` images without overflow the scale doubles. Within one batch every
    image uses the scale the batch started with (the official code updates it after each image).
    """

    def __init__(self, scale: float = INIT_LOSS_SCALE):
        self.scale = float(scale)
        self.finite_images = 0

    def step(self, losses: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """Backward ``losses`` (B,) times the scale, unscale, skip the overflowing images, step the rest.

        ``params[b]`` is image ``b``'s tuned tensor (a parameter of ``optimizer`` of its own).
        Returns the (B,) bool mask of the images that stepped.
        """
        (losses.sum() * self.scale).backward()
        finite = []
        for p in params:
            p.grad.div_(self.scale)
            ok = bool(torch.isfinite(p.grad).all())
            if not ok:
                p.grad = None
            finite.append(ok)
        optimizer.step()
        overflows = finite.count(False)
        self.scale *= 0.5**overflows
        self.finite_images = 0 if overflows else self.finite_images + len(params)
        if self.finite_images >= GROWTH_INTERVAL:
            self.scale, self.finite_images = self.scale * 2, 0
        return torch.tensor(finite)


class EpisodicTuning(ViewMethod):
    """Episodic tuning of one small tensor per test image on its views (TPT's loop).

    Hyper-parameters besides the optimiser's: ``views`` (64: the original and 63 augmented),
    ``selection`` (0.1: fraction of views kept), ``steps`` (1), ``augmix`` (False: TPT applies
    AugMix only to its fine-grained data sets, not to the ImageNet variants this harness's domain
    shifts resemble), ``crop_scale``/``interpolation`` of the random resized crops (torchvision's
    defaults, which TPT keeps: 0.08-1, bilinear) and ``batch_size`` (test images tuned at once:
    a speed knob that changes no result).

    Subclasses define ``initial`` (the tensor every image starts from), ``class_text`` (a batch of
    those tensors -> (B, K, D) normalised class text features) and may define ``regulariser``.
    """

    regimes = ("episodic",)
    official_precision = "fp16"
    """fp32 weights, the forward under CUDA autocast with a GradScaler (tpt_classification.py:62, 149)."""
    logit_scale_rule = "checkpoint"
    """``logit_scale.exp()`` of the weights (TPT clip/custom_clip.py:284, 317)."""
    defaults: dict[str, Any] = {
        "views": 64,
        "selection": 0.1,
        "steps": 1,
        "optimizer": "adamw",
        "lr": 5e-3,
        "weight_decay": 0.01,
        "augmix": False,
        "augment": "rrc",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "batch_size": 16,
        "epochs": 1,
    }

    def check_hparams(self) -> None:
        """Fail early on settings the loop cannot run."""
        hp = self.hp
        if hp["views"] < 1 or not 0 < hp["selection"] <= 1 or hp["steps"] < 1:
            raise ValueError(f"{self.name} needs views >= 1, 0 < selection <= 1 and steps >= 1")
        if hp["optimizer"] != "adamw":
            raise ValueError(f"{self.name} tunes with AdamW (optimizer=adamw), got {hp['optimizer']!r}")
        self.loss_scale = StreamLossScale()  # fp16's scale lives along the stream

    def initial(self) -> torch.Tensor:
        """The tensor every image's tuning starts from (detached)."""
        raise NotImplementedError

    def class_text(self, tuned: torch.Tensor) -> torch.Tensor:
        """(B, K, D) normalised class text features of a batch of tuned tensors (B, ...)."""
        raise NotImplementedError

    def regulariser(self, text: torch.Tensor) -> torch.Tensor | None:
        """(B,) term added to each image's loss, from its (B, K, D) class text features (None: none)."""
        return None

    def views(self) -> dict[str, Augment]:
        return {"images": self.view_augment()}

    def stream_views(self) -> dict[str, Augment]:
        return {"images": Augment("none")}

    def tune(self, feats: torch.Tensor) -> torch.Tensor:
        """Tune one tensor per image on its (B, V, D) view features; returns the tuned (B, ...) tensors."""
        hp = self.hp
        start = self.initial()
        tuned = [start.clone().requires_grad_(True) for _ in range(feats.shape[0])]
        optimizer = torch.optim.AdamW(tuned, lr=hp["lr"], weight_decay=hp["weight_decay"])
        scale = self.train_logit_scale
        keep = None
        for _ in range(hp["steps"]):
            with self.autocast():
                text = self.class_text(torch.stack(tuned))
                logits = scale * torch.einsum("bvd,bkd->bvk", feats, text)
            if keep is None:  # the views chosen at the first step are kept (tpt_classification.py:68-71)
                keep = confident_views(logits.detach().float(), hp["selection"])
            chosen = logits.gather(1, keep.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            loss = marginal_entropy(chosen)
            extra = self.regulariser(text)
            if extra is not None:
                loss = loss + extra
            self.last_loss = float(loss.detach().mean())
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.sum().backward()
                optimizer.step()
            else:
                self.loss_scale.step(loss, tuned, optimizer)
        return torch.stack(tuned).detach()

    def stream_step(self, batch: dict) -> torch.Tensor:
        """Tune on every image's views, predict its original view with its tuned tensor; the model is untouched.

        The predicted logits are ``100 cos`` whatever ``logit_scale_rule`` says (the OOD scores read
        them so); the argmax is the official prediction's.
        """
        feats = self.view_features(batch)
        tuned = self.tune(feats)
        with torch.no_grad():
            return (LOGIT_SCALE * torch.einsum("bd,bkd->bk", feats[:, 0], self.class_text(tuned))).float()


class PromptTuning(EpisodicTuning):
    """TPT's tuned tensor: a class-shared CoOp context of ``n_ctx`` tokens initialised from ``ctx_init``."""

    defaults = {**EpisodicTuning.defaults, "n_ctx": 4, "ctx_init": "a photo of a"}

    def configure(self) -> list[nn.Parameter]:
        """Eval mode; the context is the tuned tensor (its per-image copies are what AdamW updates)."""
        ctx = self.model.enable_prompt_learning(self.hp["n_ctx"], self.hp["ctx_init"] or None)
        self.model.eval()
        ctx.requires_grad_(True)
        self.check_hparams()
        return [ctx]

    def initial(self) -> torch.Tensor:
        return self.model.prompt.ctx.detach()

    def class_text(self, tuned: torch.Tensor) -> torch.Tensor:
        return self.model.text_features_for(tuned)
