"""AugMix as TPT and TDA apply it to test views, batched on tensors.

TPT's ``AugMixAugmenter`` (azshue/TPT data/datautils.py:62-102, ops in data/augmix_ops.py; TDA
copies it, TDA/datasets/utils.py:352-394): each view is a random resized crop + flip of the
image, ``x``, then ``m x + (1 - m) sum_i w_i chain_i(x)`` with ``w ~ Dirichlet(1, 1, 1)``,
``m ~ Beta(1, 1)`` and three chains of 1-3 operations drawn from nine (autocontrast, equalize,
posterize, rotate, solarize, shear x/y, translate x/y) at severity 1. Every view draws its own
operations; here the views that drew the same operation at a step are transformed together.
Geometric operations resample bilinearly and fill with black, as PIL does; translations are
scaled from TPT's 224-pixel images to the model's resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

OPS = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
SEVERITY = 1
CHAINS = 3
MAX_DEPTH = 3
_IMAGE_SIZE = 224
"""The image size TPT's operations assume (augmix_ops.py:21): translations of up to 224 / 3 / 10 pixels."""


def _level(n: int, g: torch.Generator) -> torch.Tensor:
    """``sample_level``: U(0.1, severity) per view."""
    return torch.empty(n, dtype=torch.float64).uniform_(0.1, SEVERITY, generator=g)


def _sign(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=g) > 0.5, -1.0, 1.0).double()


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample uint8 images with per-image (n, 2, 3) maps from output to input in normalised coordinates."""
    img = x.float()
    grid = F.affine_grid(theta.to(img.device, img.dtype), list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _theta(n: int, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    t = torch.zeros(n, 2, 3, dtype=torch.float64)
    for (i, j), v in {(0, 0): a, (0, 1): b, (0, 2): c, (1, 0): d, (1, 1): e, (1, 2): f}.items():
        t[:, i, j] = v if isinstance(v, torch.Tensor) else torch.full((n,), float(v), dtype=torch.float64)
    return t


def apply_op(name: str, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One of TPT's nine AugMix operations on (n, 3, R, R) uint8 views, parameters drawn per view.

    ``int_parameter(l, m) = int(l m / 10)``, ``float_parameter(l, m) = l m / 10`` of a level
    ``l ~ U(0.1, 1)``; posterize keeps ``4 - int_parameter(l, 4)`` bits, solarize inverts pixels
    at or above ``256 - int_parameter(l, 256)``, rotations are ``int_parameter(l, 30)`` degrees,
    shears ``float_parameter(l, 0.3)`` and translations ``int_parameter(l, 224 / 3)`` pixels of a
    224-pixel image, each with a random sign.
    """
    n, size = x.shape[0], x.shape[-1]
    if name == "autocontrast":
        return TF.autocontrast(x)
    if name == "equalize":
        return TF.equalize(x)
    lvl = _level(n, g)
    if name == "posterize":
        bits = 4 - torch.floor(lvl * 4 / 10).long()
        out = x.clone()
        for b in bits.unique().tolist():
            sel = bits == b
            out[sel] = TF.posterize(x[sel], int(b))
        return out
    if name == "solarize":
        threshold = (256 - torch.floor(lvl * 256 / 10)).to(torch.int16).view(n, 1, 1, 1)
        return torch.where(x.to(torch.int16) >= threshold, 255 - x, x)
    sign = _sign(n, g)
    if name == "rotate":
        rad = torch.deg2rad(torch.floor(lvl * 30 / 10) * sign)
        return _affine(x, _theta(n, a=torch.cos(rad), b=-torch.sin(rad), d=torch.sin(rad), e=torch.cos(rad)))
    if name in ("shear_x", "shear_y"):
        s = lvl * 0.3 / 10 * sign
        # PIL's AFFINE data (1, s, 0, 0, 1, 0) maps output (x, y) to input (x + s y, y) in pixels about
        # the top-left corner; in normalised coordinates that is u + s v + s (likewise for y)
        return _affine(x, _theta(n, b=s, c=s) if name == "shear_x" else _theta(n, d=s, f=s))
    pixels = torch.floor(lvl * (_IMAGE_SIZE / 3) / 10) * sign * size / _IMAGE_SIZE
    shift = 2 * pixels / size
    return _affine(x, _theta(n, c=shift) if name == "translate_x" else _theta(n, f=shift))


def augmix(views: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """AugMix of pre-augmented float [0, 1] views (n, 3, R, R): ``m x + (1 - m) sum_i w_i chain_i(x)``."""
    n = views.shape[0]
    base = views.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    w = -torch.log(torch.rand(n, CHAINS, generator=g, dtype=torch.float64).clamp_min(1e-12))
    w = (w / w.sum(dim=1, keepdim=True)).float()  # Dirichlet(1, 1, 1): normalised Exp(1) draws
    m = torch.rand(n, generator=g).view(n, 1, 1, 1)  # Beta(1, 1)
    mix = torch.zeros_like(views)
    for chain in range(CHAINS):
        x = base.clone()
        depth = torch.randint(1, MAX_DEPTH + 1, (n,), generator=g)
        for step in range(MAX_DEPTH):
            op = torch.randint(0, len(OPS), (n,), generator=g)
            for k, name in enumerate(OPS):
                sel = (depth > step) & (op == k)
                if sel.any():
                    x[sel] = apply_op(name, x[sel], g)
        mix += w[:, chain].view(n, 1, 1, 1).to(views.device) * x.float().div(255)
    return m.to(views.device) * views + (1 - m.to(views.device)) * mix
