"""TPT, TDA, UniEnt and ROSITA on tiny random models: what trains, what is reset, what is bounded,
and each rule against hand-computed values on fixed tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CLASSNAMES, make_classifier, make_data

from benchmark.adapt.known_split import gmm2_posteriors, grid_otsu
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.adapt.views import confident_views, marginal_entropy
from benchmark.registry import get_method
from methods.tda import ClassCache, cache_logits

K = len(CLASSNAMES)


def stream(adapter, data: UnlabeledData) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the adapter over the whole stream in order: (indices, logits)."""
    out = list(adapter.stream(data))
    return torch.cat([i for i, _ in out]), torch.cat([o[0] if isinstance(o, tuple) else o for _, o in out])


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


# ---- TPT -----------------------------------------------------------------------------------------


def test_marginal_entropy_and_confident_views_by_hand():
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    logits = p.log()
    expected = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))  # entropy of the mean probability
    assert marginal_entropy(logits).item() == pytest.approx(expected, rel=1e-6)
    z = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [2.0, 0.0], [9.0, 0.0]]])  # entropies: high, low, mid, lowest
    assert confident_views(z, 0.5).tolist() == [[3, 1]]
    assert confident_views(z, 0.1).tolist() == [[3]]  # at least one view


def test_tpt_trains_only_the_context_and_leaves_the_model_as_it_found_it():
    model = make_classifier("vit")
    tpt = get_method("tpt")(model, {"views": 8, "batch_size": 3}, seed=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt.ctx"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = full_data(model, 7)
    zero = torch.cat([model(b["images"]).detach() for b in data.batches(7)])
    idx, logits = stream(tpt, data)
    assert idx.tolist() == list(range(7))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.allclose(logits, zero, atol=1e-4)  # each image's tuned prompt moved its logits
    assert tpt.history and all(math.isfinite(h["loss"]) for h in tpt.history)


def test_tpt_episodes_are_independent_of_how_images_are_batched():
    model = make_classifier("vit")
    data = full_data(model, 5)
    one = stream(get_method("tpt")(make_classifier("vit"), {"views": 8, "batch_size": 1}, seed=0), data)[1]
    many = stream(get_method("tpt")(model, {"views": 8, "batch_size": 5}, seed=0), data)[1]
    assert torch.allclose(one, many, atol=1e-4)


def test_tpt_single_image_reference_step():
    """One image, 4 views: the tuned prediction equals a by-hand AdamW step on the shared context,
    with the training logits scaled by the checkpoint's ``logit_scale.exp()`` (TPT's
    custom_clip.py:284, 317; 1/0.07 for this random model) and the prediction reported as ``100 cos``."""
    model = make_classifier("vit")
    tpt = get_method("tpt")(model, {"views": 4, "batch_size": 1, "selection": 0.5}, seed=0)
    scale = model.clip.logit_scale.exp().item()
    assert tpt.train_logit_scale == pytest.approx(scale) and scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert tpt.describe()["logit_scale"] == {"rule": "checkpoint", "value": round(scale, 4)}
    data = full_data(model, 1)
    batch = next(data.batches(1, views=tpt.stream_views()))
    feats = tpt.view_features(batch)
    ctx = model.prompt.ctx.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([ctx], lr=5e-3, weight_decay=0.01)
    logits = scale * feats[0] @ model.text_features_for(ctx.unsqueeze(0))[0].t()
    keep = confident_views(logits.unsqueeze(0).detach(), 0.5)[0]
    marginal_entropy(logits[keep].unsqueeze(0)).sum().backward()
    opt.step()
    expected = 100 * feats[0, 0] @ model.text_features_for(ctx.detach().unsqueeze(0))[0].t()
    got = tpt.stream_step(batch)
    assert torch.allclose(got[0], expected, atol=1e-4)


# ---- TDA -----------------------------------------------------------------------------------------


def test_cache_logits_and_replacement_by_hand():
    f = torch.tensor([1.0, 0.0])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.eye(2)
    got = cache_logits(f, keys, values, alpha=2.0, beta=5.0)
    assert got.tolist() == pytest.approx([2.0, 2.0 * math.exp(-5.0)])
    cache = ClassCache(2)
    for h in (0.5, 0.3, 0.4, 0.9):
        cache.offer(1, torch.tensor([h, 0.0]), h)
    assert [e[1] for e in cache.entries[1]] == [0.3, 0.4]  # lowest entropy kept, sorted
    cache.offer(0, torch.tensor([0.0, 1.0]), 0.7)
    keys, values = cache.keys_values(3)
    assert keys[:, 0].tolist() == pytest.approx([0.0, 0.3, 0.4]) and values.argmax(1).tolist() == [0, 1, 1]
    neg = ClassCache(1)
    neg.offer(2, torch.zeros(2), 0.1, torch.tensor([0.02, 0.5, 0.48]))
    assert neg.keys_values(3, (0.03, 1.0))[1].tolist() == [[0.0, 1.0, 1.0]]


def test_tda_trains_nothing_bounds_its_caches_and_adds_their_logits():
    model = make_classifier("vit")
    tda = get_method("tda")(model, {"pos_shot_capacity": 2, "neg_shot_capacity": 1, "batch_size": 5}, seed=0)
    assert not tda.trainable_parameters() and not any(p.requires_grad for p in model.parameters())
    data = make_data(model, 24)
    zero = torch.cat([model(b["images"]).detach() for b in data.batches(24)])
    _, logits = stream(tda, data)
    assert all(len(v) <= 2 for v in tda.positive.entries.values()) and len(tda.positive) <= 2 * K
    assert all(len(v) <= 1 for v in tda.negative.entries.values())
    assert len(tda.positive) > 0
    assert not torch.allclose(logits, zero)
    assert torch.equal(logits.argmax(-1)[:1], zero.argmax(-1)[:1])  # the first image sees only itself
    assert {"positive_cache", "negative_cache"} <= set(tda.history[-1])


def test_tda_negative_cache_entry_uses_entropy_over_log2_k():
    model = make_classifier("vit")
    tda = get_method("tda")(model, {"neg_entropy_lower": 0.0, "neg_entropy_upper": 1e-9}, seed=0)
    stream(tda, make_data(model, 6))
    assert len(tda.negative) == 0  # nothing passes an empty window
    tda = get_method("tda")(
        make_classifier("vit"),
        {"neg_entropy_lower": 0.0, "neg_entropy_upper": math.log(K) / math.log2(K) + 1e-6},
        seed=0,
    )
    stream(tda, make_data(model, 6))
    assert len(tda.negative) > 0  # every entropy is below ln K, so H / log2 K < ln K / log2 K


# ---- UniEnt --------------------------------------------------------------------------------------


def test_gmm_posteriors_split_two_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.1, 0.02, 40), rng.normal(0.8, 0.05, 20)])
    post, means = gmm2_posteriors(x)
    assert means[0] < 0.2 < 0.7 < means[1]
    assert (post[:40, 0] > 0.99).all() and (post[40:, 1] > 0.99).all()
    assert np.allclose(post.sum(1), 1)
    post, _ = gmm2_posteriors(np.full(5, 0.3))
    assert (post[:, 0] == 1).all()


