"""Exponential-moving-average (EMA) teachers, as in mean teacher and MUST.

The teacher holds its own copy of the student's modules and follows it after every optimiser
step: ``theta_t <- d * theta_t + (1 - d) * theta_s`` for every floating-point entry of the state
dict (parameters and buffers, as timm's ``ModelEma`` that MUST uses); other entries are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn


def ramped_decay(step: int, start: float, end: float, ramp_steps: int) -> float:
    """MUST's decay schedule: linear from ``start`` to ``end`` over ``ramp_steps`` iterations.

    ``d(t) = start + (end - start) * min(1, t / ramp_steps)``; a fast-moving teacher early on
    (``start`` = 0.999 on ImageNet) that slows to the final decay (0.9998).
    """
    if ramp_steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / ramp_steps)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: ``t <- decay * t + (1 - decay) * s`` for floating entries, ``t <- s`` for the rest."""
    student_state = student.state_dict()
    for key, t in teacher.state_dict().items():
        s = student_state[key].detach()
        if t.is_floating_point():
            t.mul_(decay).add_(s.to(t.dtype), alpha=1.0 - decay)
        else:
            t.copy_(s)


class EmaTeacher:
    """A frozen, eval-mode deep copy of ``student`` that ``update`` moves towards the student.

    The copy is not registered on any model, so the student's optimiser and state dict never
    see it; ``load_from`` re-synchronises it (e.g. after the student was reset).
    """

    def __init__(self, student: nn.Module):
        self.module = copy.deepcopy(student).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def update(self, student: nn.Module, decay: float) -> None:
        """One EMA step towards ``student`` with the given ``decay``."""
        ema_update_(self.module, student, decay)

    @torch.no_grad()
    def load_from(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of ``student`` again."""
        self.module.load_state_dict(student.state_dict())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The teacher's forward, without gradient."""
        with torch.no_grad():
            return self.module(*args, **kwargs)
