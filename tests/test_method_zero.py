"""ZERO: the vote against hand-computed cases and a transcription of the official arithmetic; training-free; a stream run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_classifier, make_data

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.registry import get_method
from methods.zero import zero_votes


def official_zero(
    l: torch.Tensor, gamma: float, official_fallback: bool = True, logit_scale: float = 100.0
) -> torch.Tensor:
    """FarinaMatteo/zero @ c609f7c, ``ttas/zero.py:75-98`` with ``ttas/base.py:56-62`` and
    ``utils/tools.py:205-218``, re-typed for one image's (V, K) cosines ``l`` (the ``eps`` of
    their type). ``official_fallback``: its tie-break fallback as written (``logit[~ties]``);
    else the fallback as meant (mask the untied classes), which is ours."""
    p = (l.float() * logit_scale).softmax(1)  # l / temp, temp = 1 / logit_scale.exp()
    entropy = -(p * p.log()).sum(1)
    sorted_idx = torch.argsort(entropy, descending=False)
    l_filt = l[sorted_idx[: int(entropy.size(0) * gamma)]]
    p_bar = (l_filt / torch.finfo(l_filt.dtype).eps).float().softmax(1).sum(0)
    max_counts, pred = torch.max(p_bar, dim=-1)
    ties = [pred] + [i for i in range(len(p_bar)) if i != pred and p_bar[i] == max_counts]
    if len(ties) > 1:
        k = int(l.size(0) * gamma)
        rest = l[sorted_idx][k:]
        ties_t = torch.tensor(ties, dtype=torch.int)
        pred = None
        for view_pred in torch.argmax(rest, dim=1):
            if view_pred in ties_t:
                pred = view_pred
                break
        if pred is None:
            logit = rest[0].clone()
            if official_fallback:
                logit[~ties_t] = -torch.inf
            else:
                untied = torch.ones(len(logit), dtype=torch.bool)
                untied[ties_t.long()] = False
                logit[untied] = -torch.inf
            pred = torch.argmax(logit)
        p_bar[pred] += 1
    return p_bar


def cosines(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).unsqueeze(0)


def test_votes_by_hand_majority_of_the_confident_views():
    # 5 views, gamma 0.6 -> the 3 most confident vote; view 4 (the least confident) is left out
    cos = cosines([[0.30, 0.20, 0.10], [0.35, 0.10, 0.10], [0.10, 0.32, 0.10], [0.40, 0.05, 0.05], [0.20, 0.21, 0.20]])
    votes = zero_votes(cos, 0.6, "argmax")
    assert votes.tolist() == [[2.0, 1.0, 0.0]]  # views 3, 1 (class 0) and 2 (class 1): no tie
    assert torch.allclose(zero_votes(cos, 0.6, "eps"), votes)  # float32's eps: in effect an argmax


def test_ties_go_to_the_first_remaining_view_that_names_a_tied_class():
    # 4 views, gamma 0.5: the confident two disagree (classes 0 and 1); the remaining views in
    # ascending entropy name class 2 (untied), then class 1 -> class 1 wins with one more vote.
    cos = cosines([[0.40, 0.00, 0.00], [0.00, 0.39, 0.00], [0.00, 0.06, 0.05], [0.10, 0.00, 0.15]])
    assert zero_votes(cos, 0.5, "argmax").tolist() == [[1.0, 2.0, 0.0]]
    # no remaining view names a tied class: the tied class with the largest cosine in the first remaining one
    cos = cosines([[0.40, 0.00, 0.00], [0.00, 0.39, 0.00], [0.02, 0.01, 0.30], [0.00, 0.00, 0.05]])
    assert zero_votes(cos, 0.5, "argmax").tolist() == [[2.0, 1.0, 0.0]]


def test_official_arithmetic_with_fp16_fractional_votes_and_float32():
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float16, torch.float32):
        for _ in range(20):
            base = torch.rand(1, 5, generator=g) * 0.3
            l = (base + 0.004 * torch.randn(10, 5, generator=g)).to(dtype)  # near ties: fp16 votes split
            for scale in (100.0, 76.4):
                ours = zero_votes(l.unsqueeze(0), 0.3, "eps", scale)[0]
                assert torch.allclose(ours, official_zero(l, 0.3, False, scale), atol=1e-6)
    half = (torch.tensor([[0.3000, 0.2995, 0.1]] * 4)).half()  # 0.0005 apart: 1024 x 0.0005 = 0.5 logits
    votes = zero_votes(half.unsqueeze(0), 0.5, "eps")[0]
    assert 0.5 < votes[0] < 2 and votes[1] > 0.5  # fractional, not whole votes
    assert zero_votes(half.unsqueeze(0), 0.5, "argmax")[0].tolist() == [2.0, 0.0, 0.0]


def test_the_official_fallback_can_give_the_vote_to_an_untied_class_and_ours_cannot():
    # ties {0, 1}; neither remaining view names 0 or 1; the official mask ~[0, 1] = [-1, -2] blanks
    # classes 4 and 3 (indexing from the end), so the extra vote goes to the untied class 2.
    l = torch.tensor(
        [
            [0.50, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.49, 0.0, 0.0, 0.0],
            [0.0, 0.10, 0.15, 0.30, 0.20],
            [0.0, 0.0, 0.01, 0.0, 0.0],
        ]
    )
    assert official_zero(l, 0.5).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert zero_votes(l.unsqueeze(0), 0.5, "argmax")[0].tolist() == [1.0, 2.0, 0.0, 0.0, 0.0]
    assert torch.equal(zero_votes(l.unsqueeze(0), 0.5, "eps")[0], official_zero(l, 0.5, official_fallback=False))


def full_data(model, n: int) -> UnlabeledData:
    data = make_data(model, n)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, full=data.images, sizes=np.full((n, 2), r))


def test_zero_trains_nothing_and_predicts_vote_fractions_on_clip_scale():
    model = make_classifier("vit")
    zero = get_method("zero")(model, {"views": 8, "batch_size": 3}, seed=0)
    assert not zero.trainable_parameters() and not any(p.requires_grad for p in model.parameters())
    assert zero.regime == "episodic" and zero.needs_full
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = full_data(model, 7)
    out = [(i, o) for i, o in zero.stream(data)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    logits = torch.cat([o for _, o in out])
    assert torch.cat([i for i, _ in out]).tolist() == list(range(7)) and logits.shape == (7, 5)
    k = int(8 * 0.3)
    counts = logits * k / 100
    total = counts.sum(1)
    assert (((total - k).abs() < 1e-4) | ((total - k - 1).abs() < 1e-4)).all()  # k votes, + 1 after a tie
    assert zero.describe()["views"]["test_views"]["kind"] == "rrc"
    # the same views as TPT: view 0 is the test view
    batch = next(data.batches(7, views=zero.stream_views()))
    feats = zero.model.image_features(batch["images"])
    from benchmark.adapt.views import view_features

    assert torch.allclose(view_features(model, batch, 8, zero.view_augment(), 0)[:, 0], feats, atol=1e-5)


def test_zero_rejects_bad_settings():
    with pytest.raises(ValueError):
        get_method("zero")(make_classifier("vit"), {"gamma": 0.0})


def test_zero_records_vote_agreement_along_the_stream():
    model = make_classifier("vit")
    zero = get_method("zero")(model, {"views": 8, "batch_size": 4}, seed=0)
    list(zero.stream(full_data(model, 8)))
    stats = zero.stream_stats()
    assert 0 < stats["vote_agreement"] <= 1 and 0 <= stats["tied"] <= 1
    assert zero.history and "vote_agreement" in zero.history[-1]
