"""POUF (Tanwisuth et al., ICML 2023): prompt-oriented unsupervised fine-tuning, transductive.

Recipe (korawat-tanwisuth/POUF ``pouf_lvm/examples/pouf/image_classification/``; file and line
of each value in ``docs/recipes.md``): on the unlabeled target set, minimise the conditional
transport cost between the class prototypes (text features) and the batch's image features plus
0.3 x information maximisation, with logits ``exp(s) cos`` under CLIP's own, trained, logit
scale ``s``. Either the prompt is tuned (``tune=prompt``, the default: the 4-token context
initialised from "a photo of a" of ``pouf.sh``'s active commands) or the image encoder
(``tune=visual``: the paper's model tuning, restricted to the visual tower here). SGD with
Nesterov momentum 0.9 and weight decay 1e-3, batch 96, 10 epochs of 500 iterations each, rate
``eta0 (1 + 2e-4 t)^-0.75`` at iteration ``t``.

Two traps of the official code, decided here:

- its ``LambdaLR`` lambda multiplies by ``--lr`` (0.01) on top of each group's own rate, so the
  rates that act are 0.01 x those written (``-plr 0.1`` -> 1e-3 for the prompt, ``model_lr`` 5e-5
  -> 5e-7 for CLIP's weights and logit scale). ``lr`` here is the rate that acts (1e-3, the
  paper's eta0 for prompt tuning) and ``model_lr_mult`` (5e-4) gives CLIP's own weights theirs;
- it keeps the epoch with the best accuracy on the target test set (an oracle); we evaluate the
  model after the last iteration.

An epoch is 500 iterations whatever the data size (``iters_per_epoch``), drawn as the official
``ForeverDataIterator`` draws them: reshuffled passes over the adapt set, each dropping its last
incomplete batch, batches running on across epoch boundaries. ``iters_per_epoch=0`` makes an epoch
one pass over the adapt set instead (the base loop's epochs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.losses import entropy
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method

COND_EPS = 1e-5
"""The eps inside the log of POUF's per-sample entropy (``get_entropy``, pouf.py:122)."""
MARGINAL_EPS = 1e-6
"""The eps inside the log of POUF's marginal entropy (``compute_im_loss``, pouf.py:131)."""


