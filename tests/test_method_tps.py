"""TPS: the shifted prototypes by hand, one reference step against a transcription of the official
arithmetic, shared views with TPT, episodic reset, and a run on the embedded model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_classifier, make_data

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.data import load_split
from benchmark.model.clip import IMAGENET_TEMPLATES, ClipClassifier, load_clip
from benchmark.registry import get_method


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


def stream(adapter, data: UnlabeledData) -> torch.Tensor:
    return torch.cat([o for _, o in adapter.stream(data)])


def official_logits(text_embeds, shift, image_features, logit_scale):
    """TPS ``TestTimeShiftTuning.forward`` (learnable_shift.py:227-247 with shifter.py:61-76), transcribed:
    normalise the cached prototypes, add the per-class shift, normalise, scale by ``logit_scale.exp()``."""
    text_features = F.normalize(text_embeds, dim=-1)
    text_features = text_features + shift
    text_features = F.normalize(text_features, dim=-1)
    return (logit_scale.exp() * text_features @ image_features.T).T


def official_select_and_entropy(logits, top):
    """TPS run_utils.py:16-27 (``select_confident_samples`` then ``avg_entropy``), transcribed."""
    batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(batch_entropy, descending=False, stable=True)[: int(batch_entropy.size()[0] * top)]
    out = logits[idx]
    out = out - out.logsumexp(dim=-1, keepdim=True)
    avg = out.logsumexp(dim=0) - np.log(out.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def test_tps_defaults_and_trainable_tensor():
    model = make_classifier("vit")
    tps = get_method("tps")(model, {}, seed=0)
    hp = tps.hp
    assert (hp["views"], hp["selection"], hp["steps"], hp["lr"], hp["weight_decay"]) == (64, 0.1, 1, 5e-3, 0.01)
    assert hp["augmix"] is False and hp["prompts"] == "single" and hp["regime"] == "episodic"
    assert tps.official_precision == "fp16" and tps.logit_scale_rule == "checkpoint"
    assert tps.shift.shape == (model.num_classes, model.text_features().shape[1])
    assert tps.shift.dtype == torch.float32 and not tps.shift.any()
    assert not any(p.requires_grad for p in model.parameters())  # only the shifts are tuned
    assert torch.allclose(tps.prototypes, model.text_features())


def test_tps_class_text_by_hand():
    model = make_classifier("vit")
    tps = get_method("tps")(model, {}, seed=0)
    tps.prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    shift = torch.tensor([[[0.0, 1.0], [0.0, -1.0]]])  # class 0 -> (1, 1)/sqrt 2; class 1 -> (0, 0): stays 0
    got = tps.class_text(shift)
    assert torch.allclose(got[0, 0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.equal(got[0, 1], torch.zeros(2))


def test_tps_single_image_reference_step():
    """One image, 8 views, 25% kept: the prediction equals a by-hand AdamW step on the (K, D) shifts
    through the official forward, at the checkpoint's logit scale (1/0.07 for this random model)."""
    model = make_classifier("vit")
    tps = get_method("tps")(model, {"views": 8, "batch_size": 1, "selection": 0.25}, seed=0)
    data = full_data(model, 1)
    batch = next(data.batches(1, views=tps.stream_views()))
    feats = tps.view_features(batch)
    protos = model.text_features()
    shift = torch.zeros_like(protos, requires_grad=True)
    opt = torch.optim.AdamW([shift], lr=5e-3)  # torch's default weight decay 0.01, as TPS
    loss = official_select_and_entropy(official_logits(protos, shift, feats[0], model.clip.logit_scale.detach()), 0.25)
    loss.backward()
    opt.step()
    expected = 100 * feats[0, 0] @ F.normalize(protos + shift.detach(), dim=-1).t()
    got = tps.stream_step(batch)
    assert torch.allclose(got[0], expected, atol=1e-4)
    assert shift.detach().abs().max() == pytest.approx(5e-3, rel=1e-2)  # AdamW's first step: about lr per element


def test_tps_uses_tpt_views_and_resets():
    model = make_classifier("vit")
    data = full_data(model, 5)
    tps = get_method("tps")(model, {"views": 6, "batch_size": 2}, seed=0)
    tpt = get_method("tpt")(make_classifier("vit"), {"views": 6, "batch_size": 2}, seed=0)
    batch = next(data.batches(5, views=tps.stream_views()))
    assert tps.view_augment() == tpt.view_augment()  # the same views, so a sweep shares their features
    assert torch.equal(tps.view_features(batch), tpt.view_features(batch))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = stream(tps, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not tps.shift.any()
    zero = 100 * model.image_features(batch["images"]) @ model.text_features().t()
    assert not torch.allclose(one, zero, atol=1e-4)  # each image's shifts moved its logits
    assert torch.equal(one.argmax(1), one.argmax(1)) and torch.allclose(one, stream(tps, data), atol=1e-5)
    assert tps.history and all(math.isfinite(h["loss"]) for h in tps.history)


def test_tps_prototypes_follow_prompts():
    model = make_classifier("vit")
    model.templates = IMAGENET_TEMPLATES  # what the runner builds for prompts=imagenet80
    tps = get_method("tps")(model, {"prompts": "imagenet80"}, seed=0)
    assert torch.allclose(tps.prototypes, model.class_embeddings(IMAGENET_TEMPLATES), atol=1e-6)


def test_tps_on_the_embedded_model():
    """The shipped tiny CLIP on 24 test images of the embedded ``sketch`` domain: the checkpoint's
    logit scale (76.4) is the one used, predictions are finite and differ from zero-shot's."""
    loaded = load_clip("clipbench-tiny", "embedded")
    split = load_split("synthetic", "sketch", "oda", resolution=loaded.image_size, full=True, render_seed=1)
    rows = torch.arange(24) * (len(split.test.images) // 24)
    data = UnlabeledData(
        split.test.images[rows], full=split.test.full[rows], sizes=np.asarray(split.test.sizes)[rows.numpy()], seed=1
    )
    model = ClipClassifier(loaded, split.classnames)
    adapter = get_method("tps")(model, {"views": 8, "batch_size": 8}, seed=1)
    assert adapter.describe()["logit_scale"] == {"rule": "checkpoint", "value": pytest.approx(76.3965, abs=1e-3)}
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