# Posteriors of component 0 from scikit-learn 1.9.1 ``GaussianMixture(n_components=2, random_state=0)
# .fit(x).predict_proba(x)`` (columns ordered by mean), computed offline: sklearn is not a dependency.
SKLEARN_X = [
    0.4633,
    0.0955,
    0.3334,
    0.2546,
    0.2638,
    0.2828,
    0.1384,
    0.2814,
    0.2308,
    0.5658,
    0.3181,
    0.2718,
    0.2775,
    0.2466,
    0.2156,
    0.2687,
    0.3386,
    0.2809,
    0.3766,
    0.284,
    0.5524,
    0.7046,
    0.6045,
    0.4995,
    0.5317,
    0.6041,
    0.7435,
    0.523,
    0.5256,
    0.6502,
    0.4614,
    0.5208,
]
SKLEARN_P0 = [
    0.02926745,
    0.99999347,
    0.97086832,
    0.99902308,
    0.99858981,
    0.99691054,
    0.99998038,
    0.99708747,
    0.99960702,
    3.608e-05,
    0.98551443,
    0.99804638,
    0.99752628,
    0.99928519,
    0.99977372,
    0.99827947,
    0.96297574,
    0.99714804,
    0.79644418,
    0.99674987,
    9.232e-05,
    0.0,
    2.16e-06,
    0.00315053,
    0.00038034,
    2.23e-06,
    0.0,
    0.00068064,
    0.00057245,
    6e-08,
    0.03270939,
    0.00078758,
]


