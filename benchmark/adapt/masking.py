"""Patch masking and the masked-image-modelling terms of MUST (SimMIM-style, ViT only).

Patches are indexed row-major over the ``g x g`` patch grid, ``P = g * g``. A pixel patch is the
flat vector of its ``3 * p * p`` values in (channel, row, column) order, the order in which a
1x1-conv decoder followed by ``PixelShuffle(p)`` (MUST's decoder) lays out its output.
"""

from __future__ import annotations

import math

import torch


def random_block_mask(
    n: int, grid: int, ratio: float, block: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n, grid*grid) bool masks, each hiding ``ceil(ratio * B)`` of ``B`` random square blocks.

    MUST's ``MaskGenerator``: the image is split into blocks of ``block x block`` patches (its
    ``mask_patch_size / model_patch_size``, 32 / 16 = 2 for ViT-B/16), ``ceil(ratio * B)`` blocks
    are drawn uniformly without replacement per image, and the block mask is upsampled to
    patches. When ``block`` does not divide ``grid`` the block grid is ``ceil(grid / block)`` and
    is cropped to the patch grid, so the masked fraction is then only approximately ``ratio``.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    if block < 1:
        raise ValueError(f"mask block side must be at least 1 patch, got {block}")
    side = math.ceil(grid / block)
    blocks = side * side
    count = math.ceil(blocks * ratio)
    order = torch.rand(n, blocks, generator=generator).argsort(dim=1)
    mask = torch.zeros(n, blocks, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    mask = mask.view(n, side, side).repeat_interleave(block, 1).repeat_interleave(block, 2)
    return mask[:, :grid, :grid].reshape(n, grid * grid)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, P, C * patch * patch) pixel patches, row-major over the patch grid."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels (MAE's ``norm_pix_loss`` target): ``(x - mean) / sqrt(var + eps)``.

    Mean and (unbiased=False) variance are taken over the values of each patch.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=False, keepdim=True)
    return (patches - mean) / torch.sqrt(var + eps)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the values of masked patches only.

    ``L = sum_{i, j in M_i} |pred_ij - target_ij|_1 / (|M| * D)`` with ``D`` values per patch;
    equal to MUST's ``sum(|x_rec - x| * mask) / sum(mask) / C`` on pixels. Visible patches do not
    count; with no masked patch the loss is 0.
    """
    m = mask.unsqueeze(-1).to(pred.dtype)
    per_value = (pred.float() - target.float()).abs() * m
    denom = m.sum() * pred.shape[-1]
    return per_value.sum() / denom.clamp_min(1.0)


def masked_alignment(global_embed: torch.Tensor, patch_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MUST's global-local feature alignment on masked patches.

    With the normalised image embedding ``z_cls`` (N, D) and the normalised, projected patch
    embeddings ``z_j`` (N, P, D): ``L = mean_{i, j in M_i} || z_ij - z_cls,i ||_2^2``. As in
    MUST, no stop-gradient: both sides are pulled together.
    """
    dist = (patch_embeds.float() - global_embed.float().unsqueeze(1)).pow(2).sum(dim=-1)
    m = mask.to(dist.dtype)
    return (dist * m).sum() / m.sum().clamp_min(1.0)
