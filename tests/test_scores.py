"""OOD scores (benchmark.adapt.scores) against hand-computed values on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.adapt.scores import SCORES, compute_scores, describe_score, score_names
from benchmark.core.metrics import auroc

# two samples, three classes, logits = 100 * cos
COS = torch.tensor([[0.30, 0.10, 0.10], [0.25, 0.24, -0.50]], dtype=torch.float64)
LOGITS = 100 * COS


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_registry_names_and_descriptions():
    assert score_names()[:5] == ["msp_cos", "msp", "max_logit", "energy", "neg_entropy"]
    assert all(describe_score(n) for n in score_names())
    assert describe_score("not_registered") == "a method's own score"
    assert set(compute_scores(LOGITS)) == set(SCORES.module_dict)


def test_msp_cos_is_softmax_of_raw_cosines():
    s = compute_scores(LOGITS)["msp_cos"]
    assert s[0].item() == pytest.approx(max(_softmax([0.30, 0.10, 0.10])))  # e^.3 / (e^.3 + 2 e^.1) = 0.3792
    assert s[1].item() == pytest.approx(max(_softmax([0.25, 0.24, -0.50])))  # 0.4061
    assert s[0].item() == pytest.approx(0.37915, abs=1e-5)


def test_msp_max_logit_energy_neg_entropy():
    s = compute_scores(LOGITS)
    p_b = _softmax([25.0, 24.0, -50.0])
    assert s["msp"][1].item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert s["msp"][0].item() == pytest.approx(max(_softmax([30.0, 10.0, 10.0])))
    assert s["max_logit"].tolist() == pytest.approx([30.0, 25.0])
    assert s["energy"][1].item() == pytest.approx(math.log(math.exp(25) + math.exp(24) + math.exp(-50)))
    assert s["neg_entropy"][1].item() == pytest.approx(sum(p * math.log(p) for p in p_b))


def test_msp_cos_ranks_differently_from_msp():
    s = compute_scores(LOGITS)
    assert s["msp"][0] > s["msp"][1]  # the peaked sample wins at temperature 0.01
    assert s["msp_cos"][0] < s["msp_cos"][1]  # the whole cosine profile wins at temperature 1
    known = torch.tensor([True, False])
    assert auroc(s["msp"].numpy(), known.numpy()) == 100.0
    assert auroc(s["msp_cos"].numpy(), known.numpy()) == 0.0
