"""Batched image augmentation on [0,1] tensors (one affine resample per batch, CPU or GPU).

Images are cached at the model's resolution, so augmentations work on tensors rather than on
decoded files: ``RandomResizedCrop(scale 0.5-1, bicubic) + horizontal flip`` becomes one
``affine_grid`` + ``grid_sample`` call for the whole batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize back, maybe flip.

    A crop of relative width ``w`` and height ``h`` centred at ``(cx, cy)`` (in [-1, 1]
    coordinates) is the affine map ``x' = w x + cx``, ``y' = h y + cy``; a flip negates ``w``.
    """
    n = images.shape[0]
    g = generator
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def color_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in ``[1-s, 1+s]`` per image."""
    n = images.shape[0]

    def factor() -> torch.Tensor:
        f = 1 + (torch.rand(n, generator=generator) * 2 - 1) * strength
        return f.view(n, 1, 1, 1).to(images.device, images.dtype)

    x = images * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factor() + gray
    return x.clamp_(0.0, 1.0)


def random_grayscale(images: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Turn each image grey with probability ``p``."""
    n = images.shape[0]
    pick = (torch.rand(n, generator=generator) < p).view(n, 1, 1, 1).to(images.device)
    gray = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]).expand_as(images)
    return torch.where(pick, gray, images)


def weak(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The recipes' train augmentation: RandomResizedCrop(scale 0.5-1, bicubic) + flip."""
    return random_resized_crop(images, generator)


def strong(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A strong view for self-training: crop + flip + colour jitter + random greyscale."""
    x = random_resized_crop(images, generator, scale=(0.3, 1.0))
    return random_grayscale(color_jitter(x, generator), generator)


AUGMENTATIONS = {"none": lambda x, g: x, "weak": weak, "strong": strong}
"""Named augmentations a method may ask for in ``UnlabeledData.batches``."""