def test_gmm_posteriors_match_sklearn_on_overlapping_clusters():
    """Overlapping clusters, where the final E-step matters: same means and posteriors as sklearn."""
    post, means = gmm2_posteriors(np.array(SKLEARN_X))
    assert np.allclose(means, [0.26363443, 0.56403852], atol=1e-7)
    assert np.abs(post[:, 0] - np.array(SKLEARN_P0)).max() < 1e-6


def test_unient_loss_by_hand_and_trainable_norms(monkeypatch):
    model = make_classifier("vit")
    unient = get_method("unient")(model, {}, seed=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".ln_" in n or "ln_pre" in n or "ln_post" in n for n in names)
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    weights = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    monkeypatch.setattr(model, "forward", lambda images: logits)
    monkeypatch.setattr(unient, "known_weights", lambda images: weights)
    h = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    p = logits.softmax(-1).mean(0)
    expected = (h * weights[:, 0]).mean() - 0.5 * (h * weights[:, 1]).mean() + 0.5 * (p * p.log()).sum()
    loss, _ = unient.forward_loss(torch.zeros(2, 3, 32, 32))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_unient_split_reads_scores_of_the_frozen_model_only():
    model = make_classifier("vit")
    unient = get_method("unient")(model, {"split": "hard"}, seed=0)
    images = make_data(model, 8).images.float() / 255
    w = unient.known_weights(images)
    assert w.shape == (8, 2) and set(w.sum(1).tolist()) == {1.0} and set(w.flatten().tolist()) <= {0.0, 1.0}
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.5)  # the adapted encoder moves; the source copy does not
    assert torch.equal(unient.known_weights(images), w)


# ---- ROSITA --------------------------------------------------------------------------------------


def test_grid_otsu_by_hand():
    threshold, mu0, mu1 = grid_otsu([0.10, 0.12, 0.50, 0.52])
    assert threshold == pytest.approx(0.13) and mu0 == pytest.approx(0.11) and mu1 == pytest.approx(0.51)
    assert grid_otsu([0.3]) == (0.0, 0.0, 1.0)  # no split: ROSITA's fallback statistics


def test_rosita_contrastive_term_by_hand():
    model = make_classifier("vit")
    rosita = get_method("rosita")(model, {"k_p": 1, "k_n": 2}, seed=0)
    f = torch.tensor([1.0, 0.0])
    pos = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    neg = [torch.tensor([[0.6, 0.8]]), torch.tensor([[-1.0, 0.0]]), torch.tensor([[0.0, -1.0]])]
    got = rosita.contrastive(f, pos, neg, None, torch.eye(2))
    assert got.item() == pytest.approx(-1.0 + math.log(math.exp(0.6) + math.exp(0.0)))
    assert rosita.contrastive(f, pos, neg, 1, torch.eye(2)).item() == 0.0  # the positive is predicted as class 0


def test_rosita_adapts_norms_continually_with_bounded_banks():
    model = make_classifier("vit")
    rosita = get_method("rosita")(model, {"k_p": 1, "bank_unknown": 3}, seed=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".ln_" in n or "ln_pre" in n or "ln_post" in n for n in names)
    out = list(rosita.stream(full_data(model, 30)))
    assert len(rosita.scores) == 30 and len(rosita.unknown_bank) <= 3 and len(rosita.known_bank) <= K
    _, (logits, extra) = out[-1]
    assert (
        logits.shape == (30, K) and set(extra) == {"pre_update_max_cos"} and extra["pre_update_max_cos"].shape == (30,)
    )
    with pytest.raises(ValueError, match="rosita.batch_size must be 1"):
        get_method("rosita")(make_classifier("vit"), {"batch_size": 2})


