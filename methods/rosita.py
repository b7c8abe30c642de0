"""ROSITA: open-world single-image test-time adaptation of CLIP (manogna-s/ROSITA ``methods/rosita.py``).

Online over the test stream, one image and one SGD step at a time (file and line of each value
in ``docs/recipes.md``):

- the image and one random resized crop + flip of it go through the image encoder; the score is
  the original view's largest raw cosine to the class text embeddings (rosita.py:107-116);
- the last 512 scores give a threshold by Otsu's criterion on the grid 0, 0.01, ..., 0.99 and
  the means ``mu0``/``mu1`` of the groups below and above it (rosita.py:118-124): a score at or
  above the threshold is "known";
- a known image scoring above ``mu1`` joins the known bank (the last ``K * k_p`` features), an
  unknown one scoring below ``mu0`` the unknown bank (the last 64) (rosita.py:134-140);
- loss: for a known image above ``mu1``, cross-entropy of both views' raw cosines against the
  pseudo-label (rosita.py:142-145); once both banks hold more than ``k_p`` features, for an image
  outside ``[mu0, mu1]``: ``alpha`` times the mean over its ``k_p`` nearest same-bank features of
  ``-sim_pos + log sum exp(sims to its k_n nearest other-bank features)``, a known image's
  positives masked to those predicted as its pseudo-label (rosita.py:149-212);
- the image encoder's LayerNorm affines train by SGD at lr 1e-3, never reset; the image is then
  predicted by the updated model (rosita.py:225-231). ROSITA's own OOD score, the largest cosine
  before the update (rosita.py:119, 249), is recorded as ``pre_update_max_cos``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.augment import Augment
from benchmark.adapt.known_split import grid_otsu
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method

STREAM_CHUNK = 32
"""Test images per ``stream_step`` call (a speed knob: the result is the same one image at a time)."""


@register_method
class Rosita(Adapter):
    """Score-based known/unknown split, feature banks and a contrastive + pseudo-label loss, per test image.

    Hyper-parameters besides SGD's: ``n_scores`` (512), ``bank_unknown`` (64), ``k_p``/``k_n`` (5),
    ``alpha`` (0.5), ``loss_pl`` and ``loss_contrastive`` (both on), the augmented view's
    ``crop_scale``/``interpolation`` (torchvision's defaults: 0.08-1, bilinear; owtta.py:72-80).
    """

    name = "rosita"
    regimes = ("online",)
    official_precision = "fp32"
    defaults = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "batch_size": 1,
        "epochs": 1,
        "schedule": "constant",
        "augment": "rrc",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "n_scores": 512,
        "bank_unknown": 64,
        "k_p": 5,
        "k_n": 5,
        "alpha": 0.5,
        "loss_pl": True,
        "loss_contrastive": True,
    }

    def configure(self) -> list[nn.Parameter]:
        """Eval mode; the image encoder's norm affines train (ROSITA's ``get_ln_params``)."""
        if self.hp["batch_size"] != 1:
            raise ValueError("rosita adapts on one test image at a time: rosita.batch_size must be 1")
        self.model.eval()
        params = [
            p for _, layer in self.model.norm_layers(include_downsample=False) for p in (layer.weight, layer.bias)
        ]
        for p in params:
            p.requires_grad_(True)
        self.clear_memory()
        return params

    def clear_memory(self) -> None:
        self.scores: list[float] = []
        self.known_bank: list[torch.Tensor] = []
        self.unknown_bank: list[torch.Tensor] = []

    def reset(self) -> None:
        super().reset()
        self.clear_memory()

    def stream_views(self) -> dict[str, Augment]:
        hp = self.hp
        return {
            "images": Augment("none"),
            "images_aug": Augment(
                hp["augment"],
                scale=tuple(hp["crop_scale"]),
                interpolation=hp["interpolation"],
                mean=self.model.mean.flatten().tolist(),
            ),
        }

    def contrastive(
        self,
        feature: torch.Tensor,
        positives: list[torch.Tensor],
        negatives: list[torch.Tensor],
        label: int | None,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over the ``k_p`` nearest positives of ``-s_pos + log sum_{k_n nearest negatives} exp(s_neg)``.

        With ``label``, a positive counts only when the text classifier predicts it as ``label``.
        """
        pos = F.normalize(torch.cat(positives).float(), dim=-1)
        neg = F.normalize(torch.cat(negatives).float(), dim=-1)
        top_pos, idx = (feature @ pos.t()).topk(self.hp["k_p"])
        top_neg, _ = (feature @ neg.t()).topk(min(self.hp["k_n"], len(neg)))  # ROSITA needs k_n <= bank size
        loss = -top_pos + torch.logsumexp(top_neg, dim=-1)
        if label is not None:
            loss = loss * ((pos[idx] @ text.t()).argmax(dim=-1) == label)
        return loss.mean()

    def stream_batch_size(self) -> int:
        """Images handed to ``stream_step`` together; ROSITA still adapts on them one at a time, in order."""
        return STREAM_CHUNK

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features of [0, 1] views (with gradients to the trained norms)."""
        return self.model.clip.encode_image(self.model.normalize(views).to(self.model.input_dtype)).float()

    def stream_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Adapt on each image in turn and predict it with the model its own update left.

        Image ``i`` is predicted after its update, by the same model that then scores image
        ``i + 1``, so one forward pass serves both (the prediction row is detached).
        """
        text = self.model.text_features()
        images, augmented = batch["images"], batch["images_aug"]
        n = images.shape[0]
        logits, scores = [], []
        self._chunk_losses: list[float] = []
        for i in range(n + 1):
            parts = ([images[i : i + 1], augmented[i : i + 1]] if i < n else []) + ([images[i - 1 : i]] if i else [])
            raw = self.encode(torch.cat(parts))
            if i:
                logits.append(LOGIT_SCALE * F.normalize(raw[-1:].detach(), dim=-1) @ text.t())
            if i < n:
                scores.append(self.adapt_one(raw[:2], text))
        if self._chunk_losses:
            self.last_loss = sum(self._chunk_losses) / len(self._chunk_losses)
        extra = {"pre_update_max_cos": torch.tensor(scores, dtype=torch.float64)}
        return torch.cat(logits).float(), extra

    def adapt_one(self, raw: torch.Tensor, text: torch.Tensor) -> float:
        """ROSITA's step on one image from the features of its two views; returns its score before the update."""
        hp = self.hp
        feats = F.normalize(raw, dim=-1)
        cos = feats @ text.t()
        score, label = (float(v) for v in cos[0].detach().max(dim=-1))
        label = int(label)
        self.scores = (self.scores + [score])[-hp["n_scores"] :]
        threshold, mu0, mu1 = grid_otsu(self.scores)
        known = score >= threshold
        if known and score > mu1:
            self.known_bank = (self.known_bank + [raw[:1].detach()])[-self.model.num_classes * hp["k_p"] :]
        if not known and score < mu0:
            self.unknown_bank = (self.unknown_bank + [raw[:1].detach()])[-hp["bank_unknown"] :]
        loss = torch.zeros((), device=feats.device)
        if hp["loss_pl"] and known and score > mu1:
            target = torch.tensor([label], device=feats.device)
            loss = loss + F.cross_entropy(cos[:1], target) + F.cross_entropy(cos[1:2], target)
        banks_ready = len(self.known_bank) > hp["k_p"] and len(self.unknown_bank) > hp["k_p"]
        if hp["loss_contrastive"] and banks_ready and (score > mu1 or score < mu0):
            if known:
                term = self.contrastive(feats[0], self.known_bank, self.unknown_bank, label, text)
            else:
                term = self.contrastive(feats[0], self.unknown_bank, self.known_bank, None, text)
            loss = loss + hp["alpha"] * term
        if loss.requires_grad and loss.item() != 0:
            self.step(loss)
            self._chunk_losses.append(loss.item())
        return score

    def stream_stats(self) -> dict[str, float]:
        return {"known_bank": float(len(self.known_bank)), "unknown_bank": float(len(self.unknown_bank))}