def transport_loss(logits: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """POUF's conditional transport cost between a batch of images and the K class prototypes.

    With cost ``c_ik = 1 - cos_ik``, the image-to-prototype plan ``softmax_k(logits_i)`` (over
    classes) and the prototype-to-image plan ``softmax_i(logits_ik)`` (over the batch):
    ``L = mean_i sum_k c_ik pi_ik^(s) + mean_k sum_i c_ik pi_ik^(t)``. Gradients flow through the
    cost too (the official code does not detach it).
    """
    logits, cost = logits.float(), 1.0 - cosine.float()
    to_prototypes = (cost * logits.softmax(dim=1)).sum(dim=1).mean()
    to_images = (cost * logits.softmax(dim=0)).sum(dim=0).mean()
    return to_prototypes + to_images


def pouf_im_loss(logits: torch.Tensor) -> torch.Tensor:
    """POUF's information maximisation: ``mean_i H(p_i) - H(mean_i p_i)``, eps 1e-5 and 1e-6 in the logs."""
    p = logits.float().softmax(dim=1)
    return entropy(p, COND_EPS).mean() - entropy(p.mean(dim=0), MARGINAL_EPS)


class ForeverBatches:
    """The adapt set as the official ``ForeverDataIterator`` over a shuffled, ``drop_last`` loader.

    Each epoch of the base loop takes the next ``iters`` batches of an endless sequence of passes:
    every pass is a fresh permutation of the adapt set (drawn from the loop's generator) cut to a
    whole number of batches, and a batch never spans two passes. When the set holds fewer images
    than a batch, a batch is the whole set (the official loader would yield nothing). Only what the
    base loop calls is offered: ``len``, ``num_batches`` and ``batches``.
    """

    def __init__(self, data: UnlabeledData, iters: int, batch_size: int, drop_last: bool = True):
        self.data, self.iters = data, iters
        self.batch_size = min(batch_size, len(data))
        self.drop_last = drop_last
        self._pending: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.iters * self.batch_size

    def num_batches(self, batch_size: int, drop_last: bool = False, n: int | None = None) -> int:
        return self.iters

    def _next_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """The next ``iters`` batches of image positions, starting new passes as needed."""
        out = []
        while len(out) < self.iters:
            if not self._pending:
                perm = torch.randperm(len(self.data), generator=generator)
                self._pending = list(perm.split(self.batch_size))
                if self.drop_last and len(self._pending[-1]) < self.batch_size:
                    self._pending.pop()
            out.append(self._pending.pop(0))
        return out

    def batches(
        self, batch_size: int, *, views=None, generator: torch.Generator | None = None, **_: Any
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches, with the requested views drawn from ``generator`` (shuffling is ours)."""
        g = generator or self.data.generator
        for rows in self._next_batches(g):
            yield from self.data.batches(len(rows), views=views, indices=rows, generator=g)


@register_method
class POUF(Adapter):
    """Transport + 0.3 x information maximisation on the prompt context (or the image encoder).

    Hyper-parameters besides the loop's: ``tune`` (``prompt``: the shared context, ``n_ctx``
    tokens from ``ctx_init``; ``visual``: every image-encoder weight at ``lr x model_lr_mult``,
    prompts fixed), ``model_lr_mult`` (rate of CLIP's own weights relative to ``lr``: 5e-7 / 1e-3),
    ``train_logit_scale`` (the logit scale, initialised at CLIP's 100, trains at
    ``lr x model_lr_mult``), ``trade_off`` and ``lambda_im`` (weights of the transport and
    information-maximisation terms), ``iters_per_epoch`` (0: one pass over the adapt set), and
    the ``inv`` schedule ``(1 + lr_gamma t)^-lr_decay``. The image encoder stays in eval mode
    (the official ``model.train()`` changes nothing in its ViT-B/16: no dropout, no BatchNorm).
    """

    name = "pouf"
    official_precision = "fp32"
    """``clip.load`` then ``clip_model.float()`` (pouf.py:45-46)."""
    choices = {**Adapter.choices, "schedule": ("inv", "cosine", "constant"), "tune": ("prompt", "visual")}
    defaults = {
        "tune": "prompt",
        "epochs": 10,
        "iters_per_epoch": 500,
        "batch_size": 96,
        "optimizer": "sgd",
        "lr": 1e-3,
        "model_lr_mult": 5e-4,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-3,
        "schedule": "inv",
        "lr_gamma": 2e-4,
        "lr_decay": 0.75,
        "augment": "rrc",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "drop_last": True,
        "trade_off": 1.0,
        "lambda_im": 0.3,
        "train_logit_scale": True,
        "n_ctx": 4,
        "ctx_init": "a photo of a",
    }
    INIT_LOG_SCALE = math.log(LOGIT_SCALE)

    def configure(self) -> list[dict[str, Any]]:
        """Eval mode; the context (or the image encoder) and the logit scale train, in two groups."""
        hp = self.hp
        if hp["iters_per_epoch"] < 0:
            raise ValueError("pouf: iters_per_epoch must be >= 0 (0 = one pass over the adapt set per epoch)")
        self.model.eval()
        self.log_scale = nn.Parameter(
            torch.tensor(self.INIT_LOG_SCALE, device=self.model.device), requires_grad=hp["train_logit_scale"]
        )
        if hp["tune"] == "prompt":
            ctx = self.model.enable_prompt_learning(hp["n_ctx"], hp["ctx_init"] or None)
            ctx.requires_grad_(True)
            groups = [{"params": [ctx]}]
        else:
            weights = list(self.model.visual.parameters())
            for p in weights:
                p.requires_grad_(True)
            groups = [{"params": weights, "lr_mult": hp["model_lr_mult"]}]
        if hp["train_logit_scale"]:
            groups.append({"params": [self.log_scale], "lr_mult": hp["model_lr_mult"]})
        return groups

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """``schedule=inv``: ``(1 + lr_gamma t)^-lr_decay`` at iteration ``t`` (0-based), whatever the budget
        (after ``warmup_epochs`` at ``warmup_lr``, none in the recipe)."""
        if self.hp["schedule"] != "inv" or step < warmup:
            return super().lr_factor(step, total, warmup)
        return (1.0 + self.hp["lr_gamma"] * step) ** (-self.hp["lr_decay"])

    def drop_last(self, n: int) -> bool:
        """Drop each pass's incomplete last batch, unless the whole set is smaller than one batch."""
        return self.hp["drop_last"] and n >= self.hp["batch_size"]

    def adapt(self, data: UnlabeledData) -> None:
        """The base loop, over epochs of ``iters_per_epoch`` batches (or over passes when it is 0)."""
        if self.hp["iters_per_epoch"] > 0:
            data = ForeverBatches(data, self.hp["iters_per_epoch"], self.hp["batch_size"], self.hp["drop_last"])
        super().adapt(data)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``trade_off x transport + lambda_im x IM`` of ``exp(s) cos`` on the batch's train view."""
        cosine = self.model.cosine(batch["images"])
        logits = self.log_scale.exp() * cosine
        hp = self.hp
        return hp["trade_off"] * transport_loss(logits, cosine) + hp["lambda_im"] * pouf_im_loss(logits)

    def reset(self) -> None:
        """Restore the model, the optimiser and the logit scale."""
        super().reset()
        with torch.no_grad():
            self.log_scale.fill_(self.INIT_LOG_SCALE)
