"""MTA: MeanShift for test-time augmentation (Zanella & Ben Ayed, CVPR 2024), episodic and training-free.

Recipe (MaxZanella/MTA ``mta.py``, ``main.py``, ``data/datautils.py``; file and line of each value
in ``docs/recipes.md``): for every test image, the original view and 63 random resized crops +
flips of the whole image (TPT's views; AugMix only with ``--tpt``); the mode of the views' image
features is sought by a MeanShift whose points are weighted by inlierness scores ``y``:

- per-view bandwidth ``h_v = sqrt(0.5 mean_{j in kNN(v)} ||x_v - x_j||^2)`` over the
  ``int(0.3 (V - 1))`` nearest other views; Gaussian kernel ``exp(-||x - m||^2 / (2 h_v^2))``;
- affinity ``A = softmax(s cos) softmax(s cos)^T`` between views, ``s`` the checkpoint's
  ``logit_scale.exp()`` (100 for OpenAI's CLIP, 76.4 for the embedded model);
- ``y`` starts uniform and the mode at the original view; 5 outer iterations, each with up to 5
  inlierness updates ``y = softmax((density + lambda_q A y) / lambda_y)`` and up to 5 mode
  updates ``m = sum_v density_v y_v x_v / sum_v density_v y_v``, normalised, each inner loop
  stopping early when its update moves less than 1e-6 (L2); ``y`` carries over between outer
  iterations;
- the prediction is ``s cos(m, text)``; we return ``100 cos(m, text)`` (the same argmax), as
  every method does.

Decisions on the official code's traps (``docs/recipes.md``, ``mta`` section): ``lambda_q`` and
``lambda_y`` are floats (the official argparse has no ``type=``, so a value given on its command
line arrives as a string and fails; only the defaults 4 and 0.2 ever ran); the scores carry over
and the mode starts at the original view, as in the official code. Its solver runs in float32
outside autocast, as the official one does (``mta.py:15`` is outside the autocast block).

Images are solved together: every quantity carries a leading batch dimension, and an image whose
inner loop has converged keeps its values while the others iterate, so the result equals solving
the images one at a time. The views come from ``view_features`` (shared with TPT and ZERO).
"""

from __future__ import annotations

import torch

from benchmark.adapt.view_method import ViewMethod
from benchmark.adapt.views import checkpoint_logit_scale
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method

MAX_ITER = 5
"""Outer iterations, and the cap of each inner loop (``mta.py:19``)."""
THRESHOLD = 1e-6
"""An inner loop stops once its update moves less than this (``mta.py:43, 62, 79``)."""
NEIGHBOURS = 0.3
"""Fraction of the other views whose squared distances set a view's bandwidth (``mta.py:27``)."""
TEMPERATURE = 1.0
"""Of the affinity's softmax over ``s cos`` (``mta.py:20, 33``)."""


