"""MTA: the solver against a transcription of the official arithmetic and hand cases; training-free; a stream run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_classifier, make_data

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.registry import get_method
from methods.mta import mta_modes


def official_mta(
    x: torch.Tensor, text: torch.Tensor, lambda_y: float = 0.2, lambda_q: float = 4, logit_scale: float = 100.0
) -> torch.Tensor:
    """MaxZanella/MTA @ cafafdf ``mta.py:4-87`` re-typed for one image's (N, D) features: its logits."""
    logits = x @ text.t() * logit_scale
    n = x.shape[0]
    dist = torch.cdist(x, x)
    sorted_dist, _ = torch.sort(dist, dim=1)
    k = int(0.3 * (n - 1))
    bandwidth = torch.sqrt(0.5 * torch.mean(sorted_dist[:, 1 : k + 1] ** 2, dim=1))
    affinity = logits.softmax(1) @ logits.softmax(1).t()

    def kernel(mu):
        return torch.exp(-(torch.norm(x - mu, dim=-1, p=2) ** 2) / (2 * bandwidth**2))

    y = torch.ones(n) / n
    mode = x[0]
    for _ in range(5):
        density = kernel(mode)
        for i in range(1, 6):
            old_y = y
            y = F.softmax(1 / lambda_y * (density + lambda_q * torch.sum(affinity * y.unsqueeze(0), dim=1)), dim=-1)
            if torch.norm(old_y - y) < 1e-6 or i >= 5:
                break
        for i in range(1, 6):
            old_mode = mode
            weighted = kernel(mode) * y
            mode = torch.sum(weighted.unsqueeze(1) * x, dim=0) / torch.sum(weighted)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(old_mode - mode) < 1e-6 or i >= 5:
                break
    return mode.unsqueeze(0) @ text.t() * logit_scale


def random_views(b: int, v: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(b, 1, d, generator=g)
    return F.normalize(centre + 0.6 * torch.randn(b, v, d, generator=g), dim=-1)


def test_solver_equals_the_official_arithmetic_image_by_image():
    text = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    for v in (8, 64):
        x = random_views(3, v, 16, seed=v)
        mode, y = mta_modes(x, 100 * x @ text.t(), 0.2, 4.0)
        for i in range(3):
            assert torch.allclose(100 * mode[i] @ text.t(), official_mta(x[i], text)[0], atol=1e-4)
        assert torch.allclose(y.sum(1), torch.ones(3), atol=1e-6)


def test_batching_changes_nothing():
    text = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    x = random_views(5, 8, 8, seed=3)
    together, _ = mta_modes(x, 100 * x @ text.t(), 0.2, 4.0)
    alone = torch.cat([mta_modes(x[i : i + 1], 100 * x[i : i + 1] @ text.t(), 0.2, 4.0)[0] for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_symmetric_views_keep_the_mode_on_the_axis_by_hand():
    # original on the axis, two symmetric pairs around it: every weight of a pair is equal, so the
    # weighted mean (normalised) stays on the axis whatever the scores.
    a, b = math.radians(20), math.radians(40)
    pts = torch.tensor(
        [
            [1.0, 0.0],
            [math.cos(a), math.sin(a)],
            [math.cos(a), -math.sin(a)],
            [math.cos(b), math.sin(b)],
            [math.cos(b), -math.sin(b)],
        ]
    )
    text = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # symmetric too, so a pair has the same logits
    mode, y = mta_modes(pts.unsqueeze(0), 100 * pts.unsqueeze(0) @ text.t(), 0.2, 4.0)
    assert torch.allclose(mode[0], torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(y[0, 1], y[0, 2]) and torch.allclose(y[0, 3], y[0, 4])
    assert y[0, 0] > y[0, 3]  # the central view is more of an inlier than the outer pair


def full_data(model, n: int) -> UnlabeledData:
    data = make_data(model, n)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, full=data.images, sizes=np.full((n, 2), r))


def test_mta_trains_nothing_and_predicts_the_mode_on_clip_scale():
    model = make_classifier("vit")
    mta = get_method("mta")(model, {"views": 8, "batch_size": 3}, seed=0)
    assert not mta.trainable_parameters() and not any(p.requires_grad for p in model.parameters())
    assert mta.regime == "episodic" and mta.needs_full
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = full_data(model, 5)
    out = list(mta.stream(data))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    logits = torch.cat([o for _, o in out])
    assert logits.shape == (5, 5) and torch.isfinite(logits).all() and logits.abs().max() <= 100 + 1e-4
    from benchmark.adapt.views import checkpoint_logit_scale, view_features

    batch = next(data.batches(5))
    feats = view_features(model, batch, 8, mta.view_augment(), 0)
    text = model.text_features()
    scale = checkpoint_logit_scale(model)  # 1 / 0.07 for the random tiny model; 100 for OpenAI's CLIP
    assert scale == pytest.approx(1 / 0.07, rel=1e-5)
    expected = torch.cat([official_mta(feats[i], text, logit_scale=scale) for i in range(5)])
    assert torch.allclose(logits / 100, expected / scale, atol=1e-6)


def test_mta_needs_five_views():
    with pytest.raises(ValueError):
        get_method("mta")(make_classifier("vit"), {"views": 4})


def test_mta_records_its_mode_shift_along_the_stream():
    model = make_classifier("vit")
    mta = get_method("mta")(model, {"views": 8, "batch_size": 4}, seed=0)
    list(mta.stream(full_data(model, 8)))
    stats = mta.stream_stats()
    assert 0 <= stats["mode_shift"] <= 2 and 1 / 8 <= stats["max_inlierness"] <= 1
    assert mta.history and "mode_shift" in mta.history[-1]
