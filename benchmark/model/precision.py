"""Numerical precision as a hyper-parameter of every method (``precision``).

Choices:

- ``fp32``: float32 weights and arithmetic.
- ``bf16`` / ``fp16``: float32 weights, the forward pass under ``torch.autocast`` in that type;
  ``fp16`` also scales the loss (``torch.amp.GradScaler``) so small gradients do not underflow.
- ``official``: what the method's own code does, named by its ``official_precision``:
  ``fp32``; ``fp16`` (autocast with a GradScaler, e.g. TPT); or ``fp16_weights``: the model as
  OpenAI's ``clip.load`` returns it on a GPU (UEO, UPL, TDA): the weights of every convolution,
  linear layer, attention projection and the two output projections in float16
  (``clip/model.py`` ``convert_weights``), normalisation layers kept in float32 and computing in
  float32, a learnable prompt context created in float16 and updated in float16, no autocast
  and no loss scaling. ``clip.load`` returns float32 weights on a CPU, so on a CPU ``official``
  is ``fp32``.

Only ``fp32`` runs on a CPU; asking for ``bf16`` or ``fp16`` there is an error that names the
option. The effective precision is recorded in every run.
"""

from __future__ import annotations

import contextlib

import open_clip
import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "fp16", "official")
OFFICIAL_KINDS = ("fp32", "fp16", "fp16_weights")


class PrecisionError(ValueError):
    """A precision that cannot run on the chosen device."""


def effective_precision(choice: str, official: str, device: torch.device | str, method: str = "<method>") -> str:
    """The precision a run uses: ``fp32``, ``bf16``, ``fp16`` or ``fp16_weights``.

    ``official`` resolves to the method's ``official`` kind on a GPU and to ``fp32`` on a CPU
    (as ``clip.load`` does); ``bf16``/``fp16`` on a CPU raise :class:`PrecisionError`.
    """
    if choice not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if official not in OFFICIAL_KINDS:
        raise PrecisionError(f"official precision must be one of {', '.join(OFFICIAL_KINDS)}, got {official!r}")
    cuda = torch.device(device).type == "cuda"
    if choice == "official":
        return official if cuda else "fp32"
    if choice != "fp32" and not cuda:
        raise PrecisionError(
            f"{method}.precision={choice} needs a CUDA device; on a CPU only fp32 runs: use --cfg-options "
            f"{method}.precision=fp32 (or official, which is fp32 on a CPU), or --device cuda"
        )
    return choice


def autocast_dtype(effective: str) -> torch.dtype | None:
    """The autocast type of an effective precision (None: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(effective)


def autocast(effective: str, device: torch.device):
    """``torch.autocast`` for ``bf16``/``fp16``; a no-op context otherwise."""
    dtype = autocast_dtype(effective)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(effective: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for ``fp16`` autocast (None otherwise)."""
    return torch.amp.GradScaler(device.type) if effective == "fp16" else None


def to_fp16_weights(clip: nn.Module) -> nn.Module:
    """Convert an open_clip model in place as ``clip.load`` does on a GPU.

    Convolution, linear, attention-projection and output-projection weights become float16
    (open_clip's ``convert_weights_to_lp`` converts exactly the tensors of OpenAI's
    ``convert_weights``); every LayerNorm computes in float32 and casts back (OpenAI's
    ``LayerNorm`` subclass), with its affine parameters kept in float32; BatchNorm is untouched.
    """
    open_clip.convert_weights_to_lp(clip, dtype=torch.float16)
    for module in clip.modules():
        if type(module) in (nn.LayerNorm, open_clip.transformer.LayerNorm):
            module.__class__ = open_clip.transformer.LayerNormFp32
    return clip


def weights_dtype(module: nn.Module) -> torch.dtype:
    """The type of the first convolution's weight: what inputs must be cast to (``clip_model.dtype``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.dtype
    return torch.float32
