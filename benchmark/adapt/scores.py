"""OOD scores as a registry: functions of a method's logits, higher = more likely a known class.

Every method predicts logits over the K known classes on CLIP's scale, ``logits = 100 * cos``
(for methods with their own classifier, e.g. MUST's head or TDA's cache-adjusted logits, the
same scale by construction). Every registered score is computed from those logits for every
evaluated sample and stored in ``preds.npz`` as ``<part>_score_<name>``, with the metrics under
each score in ``result.json``; the protocol names the headline score and ``--score`` shows
another without rerunning. A method may add scores of its own (``Prediction.extra``), stored the
same way under their own names.

Notation: ``z = logits`` (N, K), ``c = z / 100`` the cosine similarities, ``p = softmax(z)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from mmengine.registry import Registry

from benchmark.model.clip import LOGIT_SCALE

SCORES = Registry("ood score", scope="clipbench")

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
DESCRIPTIONS: dict[str, str] = {}
"""One line per registered score, for table captions."""


def register_score(name: str, description: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register ``fn(logits) -> (N,) score`` under ``name`` with a one-line description."""

    def wrap(fn: ScoreFn) -> ScoreFn:
        SCORES.register_module(name=name, module=fn)
        DESCRIPTIONS[name] = description
        return fn

    return wrap


@register_score("msp_cos", "max softmax of the raw cosines, temperature 1")
def msp_cos(logits: torch.Tensor) -> torch.Tensor:
    """MSP of the raw cosines (temperature 1): ``max_k softmax_k(c)``.

    The official UEO evaluation (tim-learn/UEO ``demo.py:320-321`` keeps
    ``image_features @ text_features.T`` with the ``100.*`` commented out; ``get_score`` at
    ``demo.py:291-293`` takes the max of its softmax); also MCM (Ming et al., NeurIPS 2022) at
    its default temperature. Close to 1/K for every sample, but it ranks by the whole cosine
    profile, not by the top logit alone.
    """
    return (logits.double() / LOGIT_SCALE).softmax(dim=-1).max(dim=-1).values


@register_score("msp", "max softmax of 100 x cosine")
def msp(logits: torch.Tensor) -> torch.Tensor:
    """MSP of the logits ``max_k softmax_k(100 c)`` (Hendrycks & Gimpel, ICLR 2017, at CLIP's scale)."""
    return logits.double().softmax(dim=-1).max(dim=-1).values


@register_score("max_logit", "largest logit (100 x cosine)")
def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """``max_k z_k`` (Hendrycks et al., ICML 2022); for CLIP the maximum cosine (ROSITA's score) times 100."""
    return logits.double().max(dim=-1).values


@register_score("energy", "log-sum-exp of the logits")
def energy(logits: torch.Tensor) -> torch.Tensor:
    """Negative free energy at temperature 1, ``log sum_k exp(z_k)`` (Liu et al., NeurIPS 2020; UniEnt's score)."""
    return torch.logsumexp(logits.double(), dim=-1)


@register_score("neg_entropy", "negative entropy of the softmax")
def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``-H(p) = sum_k p_k log p_k``: confident predictions score high."""
    z = logits.double()
    return (z.softmax(dim=-1) * z.log_softmax(dim=-1)).sum(dim=-1)


def describe_score(name: str) -> str:
    """A registered score's one-line description (any other name is a method's own score)."""
    return DESCRIPTIONS.get(name, "a method's own score")


def score_names() -> list[str]:
    """The registered score names, in registration order."""
    return list(SCORES.module_dict)


def compute_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every registered score of a batch of logits, as float64 tensors of shape (N,)."""
    return {name: fn(logits) for name, fn in SCORES.module_dict.items()}