def gaussian_density(mode: torch.Tensor, bandwidth: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, V) ``exp(-||x_v - m||^2 / (2 h_v^2))`` for (B, D) modes, (B, V) bandwidths, (B, V, D) points."""
    dist = torch.linalg.vector_norm(x - mode.unsqueeze(1), dim=-1)
    return torch.exp(-(dist**2) / (2 * bandwidth**2))


def mta_modes(
    feats: torch.Tensor,
    logits: torch.Tensor,
    lambda_y: float,
    lambda_q: float,
    max_iter: int = MAX_ITER,
    threshold: float = THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MTA's solver on (B, V, D) view features and their (B, V, K) logits ``s cos``: ((B, D) modes, (B, V) scores)."""
    b, v, _ = feats.shape
    k = int(NEIGHBOURS * (v - 1))
    if k < 1:
        raise ValueError(f"mta needs int(0.3 (views - 1)) >= 1 neighbours for its bandwidth, i.e. views >= 5; got {v}")
    dist = torch.cdist(feats, feats)
    nearest = dist.sort(dim=2).values[:, :, 1 : k + 1] ** 2  # the first (itself) left out
    bandwidth = torch.sqrt(0.5 * nearest.mean(dim=2))
    p = (logits / TEMPERATURE).softmax(dim=-1)
    affinity = p @ p.transpose(1, 2)
    y = torch.full((b, v), 1.0 / v, dtype=feats.dtype, device=feats.device)
    mode = feats[:, 0]
    for _ in range(max_iter):
        density = gaussian_density(mode, bandwidth, feats)
        active = torch.ones(b, dtype=torch.bool, device=feats.device)
        for _ in range(max_iter):
            new = (1 / lambda_y * (density + lambda_q * (affinity * y.unsqueeze(1)).sum(dim=2))).softmax(dim=-1)
            moved = torch.linalg.vector_norm(y - new, dim=-1)
            y = torch.where(active.unsqueeze(1), new, y)
            active &= ~(moved < threshold)
            if not active.any():
                break
        active = torch.ones(b, dtype=torch.bool, device=feats.device)
        for _ in range(max_iter):
            weight = gaussian_density(mode, bandwidth, feats) * y
            new = (weight.unsqueeze(2) * feats).sum(dim=1) / weight.sum(dim=1, keepdim=True)
            new = new / torch.linalg.vector_norm(new, dim=-1, keepdim=True)
            moved = torch.linalg.vector_norm(mode - new, dim=-1)
            mode = torch.where(active.unsqueeze(1), new, mode)
            active &= ~(moved < threshold)
            if not active.any():
                break
    return mode, y


@register_method
class MTA(ViewMethod):
    """MeanShift over each test image's augmented views, weighted by inlierness scores; nothing is trained.

    Hyper-parameters: ``views`` (64: the original and 63 augmented), ``lambda_y`` (0.2: the
    scores' entropic weight, a temperature), ``lambda_q`` (4: the weight of the affinity term),
    ``crop_scale``/``interpolation`` of the random resized crops (0.08-1, bilinear: torchvision's
    defaults, which MTA keeps) and ``batch_size`` (images solved together: a speed knob).
    """

    name = "mta"
    trains = False
    regimes = ("episodic",)
    official_precision = "fp16"
    """fp32 weights (``convert_weights`` commented out, clip/model.py:434); the encoders under CUDA
    autocast (mta.py:13-14); the solver in float32 (the normalised features are float32)."""
    defaults = {
        "views": 64,
        "lambda_y": 0.2,
        "lambda_q": 4.0,
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "batch_size": 64,
    }

    def configure(self) -> list:
        self.model.eval()
        self.seen, self.shift, self.top_score = 0, 0.0, 0.0
        if int(NEIGHBOURS * (self.hp["views"] - 1)) < 1 or self.hp["lambda_y"] <= 0:
            raise ValueError("mta needs views >= 5 (int(0.3 (views - 1)) >= 1 neighbours) and lambda_y > 0")
        return []

    @torch.no_grad()
    def stream_step(self, batch: dict) -> torch.Tensor:
        """Each image's logits ``100 cos(mode, text)``; the model is untouched."""
        feats = self.view_features(batch)  # MTA's views: crop + flip of the whole image (data/datautils.py:62-73)
        text = self.model.text_features()
        with torch.autocast(self.model.device.type, enabled=False):
            feats, text = feats.float(), text.float()
            logits = checkpoint_logit_scale(self.model) * feats @ text.t()
            mode, y = mta_modes(feats, logits, self.hp["lambda_y"], self.hp["lambda_q"])
            self.seen += len(mode)
            self.shift += float((1 - (mode * feats[:, 0]).sum(-1)).sum())
            self.top_score += float(y.max(dim=-1).values.sum())
            return LOGIT_SCALE * mode @ text.t()

    def stream_stats(self) -> dict[str, float]:
        """Along the stream so far: the mean ``1 - cos`` between the mode and the test view's feature,
        and the mean largest inlierness score (1/V: uniform; 1: one view)."""
        n = max(self.seen, 1)
        return {"mode_shift": self.shift / n, "max_inlierness": self.top_score / n}

    def describe(self) -> dict:
        out = super().describe()
        out["views"] = {"test_views": self.view_augment().describe()}
        return out
