"""Every training loss checked on its gradient, not only its value (issue 14).

A value test cannot see a term whose gradient is lost (``.detach()``, ``no_grad``) and a
gradient-consistency test alone cannot see a sign flipped inside the function (autograd and
finite differences then agree on the wrong function). So every loss gets, on a tiny fixed case in
float64:

- **FD**: autograd's gradient equals a central finite-difference one (4-point stencil), which
  catches a detached or no-grad term;
- **closed form**: autograd's gradient equals one derived by hand and written out below, which
  catches a flipped sign or a wrong weight in any term.

The shared helpers (``benchmark/adapt/losses.py``, ``selftrain.py``, ``masking.py``,
``views.py``, ROSITA's contrastive block) are checked directly. Each method's training loss
(``ueo``, ``infomax``, ``tent``, ``unient``, ``pseudo_label`` and its ensemble, ``must``, ``tpt``,
``rosita``; ``zero_shot`` and ``tda`` train nothing) is checked as the method computes it on the
tiny random ViT (TENT on the ResNet too) in float64: FD along a random direction per trainable
tensor, and the hand-derived gradient with respect to the model's outputs (logits, features,
patch tokens) pushed through autograd's Jacobian of the model (``J^T g``). ROSITA's loss is
checked against its hand-derived gradient only: its feature bank stores the image's own
(detached) feature before the contrastive term uses it, a stop-gradient by design that finite
differences of the whole step would see through.

The helpers compute in float32 by design (``.float()``); here ``Tensor.float`` leaves float64
tensors as they are (``float64_passthrough``), so the checks run at float64 precision without
touching the code. The ``test_check_*`` tests show the checks bite: InfoMax's marginal entropy
and UEO's weighted conditional entropy, detached or with a flipped sign, fail them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

import benchmark.adapt.episodic
import methods.infomax
import methods.must
import methods.pseudo_label
import methods.rosita
import methods.tent
import methods.ueo
import methods.unient
from benchmark.adapt.losses import (
    ENTROPY_EPS,
    entropy,
    infomax_loss,
    softmax_entropy,
    ueo_confidence_weights,
    ueo_loss,
)
from benchmark.adapt.masking import masked_alignment, masked_l1, normalize_patches, patchify
from benchmark.adapt.selftrain import fairness_loss
from benchmark.adapt.views import marginal_entropy
from benchmark.registry import get_method
from tests.conftest import CLASSNAMES, make_classifier, make_data

K = len(CLASSNAMES)
DT = torch.float64
FD_TOL = 1e-6
"""Largest relative difference between autograd and finite differences (seen: below 1e-9)."""
CLOSED_TOL = 1e-9
"""Largest relative difference between autograd and a closed form (seen: about 1e-15)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def float64_passthrough(monkeypatch):
    """``Tensor.float()`` keeps float64 tensors float64 (and converts everything else as usual)."""
    original = torch.Tensor.float

    def keep_double(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", keep_double)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=DT)


# ---- the two checks --------------------------------------------------------------------------------


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """``|got - want| / (|got| + |want|)`` (Frobenius norms): 0 when equal, 1 when one is zero."""
    den = (got.norm() + want.norm()).item()
    return 0.0 if den == 0 else (got - want).norm().item() / den


def autograd_grads(f: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = f(*xs)
    assert out.dim() == 0, "check a scalar"
    if not out.requires_grad:  # everything detached: the gradient is zero
        return [torch.zeros_like(x) for x in xs]
    grads = torch.autograd.grad(out, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


def stencil(f: Callable[[float], float], h: float) -> float:
    """Fourth-order central difference of a scalar function of one variable at 0."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


def fd_grads(f: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], h: float = 1e-4) -> list[torch.Tensor]:
    """Element-wise finite-difference gradient of a scalar function of float64 tensors."""
    base = [x.detach().clone() for x in inputs]
    grads = []
    for i, x in enumerate(base):
        g = torch.zeros_like(x)
        for j in range(x.numel()):

            def shifted(e: float, i=i, j=j) -> float:
                xs = [b.clone() for b in base]
                xs[i].view(-1)[j] += e
                with torch.no_grad():
                    return f(*xs).item()

            g.view(-1)[j] = stencil(shifted, h)
        grads.append(g)
    return grads


def fd_error(f: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> float:
    """Worst relative difference between autograd's and the finite-difference gradient, over the inputs."""
    return max(rel_err(a, n) for a, n in zip(autograd_grads(f, inputs), fd_grads(f, inputs)))


def closed_error(f: Callable[..., torch.Tensor], want: Sequence[torch.Tensor], *inputs: torch.Tensor) -> float:
    """Worst relative difference between autograd's gradient and the given closed forms, over the inputs."""
    return max(rel_err(a, w) for a, w in zip(autograd_grads(f, inputs), want))


def param_fd_errors(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    h: float = 1e-4,
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> list[float]:
    """Per trainable tensor (or per group of them, given as positions in ``params``): autograd's
    derivative of ``loss_fn()`` along a random unit direction against the finite difference of
    ``loss_fn`` along it (the tensors moved in place, then restored)."""
    grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    g = gen(seed)
    errors = []
    for group in groups or [[i] for i in range(len(params))]:
        ps = [params[i] for i in group]
        vs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps]
        norm = math.sqrt(sum((v * v).sum().item() for v in vs))
        vs = [v / norm for v in vs]
        starts = [p.detach().clone() for p in ps]

        def at(e: float, ps=ps, vs=vs, starts=starts) -> float:
            with torch.no_grad():
                for p, v, start in zip(ps, vs, starts):
                    p.copy_(start + e * v)
                return loss_fn().item()

        fd = stencil(at, h)
        with torch.no_grad():
            for p, start in zip(ps, starts):
                p.copy_(start)
        auto = sum((grads[i] * v).sum().item() for i, v in zip(group, vs))
        scale = math.sqrt(sum(grads[i].norm().item() ** 2 for i in group))
        errors.append(abs(auto - fd) / (scale + abs(fd) + 1e-300))
    return errors


def chain_errors(
    loss: torch.Tensor,
    outputs: Sequence[torch.Tensor],
    closed: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    direct: dict[int, torch.Tensor] | None = None,
) -> list[float]:
    """Per trainable tensor: autograd's gradient of ``loss`` against ``J^T g``, the hand-derived
    gradients ``closed`` of the loss with respect to the model's ``outputs`` pushed back by autograd,
    plus ``direct[id(p)]``, the hand-derived gradient of parameters the loss uses after those outputs."""
    direct = direct or {}
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(outputs, params, closed, retain_graph=True, allow_unused=True)
    zero = torch.zeros_like
    return [
        rel_err(zero(p) if a is None else a, (zero(p) if w is None else w) + direct.get(id(p), zero(p)))
        for p, a, w in zip(params, got, want)
    ]


# ---- closed forms --------------------------------------------------------------------------------------


def softmax_vjp(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``dL/dz`` from ``u = dL/dp`` for ``p = softmax(z)`` (last dim): ``p * (u - <p, u>)``."""
    return p * (u - (p * u).sum(-1, keepdim=True))


def normalize_vjp(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` from ``g = dL/dy`` for ``y = x / |x|`` (last dim): ``(g - y <y, g>) / |x|``."""
    n = x.norm(dim=-1, keepdim=True)
    y = x / n
    return (g - y * (y * g).sum(-1, keepdim=True)) / n


def d_entropy(q: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """d/dq of ``-sum q log(q + eps)``: ``-(log(q + eps) + q / (q + eps))``."""
    return -(torch.log(q + eps) + q / (q + eps))


def d_softmax_entropy(z: torch.Tensor) -> torch.Tensor:
    """Per row, d/dz of ``H(softmax z)``: ``-p (log p + H)``."""
    p = z.softmax(-1)
    h = -(p * p.log()).sum(-1, keepdim=True)
    return -p * (p.log() + h)


def d_ueo(z: torch.Tensor, w: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dz, dL/dw)`` of ``L = sum w H(p)/W - lam H(m)``, ``m = sum (1/w) p / A``, ``A = sum 1/w``.

    ``dL/dp_i = (w_i/W) H'(p_i) - lam (a_i/A) H'(m)`` with ``a = 1/w``, then through the softmax;
    ``dL/dw_i = (H(p_i) - C)/W + lam <H'(m), p_i - m> / (A w_i^2)`` with ``C`` the conditional term.
    """
    p = z.softmax(-1)
    a = 1 / w
    W, A = w.sum(), a.sum()
    m = (a[:, None] * p).sum(0) / A
    dp = (w / W)[:, None] * d_entropy(p) - lam * (a / A)[:, None] * d_entropy(m)
    h = -(p * torch.log(p + ENTROPY_EPS)).sum(-1)
    c = (w * h).sum() / W
    dw = (h - c) / W + lam * ((p - m) * d_entropy(m)).sum(-1) / (A * w**2)
    return softmax_vjp(p, dp), dw


def d_infomax(z: torch.Tensor, lam: float) -> torch.Tensor:
    """d/dz of ``mean H(p) - lam H(mean p)``: ``dL/dp_i = (H'(p_i) - lam H'(mean p)) / N``."""
    p = z.softmax(-1)
    n = z.shape[0]
    return softmax_vjp(p, (d_entropy(p) - lam * d_entropy(p.mean(0))) / n)


def d_fairness(probs: torch.Tensor) -> torch.Tensor:
    """d/dP of ``-(1/K) sum_k log mean_i P_ik``: ``-1 / (K N mean_k)`` for every row."""
    n, k = probs.shape
    return (-1.0 / (k * n * probs.mean(0))).expand(n, k)


def d_marginal_entropy(z: torch.Tensor) -> torch.Tensor:
    """d/dz_bv of ``sum_b H(mean_v softmax z_bv)`` (no eps): ``-(1/V) p_bv (log m_b - <p_bv, log m_b>)``."""
    p = z.softmax(-1)
    log_m = p.mean(1, keepdim=True).log()
    return softmax_vjp(p, -(log_m + 1) / z.shape[1])


def d_cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, d/dz of ``-log softmax(z)[target]``: ``softmax(z) - onehot(target)``."""
    return z.softmax(-1) - F.one_hot(target, z.shape[-1]).to(z.dtype)


def d_contrastive(
    f: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    label: int | None,
    text: torch.Tensor,
    k_p: int,
    k_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/df, the positives' mask) of ROSITA's ``mean_j mask_j (-s_pos_j + logsumexp_n s_neg_n)``.

    With unit ``pos``/``neg`` rows and ``s = f . row``: ``(1/k_p) sum_j mask_j (-pos_j +
    sum_n softmax(s_neg)_n neg_n)`` over the ``k_p`` nearest positives and ``k_n`` nearest negatives.
    """
    pos, neg = F.normalize(positives, dim=-1), F.normalize(negatives, dim=-1)
    idx = (pos @ f).topk(k_p).indices
    near_neg = neg[(neg @ f).topk(min(k_n, len(neg))).indices]
    mask = torch.ones(k_p, dtype=DT) if label is None else ((pos[idx] @ text.t()).argmax(-1) == label).to(DT)
    pull = (near_neg @ f).softmax(-1) @ near_neg
    return (mask[:, None] * (pull - pos[idx])).sum(0) / k_p, mask


# ---- shared helpers: FD and closed form ----------------------------------------------------------------

LOGITS = randn(5, 4, seed=1) * 3
WEIGHTS = torch.tensor([0.9, 0.35, 0.6, 0.45, 0.8], dtype=DT)


def test_entropy():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=DT)
    assert fd_error(lambda q: entropy(q).sum(), p) < FD_TOL
    assert closed_error(lambda q: entropy(q).sum(), [d_entropy(p)], p) < CLOSED_TOL
    # one row weighted: the gradient is per row
    assert (
        closed_error(
            lambda q: (entropy(q) * torch.tensor([2.0, -1.0], dtype=DT)).sum(),
            [d_entropy(p) * torch.tensor([[2.0], [-1.0]], dtype=DT)],
            p,
        )
        < CLOSED_TOL
    )


def test_softmax_entropy():
    row_weights = torch.arange(1, 6, dtype=DT)
    f = lambda z: (softmax_entropy(z) * row_weights).sum()
    assert fd_error(f, LOGITS) < FD_TOL
    assert closed_error(f, [d_softmax_entropy(LOGITS) * row_weights[:, None]], LOGITS) < CLOSED_TOL


def test_ueo_confidence_weights():
    cos = randn(4, 3, seed=2) * 0.3
    up = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    p = cos.softmax(-1)
    top = F.one_hot(p.argmax(-1), 3).to(DT)
    want = up[:, None] * (p * top).sum(-1, keepdim=True) * (top - p)  # d max_k p_k / dc = p_m (e_m - p)
    f = lambda c: (ueo_confidence_weights(c) * up).sum()
    assert fd_error(f, cos) < FD_TOL
    assert closed_error(f, [want], cos) < CLOSED_TOL


@pytest.mark.parametrize("lam", [1.0, 0.4])
def test_ueo_loss(lam):
    dz, dw = d_ueo(LOGITS, WEIGHTS, lam)
    f = lambda z, w: ueo_loss(z, w, lam)
    assert fd_error(f, LOGITS, WEIGHTS) < FD_TOL
    assert closed_error(f, [dz, dw], LOGITS, WEIGHTS) < CLOSED_TOL


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_infomax_loss(lam):
    f = lambda z: infomax_loss(z, lam)
    assert fd_error(f, LOGITS) < FD_TOL
    assert closed_error(f, [d_infomax(LOGITS, lam)], LOGITS) < CLOSED_TOL
    # the ablation's claim: uniform weights make it UEO's gradient
    assert rel_err(d_ueo(LOGITS, torch.full((5,), 0.3, dtype=DT), lam)[0], d_infomax(LOGITS, lam)) < CLOSED_TOL


def test_fairness_loss():
    probs = LOGITS.softmax(-1)
    assert fd_error(fairness_loss, probs) < FD_TOL
    assert closed_error(fairness_loss, [d_fairness(probs)], probs) < CLOSED_TOL
    # as MUST uses it, on the softmax of logits
    f = lambda z: fairness_loss(z.softmax(-1))
    assert fd_error(f, LOGITS) < FD_TOL
    assert closed_error(f, [softmax_vjp(probs, d_fairness(probs))], LOGITS) < CLOSED_TOL


def test_masked_l1():
    pred = randn(2, 4, 6, seed=3)
    gap = 0.1 + torch.rand(2, 4, 6, generator=gen(4), dtype=DT)  # |pred - target| >= 0.1: no kink
    target = pred + gap * torch.where(randn(2, 4, 6, seed=5) > 0, 1.0, -1.0)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    d = torch.sign(pred - target) * mask[..., None] / (mask.sum() * 6)
    f = lambda a, b: masked_l1(a, b, mask)
    assert fd_error(f, pred, target) < FD_TOL
    assert closed_error(f, [d, -d], pred, target) < CLOSED_TOL
    none = torch.zeros(2, 4, dtype=torch.bool)  # no masked patch: loss 0, gradient 0
    assert closed_error(lambda a: masked_l1(a, target, none), [torch.zeros_like(pred)], pred) == 0.0


def test_masked_alignment():
    g, z = randn(2, 5, seed=6), randn(2, 4, 5, seed=7)
    mask = torch.tensor([[True, True, False, False], [False, True, False, True]])
    dz = 2 * (z - g[:, None]) * mask[..., None] / mask.sum()
    f = lambda a, b: masked_alignment(a, b, mask)
    assert fd_error(f, g, z) < FD_TOL
    assert closed_error(f, [-dz.sum(1), dz], g, z) < CLOSED_TOL  # both sides pulled: no stop-gradient


def test_normalize_patches():
    x = randn(2, 3, 8, seed=8)
    up = randn(2, 3, 8, seed=9)
    y = normalize_patches(x)
    sigma = (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    # dy_i/dx_j = (delta_ij - 1/D)/sigma - y_i y_j/(D sigma)
    want = (up - up.mean(-1, keepdim=True) - y * (up * y).mean(-1, keepdim=True)) / sigma
    f = lambda a: (normalize_patches(a) * up).sum()
    assert fd_error(f, x) < FD_TOL
    assert closed_error(f, [want], x) < CLOSED_TOL


def test_patchify_gradient_is_the_inverse_layout():
    """``patchify`` moves values: its gradient puts patch ``(r, q)``'s value ``(c, a, b)`` back at
    pixel ``(c, r p + a, q p + b)``, the layout its docstring states."""
    p, g = 2, 2
    x = randn(1, 3, p * g, p * g, seed=10)
    up = randn(1, g * g, 3 * p * p, seed=11)
    want = torch.zeros_like(x)
    for r in range(g):
        for q in range(g):
            for c in range(3):
                for a in range(p):
                    for b in range(p):
                        want[0, c, r * p + a, q * p + b] = up[0, r * g + q, c * p * p + a * p + b]
    f = lambda img: (patchify(img, p) * up).sum()
    assert fd_error(f, x) < FD_TOL
    assert closed_error(f, [want], x) < CLOSED_TOL


def test_marginal_entropy():
    z = randn(2, 3, 4, seed=12) * 3
    f = lambda a: marginal_entropy(a).sum()
    assert fd_error(f, z) < FD_TOL
    assert closed_error(f, [d_marginal_entropy(z)], z) < CLOSED_TOL


@pytest.mark.parametrize("label", [None, 0])
def test_rosita_contrastive_block(label):
    rosita = get_method("rosita")(make_classifier("vit"), {"k_p": 3, "k_n": 2}, seed=0)
    text = F.normalize(randn(3, 6, seed=13), dim=-1)
    f0 = F.normalize(randn(6, seed=14), dim=-1)
    pos, neg = randn(6, 6, seed=15), randn(5, 6, seed=16)
    positives, negatives = list(pos.split(1)), list(neg.split(1))
    want, mask = d_contrastive(f0, pos, neg, label, text, 3, 2)
    if label is not None:
        assert 0 < mask.sum() < 3, "the case must mask some positives and keep others"
    f = lambda feat: rosita.contrastive(feat, positives, negatives, label, text)
    assert fd_error(f, f0) < FD_TOL
    assert closed_error(f, [want], f0) < CLOSED_TOL
    # the banks' side too (the method passes detached bank features; the block itself is differentiable)
    assert (
        fd_error(lambda a, b: rosita.contrastive(f0, list(a.split(1)), list(b.split(1)), label, text), pos, neg)
        < FD_TOL
    )


# ---- the checks bite ------------------------------------------------------------------------------------


def infomax_marginal_detached(logits, lam=1.0):
    p = logits.float().softmax(dim=-1)
    return entropy(p).mean() - lam * entropy(p.mean(dim=0).detach())


def infomax_marginal_flipped(logits, lam=1.0):
    p = logits.float().softmax(dim=-1)
    return entropy(p).mean() + lam * entropy(p.mean(dim=0))


def ueo_weighted_detached(logits, weights, lam=1.0):
    p = logits.float().softmax(dim=-1)
    w = weights.float()
    conditional = (w * entropy(p.detach())).sum() / w.sum()
    inv = 1.0 / w
    return conditional - lam * entropy((inv.unsqueeze(1) * p).sum(dim=0) / inv.sum())


def ueo_weighted_flipped(logits, weights, lam=1.0):
    p = logits.float().softmax(dim=-1)
    w = weights.float()
    conditional = (w * entropy(p)).sum() / w.sum()
    inv = 1.0 / w
    return -conditional - lam * entropy((inv.unsqueeze(1) * p).sum(dim=0) / inv.sum())


def test_check_catches_infomax_marginal_detached_or_flipped():
    assert infomax_marginal_detached(LOGITS).item() == pytest.approx(infomax_loss(LOGITS).item(), abs=1e-12)
    assert fd_error(infomax_marginal_detached, LOGITS) > 100 * FD_TOL
    assert closed_error(infomax_marginal_detached, [d_infomax(LOGITS, 1.0)], LOGITS) > 100 * CLOSED_TOL
    # a flipped sign is self-consistent (FD agrees): the closed form is what sees it
    assert fd_error(infomax_marginal_flipped, LOGITS) < FD_TOL
    assert closed_error(infomax_marginal_flipped, [d_infomax(LOGITS, 1.0)], LOGITS) > 100 * CLOSED_TOL


def test_check_catches_ueo_weighted_term_detached_or_flipped():
    dz, _ = d_ueo(LOGITS, WEIGHTS, 1.0)
    on_logits = lambda fn: lambda z: fn(z, WEIGHTS)
    assert ueo_weighted_detached(LOGITS, WEIGHTS).item() == pytest.approx(ueo_loss(LOGITS, WEIGHTS).item(), abs=1e-12)
    assert fd_error(on_logits(ueo_weighted_detached), LOGITS) > 100 * FD_TOL
    assert closed_error(on_logits(ueo_weighted_detached), [dz], LOGITS) > 100 * CLOSED_TOL
    assert fd_error(on_logits(ueo_weighted_flipped), LOGITS) < FD_TOL
    assert closed_error(on_logits(ueo_weighted_flipped), [dz], LOGITS) > 100 * CLOSED_TOL


# ---- the methods' losses on the tiny model, in float64 --------------------------------------------------


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=gen(seed), dtype=DT)


def build(method: str, arch: str = "vit", **hparams):
    model = make_classifier(arch).double()
    if arch == "rn":  # open_clip zero-initialises bn3: unit weights so that gradients reach every norm
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.fill_(1.0)
    return get_method(method)(model, hparams, seed=0)


def ueo_case(method: str):
    adapter = build(method, epochs=1)
    data = make_data(adapter.model, 6)
    adapter.before_adapt(data)
    batch = {"index": torch.tensor([4, 0, 2, 5]), "images": data.images[[4, 0, 2, 5]].to(DT) / 255}
    return adapter, batch


def ueo_chain(adapter, batch, lam: float = 1.0) -> list[float]:
    params = adapter.trainable_parameters()
    logits = adapter.model(batch["images"])
    if adapter.name == "ueo":
        closed = d_ueo(logits.detach(), adapter.weights[batch["index"]], lam)[0]
    else:
        closed = d_infomax(logits.detach(), lam)
    return chain_errors(adapter.loss(batch), [logits], [closed], params)


@pytest.mark.parametrize("method", ["ueo", "infomax"])
def test_ueo_and_infomax_method_loss(method):
    adapter, batch = ueo_case(method)
    params = adapter.trainable_parameters()
    assert len(params) > 1 and params[0] is adapter.model.prompt.ctx
    assert adapter.weights is None or adapter.weights.requires_grad is False
    assert max(param_fd_errors(lambda: adapter.loss(batch), params)) < FD_TOL
    assert max(ueo_chain(adapter, batch)) < CLOSED_TOL


def test_check_catches_detached_or_flipped_terms_inside_the_methods(monkeypatch):
    """The method-level checks see what the helper-level ones see: InfoMax with its marginal term
    detached fails FD (its loss value is unchanged); UEO with its weighted term's sign flipped fails
    the closed form (FD agrees with it)."""
    adapter, batch = ueo_case("infomax")
    params = adapter.trainable_parameters()
    value = adapter.loss(batch).item()
    monkeypatch.setattr(methods.infomax, "infomax_loss", infomax_marginal_detached)
    assert adapter.loss(batch).item() == pytest.approx(value, abs=1e-12)
    assert max(param_fd_errors(lambda: adapter.loss(batch), params)) > 100 * FD_TOL
    assert max(ueo_chain(adapter, batch)) > 100 * CLOSED_TOL

    adapter, batch = ueo_case("ueo")
    params = adapter.trainable_parameters()
    monkeypatch.setattr(methods.ueo, "ueo_loss", ueo_weighted_flipped)
    assert max(param_fd_errors(lambda: adapter.loss(batch), params)) < FD_TOL
    assert max(ueo_chain(adapter, batch)) > 100 * CLOSED_TOL
    monkeypatch.setattr(methods.ueo, "ueo_loss", ueo_weighted_detached)
    assert max(param_fd_errors(lambda: adapter.loss(batch), params)) > 100 * FD_TOL


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tent_loss(arch):
    """Mean softmax entropy; on the ResNet through BatchNorm's batch statistics."""
    adapter = build("tent", arch)
    x = images(4, adapter.model.image_size, seed=1)
    params = adapter.trainable_parameters()
    if arch == "vit":  # the ResNet's ReLU kinks make finite differences inexact (errors about 1e-3)
        assert max(param_fd_errors(lambda: adapter.loss({"images": x}), params)) < FD_TOL
    loss, logits = adapter.forward_loss(x)
    closed = d_softmax_entropy(logits.detach()) / x.shape[0]
    assert max(chain_errors(loss, [logits], [closed], params)) < CLOSED_TOL


@pytest.mark.parametrize("split", ["soft", "hard"])
def test_unient_loss(split):
    """``E_known H - lam_u E_unknown H - lam_m H(mean p)``: each term's sign and weight by hand."""
    adapter = build("unient", split=split, lam_unknown=0.7, lam_marginal=0.4)
    x = images(8, adapter.model.image_size, seed=2)
    params = adapter.trainable_parameters()
    assert max(param_fd_errors(lambda: adapter.forward_loss(x)[0], params)) < FD_TOL
    w = adapter.known_weights(x).to(DT)
    n = x.shape[0]
    if split == "hard":
        known, unknown = (w[:, 0] > 0).to(DT), (w[:, 1] > 0).to(DT)
        assert known.sum() > 0 and unknown.sum() > 0, "the case must have both groups"
        coef = known / known.sum() - 0.7 * unknown / unknown.sum()
    else:
        assert ((w > 1e-3) & (w < 1 - 1e-3)).any(), "some soft weights must be strictly between 0 and 1"
        coef = (w[:, 0] - 0.7 * w[:, 1]) / n
    loss, logits = adapter.forward_loss(x)
    z = logits.detach()
    p = z.softmax(-1)
    closed = coef[:, None] * d_softmax_entropy(z) - 0.4 * softmax_vjp(p, -(p.mean(0).log() + 1) / n)
    assert max(chain_errors(loss, [logits], [closed], params)) < CLOSED_TOL


def pseudo_label_case(**hparams):
    adapter = build("pseudo_label", n_ctx=4, num_per_class=2, batch_size=4, epochs=1, augment="none", **hparams)
    data = make_data(adapter.model, 12)
    adapter.before_adapt(data)
    return adapter, data


def test_pseudo_label_loss():
    """Two members' contexts, each with its own batch: FD through the (M, n_ctx, D) contexts, and
    the closed form ``sum_m (softmax(z_m) - onehot(y_m)) / B`` with respect to the logits."""
    adapter, data = pseudo_label_case(ensemble=2)
    idx = adapter.selected[:4].view(2, 2)
    feats = adapter.model.image_features(data.images[idx.flatten()].to(DT) / 255).view(2, 2, -1)
    batch = {"features": feats, "index": idx}
    ctx = adapter.contexts
    assert max(param_fd_errors(lambda: adapter.loss(batch), [ctx, ctx, ctx])) < FD_TOL  # three directions
    scale = adapter.train_logit_scale
    logits = scale * torch.einsum("mbd,mkd->mbk", feats, adapter.model.text_features_for(ctx))
    targets = adapter.labels[idx]
    closed = torch.stack([d_cross_entropy(logits[m].detach(), targets[m]) / 2 for m in range(2)])
    assert max(chain_errors(adapter.loss(batch), [logits], [closed], [ctx])) < CLOSED_TOL


def test_pseudo_label_adapt_steps_on_loss(monkeypatch):
    """``adapt`` steps on ``loss()`` of each member's batch (no second copy of the objective)."""
    adapter, data = pseudo_label_case(ensemble=2)
    losses, batches = [], []
    monkeypatch.setattr(adapter, "step", losses.append)
    original = adapter.batch_features

    def recorded(data_, rows, pool, generators):
        feats = original(data_, rows, pool, generators)
        batches.append((feats, rows))
        return feats

    monkeypatch.setattr(adapter, "batch_features", recorded)
    adapter.adapt(data)
    assert len(losses) == len(batches) > 0
    feats, rows = batches[0]
    again = adapter.loss({"features": feats, "index": adapter.selected[rows]})
    assert losses[0].requires_grad and torch.equal(losses[0].detach(), again.detach())


def test_must_loss(monkeypatch):
    """``CE(confident) + L_fair + L_mim + w_align L_align``: FD through every trainable tensor (the
    same masks each time), and each term's gradient by hand with respect to the student's logits,
    image embedding and patch tokens."""
    adapter = build("must", batch_size=6, w_align=0.3)
    adapter.extras.double()  # MUST's modules are created in float32, as the model it expects
    model = adapter.model
    weak, strong = images(6, model.image_size, seed=3), images(6, model.image_size, seed=4)
    conf, pseudo = adapter.teacher(model.normalize(weak)).softmax(-1).max(-1)
    adapter.hp["tau"] = conf.sort().values[2:4].mean().item()  # some confident, some not
    keep = conf > adapter.hp["tau"]
    adapter.before_adapt(make_data(model, 6))
    adapter.before_epoch(0, None)
    state = adapter.mask_generator.get_state()
    batch = {"images": weak, "images_strong": strong}

    def loss_fn() -> torch.Tensor:
        adapter.mask_generator.set_state(state)
        return adapter.loss(batch)

    params = adapter.trainable_parameters()
    assert len(params) > 30
    # one direction per module of the encoder (stem, each block, top) and per tensor of MUST's own modules
    names = {id(p): n for n, p in [*model.visual.named_parameters(), *adapter.extras.named_parameters(prefix="must")]}

    def module(name: str) -> str:
        if name.startswith("must"):
            return name
        if name.startswith("transformer.resblocks."):
            return ".".join(name.split(".")[:3])
        return "top" if name.startswith(("ln_post", "proj")) else "stem"

    groups: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(module(names[id(p)]), []).append(i)
    assert len(groups) == 4 + 6
    assert max(param_fd_errors(loss_fn, params, groups=list(groups.values()))) < FD_TOL

    caught = []
    original = adapter.masked_student

    def recorded(imgs, mask):
        out = original(imgs, mask)
        caught.append((mask, *out))
        return out

    monkeypatch.setattr(adapter, "masked_student", recorded)
    loss = loss_fn()
    mask, logits, embed, tokens = caught[0]
    assert 0 < mask.sum() < mask.numel()
    z, e, t = logits.detach(), embed.detach(), tokens.detach()
    m = mask.to(DT)[..., None]
    d_logits = keep[:, None] * d_cross_entropy(z, pseudo) / keep.sum()
    probs = z.softmax(-1)
    d_logits = d_logits + softmax_vjp(probs, d_fairness(probs))
    decoder = adapter.extras.decoder
    target = patchify(model.normalize(strong), model.patch_size)
    d_pixels = torch.sign(decoder(t) - target) * m / (mask.sum() * target.shape[-1])
    proj = model.visual.proj
    q = t @ proj
    local = F.normalize(q, dim=-1)
    d_local = 0.3 * 2 * (local - e[:, None]) * m / mask.sum()
    d_embed = -d_local.sum(1)
    d_q = normalize_vjp(q, d_local)
    d_tokens = d_pixels @ decoder.weight + d_q @ proj.t()
    direct = {
        id(decoder.weight): torch.einsum("npo,npi->oi", d_pixels, t),
        id(decoder.bias): d_pixels.sum((0, 1)),
        id(proj): torch.einsum("npi,npo->io", t, d_q),
    }  # the decoder and the tokens' projection
    errors = chain_errors(loss, [logits, embed, tokens], [d_logits, d_embed, d_tokens], params, direct)
    assert max(errors) < CLOSED_TOL


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps the gradients of its tensors (one per image), stacked, at every step."""

    grads: ClassVar[list[torch.Tensor]] = []

    def step(self, closure=None):
        RecordingAdamW.grads.append(torch.stack([p.grad.detach().clone() for p in self.param_groups[0]["params"]]))
        return super().step(closure)


def test_tpt_loss(monkeypatch):
    """Per image, the entropy of the mean prediction of its confident views, through the context:
    the gradient at the chosen logits by hand, and at the context by FD of ``tune``'s own loss."""
    adapter = build("tpt", views=8, selection=0.25, batch_size=3)
    ctx = adapter.model.prompt.ctx
    dim = adapter.model.text_features().shape[-1]
    feats = F.normalize(randn(3, 8, dim, seed=17), dim=-1)
    chosen, at_chosen = [], []

    def recorded(z):
        chosen.append(z.detach())
        z.register_hook(at_chosen.append)
        return marginal_entropy(z)

    monkeypatch.setattr(benchmark.adapt.episodic, "marginal_entropy", recorded)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    RecordingAdamW.grads = []
    adapter.tune(feats)
    assert chosen[0].shape == (3, 2, K)
    assert rel_err(at_chosen[0], d_marginal_entropy(chosen[0])) < CLOSED_TOL
    grad = RecordingAdamW.grads[0].sum(0)  # every image's context copy starts from the shared one

    def total(e: float, v: torch.Tensor, start: torch.Tensor) -> float:
        with torch.no_grad():
            ctx.copy_(start + e * v)
        adapter.tune(feats)
        return adapter.last_loss * feats.shape[0]

    start = ctx.detach().clone()
    g = gen(1)
    for _ in range(3):
        v = torch.randn(ctx.shape, generator=g, dtype=DT)
        v /= v.norm()
        fd = stencil(lambda e, v=v: total(e, v, start), 1e-4)
        assert abs((grad * v).sum().item() - fd) / (grad.norm().item() + abs(fd)) < FD_TOL
    with torch.no_grad():
        ctx.copy_(start)


def rosita_banks(text: torch.Tensor, label: int, own: torch.Tensor) -> tuple[list, list]:
    """Known bank: one feature near the image's own class, one between it and another class
    (nearer to it in cosine but predicted as the other class), and features of other classes;
    unknown bank: features orthogonal to every class."""
    noise = lambda s: 0.05 * randn(text.shape[-1], seed=s)
    other = (label + 1) % len(text)
    known = [own + noise(20), 0.55 * text[other] + 0.45 * own] + [
        text[(label + k) % len(text)] + noise(20 + k) for k in (2, 3, 4)
    ]
    basis = torch.linalg.qr(text.t()).Q
    unknown = []
    for s in range(6):
        u = randn(text.shape[-1], seed=30 + s)
        unknown.append(u - basis @ (basis.t() @ u))
    return [k[None] for k in known], [u[None] for u in unknown]


def d_rosita(raw: torch.Tensor, text: torch.Tensor, adapter, known: bool) -> torch.Tensor:
    """d/draw of ROSITA's step loss: ``CE(cos_0, y) + CE(cos_1, y) + alpha C`` for a confident known
    image, ``alpha C`` (unknown bank as positives, no label mask) for a confident unknown one."""
    hp = adapter.hp
    f = F.normalize(raw, dim=-1)
    cos = f @ text.t()
    label = int(cos[0].argmax())
    d_f = torch.zeros_like(f)
    if known:
        d_f = d_f + d_cross_entropy(cos, torch.tensor([label, label])) @ text
        pos, neg, lab = adapter.known_bank, adapter.unknown_bank, label
    else:
        pos, neg, lab = adapter.unknown_bank, adapter.known_bank, None
    d_c, mask = d_contrastive(f[0], torch.cat(pos), torch.cat(neg), lab, text, hp["k_p"], hp["k_n"])
    if known:
        assert 0 < mask.sum() < hp["k_p"], "the case must mask some positives and keep others"
    d_f[0] += hp["alpha"] * d_c
    return normalize_vjp(raw, d_f)


@pytest.mark.parametrize("known", [True, False])
def test_rosita_step_loss(known, monkeypatch):
    """The loss of ``adapt_one`` with respect to the image's two features, by hand."""
    adapter = build("rosita", k_p=3, k_n=4)
    text = F.normalize(randn(K, 32, seed=18), dim=-1)
    label = 2
    if known:  # nearly the class text: score about 0.99, above the history's upper mean
        raw0 = text[label] + 0.05 * randn(32, seed=19)
    else:  # orthogonal to every class but a little of one: score about 0.05, below the lower mean
        basis = torch.linalg.qr(text.t()).Q
        u = randn(32, seed=19)
        raw0 = 3 * F.normalize(u - basis @ (basis.t() @ u), dim=-1) + 0.15 * text[label]
    raw = torch.stack([raw0, raw0 + 0.3 * randn(32, seed=21)]) * 2.0  # unnormalised, as encode gives
    adapter.scores = [0.2 + 0.01 * i for i in range(10)] + [0.6 + 0.01 * i for i in range(10)]
    adapter.known_bank, adapter.unknown_bank = rosita_banks(text, label, F.normalize(raw0, dim=-1))
    losses = []
    monkeypatch.setattr(adapter, "step", losses.append)
    adapter._chunk_losses = []  # what stream_step sets before calling adapt_one
    leaf = raw.clone().requires_grad_(True)
    adapter.adapt_one(leaf, text)
    assert len(losses) == 1, "the case must give a loss"
    got = torch.autograd.grad(losses[0], leaf)[0]
    assert rel_err(got, d_rosita(raw, text, adapter, known)) < CLOSED_TOL


def test_rosita_stream_step_gradient_reaches_the_norms(monkeypatch):
    """Through ``stream_step`` on the tiny model: the norms' gradient is ``J^T g`` of the encoder
    with ``g`` the hand-derived gradient at the two views' features (an unknown-branch step)."""
    adapter = build("rosita", k_p=3, k_n=4)
    model = adapter.model
    img, aug = images(1, model.image_size, seed=5), images(1, model.image_size, seed=6)
    text = model.text_features()
    with torch.no_grad():
        s = (F.normalize(adapter.encode(img), dim=-1) @ text.t()).max().item()
    assert -0.4 < s < 0.4
    adapter.scores = [s + 0.1 + 0.005 * i for i in range(8)] + [s + 0.5 + 0.005 * i for i in range(8)]
    dim = text.shape[-1]
    adapter.known_bank = [randn(1, dim, seed=40 + i) for i in range(5)]
    adapter.unknown_bank = [randn(1, dim, seed=50 + i) for i in range(5)]
    losses = []
    monkeypatch.setattr(adapter, "step", losses.append)
    adapter.stream_step({"images": img, "images_aug": aug})
    assert len(losses) == 1, "the case must give a loss"
    params = adapter.trainable_parameters()
    raw = adapter.encode(torch.cat([img, aug]))
    closed = d_rosita(raw.detach(), text, adapter, known=False)
    assert max(chain_errors(losses[0], [raw], [closed], params)) < CLOSED_TOL