def test_rosita_predicts_each_image_after_its_own_update_however_images_are_chunked(monkeypatch):
    import methods.rosita

    runs = []
    for chunk in (1, 7):
        monkeypatch.setattr(methods.rosita, "STREAM_CHUNK", chunk)
        model = make_classifier("vit")
        rosita = get_method("rosita")(model, {"k_p": 1, "bank_unknown": 3, "lr": 0.05}, seed=0)
        out = list(rosita.stream(full_data(model, 20)))
        runs.append(
            (
                torch.cat([o[0] for _, o in out]),
                torch.cat([o[1]["pre_update_max_cos"] for _, o in out]),
                {k: v.clone() for k, v in model.state_dict().items()},
            )
        )
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-4) and torch.allclose(runs[0][1], runs[1][1], atol=1e-6)
    assert all(torch.allclose(v, runs[1][2][k], atol=1e-5) for k, v in runs[0][2].items())


def test_tpt_loss_scaling_skips_only_the_overflowing_image():
    """TPT's fp16 step (a loss scale kept along the stream): an image whose gradient overflows keeps
    its context and halves the scale; the others step."""
    tpt = get_method("tpt")(make_classifier("vit"), {}, seed=0)
    ctx = [torch.zeros(3, 4, requires_grad=True) for _ in range(2)]
    optimizer = torch.optim.AdamW(ctx, lr=0.1)
    loss = torch.stack([(ctx[0] * 1e38).sum(), ctx[1].sum()])
    stepped = tpt.loss_scale.step(loss, ctx, optimizer)
    assert stepped.tolist() == [False, True]
    assert torch.equal(ctx[0], torch.zeros(3, 4)) and not torch.equal(ctx[1], torch.zeros(3, 4))
    assert tpt.loss_scale.scale == 500.0 and tpt.loss_scale.finite_images == 0


def test_tpt_overflowing_image_leaves_its_adamw_state_untouched():
    """``scaler.step`` skips ``optimizer.step()`` for an overflowing image (tpt_classification.py:79):
    no moment, step-count or weight-decay update. Its next step is then AdamW's first step, while the
    image that stepped takes its second."""
    tpt = get_method("tpt")(make_classifier("vit"), {}, seed=0)
    ctx = [torch.ones(3, 4, requires_grad=True) for _ in range(2)]
    optimizer = torch.optim.AdamW(ctx, lr=0.1, weight_decay=0.01)
    tpt.loss_scale.step(torch.stack([(ctx[0] * 1e38).sum(), ctx[1].sum()]), ctx, optimizer)
    assert ctx[0] not in optimizer.state and int(optimizer.state[ctx[1]]["step"]) == 1
    assert torch.equal(ctx[0].detach(), torch.ones(3, 4))
    optimizer.zero_grad(set_to_none=True)
    tpt.loss_scale.step(torch.stack([(2 * ctx[0]).sum(), ctx[1].sum()]), ctx, optimizer)
    assert int(optimizer.state[ctx[0]]["step"]) == 1 and int(optimizer.state[ctx[1]]["step"]) == 2
    fresh = torch.ones(3, 4, requires_grad=True)  # what the official code does with that image's second step
    reference = torch.optim.AdamW([fresh], lr=0.1, weight_decay=0.01)
    (2 * fresh).sum().backward()
    reference.step()
    assert torch.allclose(ctx[0].detach(), fresh.detach(), atol=1e-7)


def test_tpt_two_steps_after_an_overflow_equal_one_clean_step():
    """With ``steps=2`` an image whose first step overflows ends where one clean step takes it (the old
    zero-gradient step advanced AdamW's step count and shrank the second update to 0.74 lr)."""
    model = make_classifier("vit")
    data = full_data(model, 2)
    tpt = get_method("tpt")(model, {"views": 4, "selection": 0.5, "steps": 2}, seed=0)
    tpt.scaler = True  # route through the fp16 loss-scaled step on CPU
    calls = []

    def overflow_first_image_once(text):
        calls.append(1)
        factor = torch.tensor([1e38 if len(calls) == 1 else 0.0, 0.0])
        return factor * text[:, 0, 0]

    tpt.regulariser = overflow_first_image_once
    batch = next(data.batches(2, views=tpt.stream_views()))
    feats = tpt.view_features(batch)
    two = tpt.tune(feats)
    assert len(calls) == 2 and tpt.loss_scale.scale == 500.0
    one = get_method("tpt")(make_classifier("vit"), {"views": 4, "selection": 0.5, "steps": 1}, seed=0).tune(feats)
    assert torch.allclose(two[0], one[0], atol=1e-6)
    assert not torch.allclose(two[1], one[1], atol=1e-6)  # the other image took two steps
