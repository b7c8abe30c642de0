"""UPL-style pseudo-labelling (Huang, Chu, Wei 2022: "Unsupervised Prompt Learning for
Vision-Language Models"): learn a CoOp prompt on zero-shot CLIP's most confident images.

Recipe (tonyhuang2022/UPL ``configs/trainers/UPLTrainer/rn50_ep50.yaml``, ``trainers/upltrainer.py``
and ``configs/upl_default_config/upl_default.py``, on the pinned Dassl; file and line of every
value in ``docs/recipes.md``):
- zero-shot CLIP with the fixed prompt labels the un-augmented adapt set once; for every
  predicted class its 16 most confident images (by MSP of ``softmax(100 cos)``) are kept;
- a 16-token context shared by all classes, initialised N(0, 0.02), class token at the end,
  is the only trainable tensor; loss = cross-entropy of ``100 cos`` logits on the pseudo-labels;
- SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32 with the last incomplete batch
  dropped, 50 epochs; the rate is stepped once per epoch: 1e-5 for the warm-up epoch, then
  cosine annealing over 50 epochs; train views: a random resized crop of the whole image
  (scale 0.08-1, bicubic) + flip;
- the released UPL tests an ensemble of 16 prompts trained with seeds 1-16, averaging their
  raw logits (``upl_test.py:148-161``): ``pseudo_label_ensemble``; ``pseudo_label`` is the single
  prompt.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.adapter import Adapter
from benchmark.features import frozen_image_features
from benchmark.model import LOGIT_SCALE
from benchmark.registry import register_method
from benchmark.selftrain import class_balanced_topk, confident
from benchmark.unlabeled import UnlabeledData

CTX_INIT_STD = 0.02
"""Standard deviation of CoOp's random context initialisation (also used for ensemble members)."""


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member``'s context initialisation, derived from the run seed."""
    return int(hashlib.md5(f"{seed}/upl-member/{member}".encode()).hexdigest(), 16) % (2**31)


