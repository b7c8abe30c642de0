"""C-TPT: the dispersion term by hand and against a transcription of the official arithmetic, one
reference step, reduction to TPT at lambda 0, episodic reset, and a run on the embedded model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_classifier, make_data

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.adapt.views import confident_views
from benchmark.data import load_split
from benchmark.model.clip import ClipClassifier, load_clip
from benchmark.registry import get_method
from methods.ctpt import text_feature_dispersion


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


def stream(adapter, data: UnlabeledData) -> torch.Tensor:
    return torch.cat([o for _, o in adapter.stream(data)])


def official_atfd(text_features: torch.Tensor) -> torch.Tensor:
    """C-TPT clip/custom_clip.py:321-324 on one image's (K, D) features, transcribed."""
    prompt_mean = text_features.mean(0)
    feature_distance = text_features - prompt_mean
    l2_norm = torch.linalg.norm(feature_distance, dim=-1)
    return l2_norm.mean()


def official_avg_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """TPT / C-TPT ``avg_entropy`` (tpt_classification.py:105-110), transcribed."""
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def test_dispersion_by_hand_and_as_the_official_code():
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # centroid (0.5, 0.5): each at sqrt(0.5)
    assert text_feature_dispersion(two).item() == pytest.approx(math.sqrt(0.5))
    three = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # centroid (1/3, 0): 2/3, 2/3, 4/3
    assert text_feature_dispersion(three).item() == pytest.approx(8 / 9)
    assert text_feature_dispersion(torch.ones(4, 3)).item() == 0.0
    g = torch.Generator().manual_seed(0)
    batch = torch.nn.functional.normalize(torch.randn(3, 7, 16, generator=g), dim=-1)
    got = text_feature_dispersion(batch)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.stack([official_atfd(t) for t in batch]), atol=1e-6)


def test_ctpt_defaults_are_the_distribution_shift_script():
    hp = get_method("ctpt").resolve_hparams({})
    assert hp["lam"] == 20.0 and hp["augmix"] is True  # test_tpt_ctpt_ds.sh:10, 14 (--I_augmix)
    assert (hp["views"], hp["selection"], hp["steps"], hp["lr"], hp["weight_decay"]) == (64, 0.1, 1, 5e-3, 0.01)
    assert (hp["n_ctx"], hp["ctx_init"]) == (4, "a photo of a") and hp["regime"] == "episodic"
    cls = get_method("ctpt")
    assert cls.official_precision == "fp16" and cls.logit_scale_rule == "checkpoint"


def test_ctpt_single_image_reference_step():
    """One image, 4 views: the prediction equals a by-hand AdamW step on ``avg_entropy - lam * ATFD``
    with logits ``logit_scale.exp() * cos`` (custom_clip.py:334) and the official formulas."""
    model = make_classifier("vit")
    lam = 5.0
    ctpt = get_method("ctpt")(model, {"views": 4, "batch_size": 1, "selection": 0.5, "lam": lam}, seed=0)
    scale = model.clip.logit_scale.exp().item()
    data = full_data(model, 1)
    batch = next(data.batches(1, views=ctpt.stream_views()))
    feats = ctpt.view_features(batch)
    ctx = model.prompt.ctx.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([ctx], lr=5e-3, weight_decay=0.01)
    text = model.text_features_for(ctx.unsqueeze(0))[0]
    logits = scale * feats[0] @ text.t()
    keep = confident_views(logits.unsqueeze(0).detach(), 0.5)[0]
    loss = official_avg_entropy(logits[keep]) - lam * official_atfd(text)
    loss.backward()
    opt.step()
    expected = 100 * feats[0, 0] @ model.text_features_for(ctx.detach().unsqueeze(0))[0].t()
    got = ctpt.stream_step(batch)
    assert torch.allclose(got[0], expected, atol=1e-4)


def test_ctpt_at_lambda_zero_is_tpt_and_the_term_moves_the_prediction():
    data = full_data(make_classifier("vit"), 4)
    hp = {"views": 6, "batch_size": 2, "augmix": False}
    tpt = stream(get_method("tpt")(make_classifier("vit"), {"views": 6, "batch_size": 2}, seed=0), data)
    zero = stream(get_method("ctpt")(make_classifier("vit"), {**hp, "lam": 0.0}, seed=0), data)
    assert torch.allclose(tpt, zero, atol=1e-5)
    twenty = stream(get_method("ctpt")(make_classifier("vit"), hp, seed=0), data)
    assert not torch.allclose(twenty, zero, atol=1e-3)


def test_ctpt_trains_only_the_context_and_restores_the_model():
    model = make_classifier("vit")
    ctpt = get_method("ctpt")(model, {"views": 4, "batch_size": 3}, seed=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt.ctx"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = full_data(model, 5)
    one = stream(ctpt, data)
    assert one.shape == (5, model.num_classes) and torch.isfinite(one).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = stream(ctpt, data)  # episodic: nothing carried over, the same views give the same result
    assert torch.allclose(one, again, atol=1e-5)
    assert ctpt.history and all(math.isfinite(h["loss"]) for h in ctpt.history)


def test_ctpt_on_the_embedded_model():
    """The shipped tiny CLIP on 24 test images of the embedded ``sketch`` domain: the checkpoint's
    logit scale (76.4) is the one used, predictions are finite and differ from zero-shot's."""
    loaded = load_clip("clipbench-tiny", "embedded")
    split = load_split("synthetic", "sketch", "oda", resolution=loaded.image_size, full=True, render_seed=1)
    rows = torch.arange(24) * (len(split.test.images) // 24)
    data = UnlabeledData(
        split.test.images[rows], full=split.test.full[rows], sizes=np.asarray(split.test.sizes)[rows.numpy()], seed=1
    )
    model = ClipClassifier(loaded, split.classnames)
    adapter = get_method("ctpt")(model, {"views": 8, "batch_size": 8}, seed=1)
    assert adapter.describe()["logit_scale"] == {"rule": "checkpoint", "value": pytest.approx(76.3965, abs=1e-3)}
    assert adapter.describe()["views"]["images"]["kind"] == "augmix"
    logits = stream(adapter, data)
    zero = torch.cat(
        [
            ClipClassifier(load_clip("clipbench-tiny", "embedded"), split.classnames)(b["images"])
            for b in data.batches(24)
        ]
    )
    assert logits.shape == (24, len(split.classnames)) and torch.isfinite(logits).all()
    assert not torch.allclose(logits, zero, atol=1e-3)
    assert (logits.argmax(1) == zero.argmax(1)).float().mean() > 0.5  # one small step: mostly the same answers
