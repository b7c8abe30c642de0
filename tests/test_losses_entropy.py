"""The entropy losses of UEO, InfoMax and TENT against values written out by hand with ``math``."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.adapt.losses import entropy, infomax_loss, softmax_entropy, ueo_confidence_weights, ueo_loss

EPS = 1e-5

# Two samples, two classes: softmax([ln 3, 0]) = [3/4, 1/4], softmax([0, 0]) = [1/2, 1/2].
LOGITS = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
P0 = (0.75, 0.25)
P1 = (0.5, 0.5)


def h(q: tuple[float, ...], eps: float = EPS) -> float:
    """-sum q log(q + eps), written out."""
    return -sum(x * math.log(x + eps) for x in q)


def test_entropy_has_eps_inside_the_log_per_row():
    p = torch.tensor([P0, P1])
    expected = [
        -(0.75 * math.log(0.75 + EPS) + 0.25 * math.log(0.25 + EPS)),
        -(0.5 * math.log(0.5 + EPS) + 0.5 * math.log(0.5 + EPS)),
    ]
    assert entropy(p).tolist() == pytest.approx(expected, abs=1e-6)
    no_eps = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert abs(entropy(p)[0].item() - no_eps) > 5e-6
    assert entropy(torch.tensor([1.0, 0.0])).item() == pytest.approx(-math.log(1 + EPS), abs=1e-7)


def test_ueo_weights_are_msp_of_unscaled_cosine():
    cos = torch.tensor([[0.3, 0.1], [0.0, 0.5], [0.2, 0.2]])
    expected = [
        math.exp(0.3) / (math.exp(0.3) + math.exp(0.1)),
        math.exp(0.5) / (math.exp(0.0) + math.exp(0.5)),
        0.5,
    ]
    assert ueo_confidence_weights(cos).tolist() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_ueo_loss_weighted_conditional_and_inverse_weighted_marginal(lam):
    w0, w1 = 0.8, 0.4
    conditional = (w0 * h(P0) + w1 * h(P1)) / (w0 + w1)
    a0, a1 = 1 / w0, 1 / w1  # 1.25, 2.5
    marginal = ((a0 * 0.75 + a1 * 0.5) / (a0 + a1), (a0 * 0.25 + a1 * 0.5) / (a0 + a1))
    assert marginal == pytest.approx((7 / 12, 5 / 12))
    expected = conditional - lam * h(marginal)
    got = ueo_loss(LOGITS, torch.tensor([w0, w1]), lam=lam).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # Weighting the marginal by w instead of 1/w gives [2/3, 1/3]: a clearly different value.
    wrong = conditional - lam * h((2 / 3, 1 / 3))
    assert abs(got - wrong) > 1e-3


def test_infomax_loss():
    expected = (h(P0) + h(P1)) / 2 - h((0.625, 0.375))
    assert infomax_loss(LOGITS).item() == pytest.approx(expected, abs=1e-6)
    assert infomax_loss(LOGITS, lam=0.0).item() == pytest.approx((h(P0) + h(P1)) / 2, abs=1e-6)


def test_ueo_with_uniform_weights_equals_infomax():
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 10
    for lam in (1.0, 0.3):
        assert ueo_loss(logits, torch.full((7,), 0.37), lam).item() == pytest.approx(
            infomax_loss(logits, lam).item(), abs=1e-6
        )


def test_tent_softmax_entropy_has_no_eps_and_survives_extreme_logits():
    got = softmax_entropy(LOGITS)
    expected = [-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2.0)]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    extreme = softmax_entropy(torch.tensor([[1000.0, 0.0, -1000.0]]))
    assert torch.isfinite(extreme).all() and extreme.item() == pytest.approx(0.0, abs=1e-6)


def test_losses_are_float32_under_bf16_inputs():
    assert ueo_loss(LOGITS.bfloat16(), torch.tensor([0.8, 0.4])).dtype == torch.float32
    assert infomax_loss(LOGITS.bfloat16()).dtype == torch.float32
    assert softmax_entropy(LOGITS.bfloat16()).dtype == torch.float32
