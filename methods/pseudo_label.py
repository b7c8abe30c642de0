"""UPL-style pseudo-labelling (Huang, Chu, Wei 2022: "Unsupervised Prompt Learning for
Vision-Language Models"): learn a CoOp prompt on zero-shot CLIP's most confident images.

Recipe (tonyhuang2022/UPL ``configs/trainers/UPLTrainer/rn50_ep50.yaml``, ``trainers/upltrainer.py``
and ``configs/upl_default_config/upl_default.py``, on the pinned Dassl; file and line of every
value in ``docs/recipes.md``):
- zero-shot CLIP with the fixed prompt labels the un-augmented adapt set once; for every
  predicted class its 16 most confident images (by MSP of ``softmax(s cos)``) are kept;
- a 16-token context shared by all classes, initialised N(0, 0.02), class token at the end,
  is the only trainable tensor; loss = cross-entropy of ``s cos`` logits on the pseudo-labels;
  ``s`` is the checkpoint's ``logit_scale.exp()`` (``trainers/upltrainer.py:262, 279``: 100 for
  OpenAI's CLIP, 76.4 for the embedded model); predictions are reported as ``100 cos``;
- SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32 with the last incomplete batch
  dropped, 50 epochs; the rate is stepped once per epoch: 1e-5 for the warm-up epoch, then
  cosine annealing over 50 epochs; train views: a random resized crop of the whole image
  (scale 0.08-1, bicubic) + flip;
- the released UPL tests an ensemble of 16 prompts trained with seeds 1-16, averaging their
  raw logits (``upl_test.py:148-161``): ``pseudo_label_ensemble``; ``pseudo_label`` is the single
  prompt.

The members of an ensemble train in lockstep: their contexts are one (M, n_ctx, D) tensor, one
text-encoder pass covers all M x K prompts, each member draws its own initialisation, batch order
and crops, and SGD (element-wise) on that tensor is M independent optimisers; so the result is
that of training them one after the other. The image encoder is frozen, so ``view_pool`` > 0
precomputes that many random crops of every selected image and draws each step's views from
them (a speed option; 0, the default, crops afresh every step as UPL does).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.selftrain import class_balanced_topk, confident
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import LOGIT_SCALE
from benchmark.model.features import frozen_image_features
from benchmark.registry import register_method

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
            current prompt at the start of every epoch after the first full-lr one; one prompt).
        threshold: MSP threshold of the ``threshold`` selection; 0.9 is UPL's
            ``DATASET.CONF_THRESHOLD`` default for its confidence-based selection.
        ensemble: number of prompt contexts, each from its own seed derived from the run seed;
            prediction averages their logits (the released UPL averages the raw logits of 16
            seeds, ``pseudo_label_ensemble``). 1 = one prompt.
        view_pool: 0 (fresh random crops every step) or the number of crops per selected image
            precomputed once and drawn from (the frozen image encoder then runs only on them).
    """

    name = "pseudo_label"
    official_precision = "fp16_weights"
    """UPL's default ``PREC: fp16``: fp16 CLIP and an fp16 context (upl_train.py:90, upltrainer.py:118)."""
    logit_scale_rule = "checkpoint"
    """Training and pseudo-labelling logits ``logit_scale.exp() * cos`` (upltrainer.py:262, 279)."""
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
        "view_pool": 0,
    }
    choices = {**Adapter.choices, "selection": ("topk", "threshold")}

    zero_shot_probs: torch.Tensor | None = None
    """(N, K) zero-shot ``softmax(s cos)`` of the un-augmented adapt set (fixed prompts; ``s = train_logit_scale``)."""
    selected: torch.Tensor | None = None
    """Indices (into the adapt set, on CPU) of the images the current epoch trains on."""
    labels: torch.Tensor | None = None
    """(N,) pseudo-label of every adapt image; -1 where it is not selected."""
    member_text: torch.Tensor | None = None
    """(M, K, D) normalised class text features of the M trained contexts, set by ``adapt``."""

    def configure(self) -> list[nn.Parameter]:
        """Everything frozen and in eval mode except the members' randomly initialised contexts."""
        hp = self.hp
        if hp["ensemble"] < 1:
            raise ValueError(f"pseudo_label.ensemble must be >= 1, got {hp['ensemble']}")
        if hp["selection"] == "threshold" and hp["ensemble"] > 1:
            raise ValueError("pseudo_label.selection=threshold refreshes the labels from one prompt: use ensemble=1")
        if hp["view_pool"] < 0:
            raise ValueError(f"pseudo_label.view_pool must be >= 0, got {hp['view_pool']}")
        self.model.eval()
        ctx = self.model.enable_prompt_learning(hp["n_ctx"], init=None)
        ctx.requires_grad_(False)  # holds the first member's context after training
        inits = []
        for m in range(hp["ensemble"]):
            g = torch.Generator().manual_seed(member_seed(self.seed, m))
            inits.append(torch.randn(ctx.shape, generator=g) * CTX_INIT_STD)
        self.contexts = nn.Parameter(torch.stack(inits).to(ctx.device, ctx.dtype))
        return [self.contexts]

    @torch.no_grad()
    def probabilities(self, data: UnlabeledData, text: torch.Tensor) -> torch.Tensor:
        """(N, K) ``softmax(s cos)`` of every un-augmented adapt image against ``text`` (float32), ``s``
        the checkpoint's logit scale (UPL's ``zero_shot_forward``, upltrainer.py:279).

        Only the prompt context trains, never the image encoder, so the image features are the
        frozen ones (from the feature cache when the runner attached one).
        """
        logits = self.train_logit_scale * frozen_image_features(self.model, data.images) @ text.float().t()
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

    def refresh(self, epoch: int, data: UnlabeledData) -> None:
        """Threshold selection: refresh the pseudo-labels from the current prompt.

        The first refresh comes after the first epoch at the full learning rate (epoch
        ``warmup_epochs + 1``): before that the context is still near its random initialisation
        and its MSP says nothing, so the zero-shot labels are kept.
        """
        if self.hp["selection"] == "threshold" and epoch > self.hp["warmup_epochs"]:
            with torch.no_grad():
                self.select(self.probabilities(data, self.model.text_features_for(self.contexts)[0]))

    def drop_last(self, n: int) -> bool:
        """Dassl drops the last incomplete batch only when the data hold a full one
        (``drop_last=is_train and len(data_source) >= batch_size``, Dassl@pin data_manager.py:49)."""
        return self.hp["drop_last"] and n >= self.hp["batch_size"]

    def adapt_indices(self) -> torch.Tensor | None:
        """Only the selected images are trained on."""
        return self.selected

    @torch.no_grad()
    def view_pool(self, data: UnlabeledData) -> torch.Tensor:
        """(P, S, D) features of ``view_pool`` random crops of each of the S selected images."""
        views = self.views()["images"]
        pool = []
        for _ in range(self.hp["view_pool"]):
            feats = [
                self.model.image_features(views(data.image_batch(rows), self.generator))
                for rows in self.selected.split(256)
            ]
            pool.append(torch.cat(feats))
        return torch.stack(pool)

    @torch.no_grad()
    def batch_features(
        self, data: UnlabeledData, rows: torch.Tensor, pool: torch.Tensor | None, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """(M, B, D) frozen features of each member's batch: fresh crops, or crops drawn from the pool.

        ``rows`` (M, B) are positions in ``selected``; member ``m`` draws with ``generators[m]``.
        """
        if pool is not None:
            pick = torch.stack([torch.randint(pool.shape[0], (rows.shape[1],), generator=g) for g in generators])
            return pool[pick.to(pool.device), rows.to(pool.device)]
        views = self.views()["images"]
        feats = [
            self.model.image_features(views(data.image_batch(self.selected[r]), g)) for r, g in zip(rows, generators)
        ]
        return torch.stack(feats)

    def adapt(self, data: UnlabeledData) -> None:
        """Train every member's context on its pseudo-labelled batches, in lockstep, then fix their text features.

        History entries get the loss averaged over members and ``selected`` (training images that epoch).
        """
        hp = self.hp
        self.before_adapt(data)
        members = hp["ensemble"]
        generators = [torch.Generator().manual_seed(member_seed(self.seed, m) + 1) for m in range(members)]
        pool = self.view_pool(data) if hp["view_pool"] > 0 and hp["selection"] == "topk" else None
        per_epoch = data.num_batches(hp["batch_size"], self.drop_last(len(self.selected)), len(self.selected))
        total = hp["epochs"] * per_epoch
        bar = tqdm(total=total, desc=self.name, leave=False, disable=None)
        it = 0
        for epoch in range(hp["epochs"]):
            self.refresh(epoch, data)
            n = len(self.selected)
            batches = data.num_batches(hp["batch_size"], self.drop_last(n), n)
            orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
            losses = []
            for b in range(batches):
                rows = orders[:, b * hp["batch_size"] : (b + 1) * hp["batch_size"]]
                step = epoch * per_epoch + min(b, max(per_epoch - 1, 0))
                self.set_lr(step, hp["epochs"] * per_epoch, hp["warmup_epochs"] * per_epoch)
                batch = {"features": self.batch_features(data, rows, pool, generators), "index": self.selected[rows]}
                with self.autocast():
                    loss = self.loss(batch)
                self.step(loss)
                losses.append(loss.item() / members)
                it += 1
                self.record_loss(losses[-1], it, total)
                bar.update(1)
            self.history.append({"epoch": epoch + 1, "loss": float(sum(losses) / max(len(losses), 1)), "selected": n})
        bar.close()
        with torch.no_grad():
            self.member_text = self.model.text_features_for(self.contexts).float()
            self.model.prompt.ctx.copy_(self.contexts[0])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over the M members of each member's mean cross-entropy of ``s cos`` logits against the
        pseudo-labels: ``sum_m mean_b CE(s f_mb . t_m(ctx_m), y_mb)``, ``s = train_logit_scale``.

        ``batch``: ``features`` (M, B, D), the frozen image features of each member's batch, and
        ``index`` (M, B), their positions in the adapt set. Each member's context gets only its
        own batch's gradient, so one step on the sum is M independent SGD steps.
        """
        if self.labels is None:
            raise RuntimeError("pseudo_label: pseudo-labels are selected in before_adapt(); call adapt()")
        targets = self.labels[batch["index"].to(self.labels.device)]
        text = self.model.text_features_for(self.contexts)
        logits = self.train_logit_scale * torch.einsum("mbd,mkd->mbk", batch["features"], text)
        return torch.stack([F.cross_entropy(logits[m].float(), targets[m]) for m in range(len(logits))]).sum()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the members' contexts: ``mean_m 100 cos(f, t_m) = 100 f . mean_m t_m``.

        UPL averages ``s cos`` (upl_test.py:148-161); the argmax is the same, and the harness reports
        every method's logits as ``100 cos`` (the OOD scores read them so)."""
        if self.member_text is None:
            return super().predict(images)
        return (LOGIT_SCALE * self.model.image_features(images) @ self.member_text.mean(dim=0).t()).float()

    def reset(self) -> None:
        """Restore the contexts and optimiser and forget the selection and the trained members."""
        super().reset()
        with torch.no_grad():
            self.contexts.copy_(self._initial_contexts)
        self.zero_shot_probs = self.selected = self.labels = self.member_text = None

    def _snapshot(self) -> dict:
        self._initial_contexts = self.contexts.detach().clone()
        return super()._snapshot()


@register_method
class PseudoLabelEnsemble(PseudoLabel):
    """UPL as released: 16 prompts trained from seeds 1-16, their raw logits averaged at test time."""

    name = "pseudo_label_ensemble"
    defaults = {**PseudoLabel.defaults, "ensemble": 16}