@register_method
class PseudoLabel(Adapter):
    """Prompt learning on class-balanced zero-shot pseudo-labels (UPL), or on thresholded ones.

    Hyper-parameters besides the loop's:
        n_ctx: context tokens (16).
        num_per_class: images kept per class by the ``topk`` selection (UPL's 16 "shots").
        selection: ``topk`` (UPL, fixed before training) or ``threshold`` (self-training: every
            image with MSP > ``threshold``; zero-shot labels first, then refreshed from the
            current model at the start of every epoch after the first full-lr one).
        threshold: MSP threshold of the ``threshold`` selection; 0.9 is UPL's
            ``DATASET.CONF_THRESHOLD`` default for its confidence-based selection.
        ensemble: number of prompt contexts trained one after the other from seeds derived from
            the run seed; prediction averages their logits (the released UPL averages the raw
            logits of 16 seeds, ``pseudo_label_ensemble``). 1 = no ensemble.
    """

    name = "pseudo_label"
    official_precision = "fp16_weights"
    """UPL's default ``PREC: fp16``: fp16 CLIP and an fp16 context (upl_train.py:90, upltrainer.py:118)."""
    defaults = {
        "epochs": 50,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "schedule_step": "epoch",
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "augment": "rrc",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bicubic",
        "drop_last": True,
        "n_ctx": 16,
        "num_per_class": 16,
        "selection": "topk",
        "threshold": 0.9,
        "ensemble": 1,
    }
    choices = {**Adapter.choices, "selection": ("topk", "threshold")}

    zero_shot_probs: torch.Tensor | None = None
    """(N, K) zero-shot ``softmax(100 cos)`` of the un-augmented adapt set (fixed prompts)."""
    selected: torch.Tensor | None = None
    """Indices (into the adapt set, on CPU) of the images the current epoch trains on."""
    labels: torch.Tensor | None = None
    """(N,) pseudo-label of every adapt image; -1 where it is not selected."""
    member_text: torch.Tensor | None = None
    """(M, K, D) normalised class text features of the M trained contexts, set by ``adapt``."""
    _epoch, _batch, _epoch_batches = 0, 0, 0

    def configure(self) -> list[nn.Parameter]:
        """Everything frozen and in eval mode except the randomly initialised prompt context."""
        if self.hp["ensemble"] < 1:
            raise ValueError(f"pseudo_label.ensemble must be >= 1, got {self.hp['ensemble']}")
        self.model.eval()
        ctx = self.model.enable_prompt_learning(self.hp["n_ctx"], init=None)
        ctx.requires_grad_(True)
        return [ctx]

    @torch.no_grad()
    def probabilities(self, data: UnlabeledData, text: torch.Tensor) -> torch.Tensor:
        """(N, K) ``softmax(100 cos)`` of every un-augmented adapt image against ``text`` (float32).

        Only the prompt context trains, never the image encoder, so the image features are the
        frozen ones (from the feature cache when the runner attached one).
        """
        logits = LOGIT_SCALE * frozen_image_features(self.model, data.images) @ text.float().t()
        return logits.softmax(dim=-1)

    def select(self, probs: torch.Tensor) -> None:
        """Set ``selected`` and ``labels`` from ``probs`` with the configured selection rule."""
        if self.hp["selection"] == "topk":
            idx, lab = class_balanced_topk(probs, self.hp["num_per_class"])
        else:
            idx, lab = confident(probs, self.hp["threshold"])
        self.labels = torch.full((probs.shape[0],), -1, dtype=torch.long, device=probs.device)
        self.labels[idx] = lab
        self.selected = idx.cpu()

    def before_adapt(self, data: UnlabeledData) -> None:
        """Label the adapt set with zero-shot CLIP (fixed prompts) and select the training images."""
        if self.zero_shot_probs is None:
            fixed = self.model.class_embeddings(self.model.templates)
            self.zero_shot_probs = self.probabilities(data, fixed)
        self.select(self.zero_shot_probs)
        if len(self.selected) == 0:
            raise ValueError(
                f"pseudo_label: no adapt image has a zero-shot MSP above threshold={self.hp['threshold']}; "
                "lower pseudo_label.threshold or use selection=topk"
            )
        self._selected_per_epoch: list[int] = []

    def before_epoch(self, epoch: int, data: UnlabeledData) -> None:
        """Threshold selection: refresh the pseudo-labels from the current model.

        The first refresh comes after the first epoch at the full learning rate (epoch
        ``warmup_epochs + 1``): before that the context is still near its random initialisation
        and its MSP says nothing, so the zero-shot labels are kept.
        """
        if self.hp["selection"] == "threshold" and epoch > self.hp["warmup_epochs"]:
            with torch.no_grad():
                self.select(self.probabilities(data, self.model.text_features()))
        self._epoch, self._batch = epoch, 0
        self._epoch_batches = data.num_batches(self.hp["batch_size"], self.drop_last(len(self.selected)), len(self.selected))
        self._selected_per_epoch.append(len(self.selected))

    def after_step(self) -> None:
        self._batch += 1

    def drop_last(self, n: int) -> bool:
        """Dassl drops the last incomplete batch only when the data hold a full one
        (``drop_last=is_train and len(data_source) >= batch_size``, Dassl@pin data_manager.py:49)."""
        return self.hp["drop_last"] and n >= self.hp["batch_size"]

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """The base schedule measured in epochs of the current length.

        With ``topk`` every epoch has the same number of batches and this equals the base
        schedule; with ``threshold`` the epoch length changes at every refresh, so the position
        is ``epoch + batch / batches_this_epoch`` epochs out of ``epochs``.
        """
        per_epoch = max(self._epoch_batches, 1)
        position = self._epoch * per_epoch + self._batch
        return super().lr_factor(position, self.hp["epochs"] * per_epoch, self.hp["warmup_epochs"] * per_epoch)

    def adapt_indices(self) -> torch.Tensor | None:
        """Only the selected images are iterated over."""
        return self.selected

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the ``100 cos`` logits against the images' pseudo-labels."""
        if self.labels is None:
            raise RuntimeError("pseudo_label: pseudo-labels are selected in before_adapt(); call adapt()")
        return F.cross_entropy(self.model(batch["images"]).float(), self.labels[batch["index"]])

    def restart_member(self, member: int) -> None:
        """Fresh N(0, 0.02) context from ``member_seed`` and a fresh optimiser for the next member."""
        ctx = self.model.prompt.ctx
        g = torch.Generator().manual_seed(member_seed(self.seed, member))
        with torch.no_grad():
            ctx.copy_(torch.randn(ctx.shape, generator=g) * CTX_INIT_STD)
        self.optimizer.load_state_dict(self._initial_state["optimizer"])

    def adapt(self, data: UnlabeledData) -> None:
        """Train ``ensemble`` contexts in turn (the default loop each), then fix their text features.

        History entries get ``selected`` (training images that epoch) and, for ensembles, ``member``.
        """
        self.zero_shot_probs = None
        members = []
        for m in range(self.hp["ensemble"]):
            if m > 0:
                self.restart_member(m)
            start = len(self.history)
            super().adapt(data)
            for entry, n in zip(self.history[start:], self._selected_per_epoch):
                entry["selected"] = n
                if self.hp["ensemble"] > 1:
                    entry["member"] = m
            with torch.no_grad():
                members.append(self.model.text_features().float())
        self.member_text = torch.stack(members)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the ensemble's contexts: ``mean_m 100 cos(f, t_m) = 100 f . mean_m t_m``."""
        if self.member_text is None:
            return super().predict(images)
        return (LOGIT_SCALE * self.model.image_features(images) @ self.member_text.mean(dim=0).t()).float()

    def reset(self) -> None:
        """Restore the context and optimiser and forget the selection and the trained members."""
        super().reset()
        self.zero_shot_probs = self.selected = self.labels = self.member_text = None


@register_method
class PseudoLabelEnsemble(PseudoLabel):
    """UPL as released: 16 prompts trained from seeds 1-16, their raw logits averaged at test time."""

    name = "pseudo_label_ensemble"
    defaults = {**PseudoLabel.defaults, "ensemble": 16}
