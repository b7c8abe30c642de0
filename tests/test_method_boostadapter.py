"""BoostAdapter: the shared caches' rules by hand, the whole stream against a transcription of the
official arithmetic (taolinzhang/BoostAdapter @ 9983e1a ``runner.py``, ``utils.py``) on fixed
features in both of its image modes, and runs on tiny and embedded models."""

from __future__ import annotations

import copy
import math
import operator
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSNAMES, make_classifier, make_data

from benchmark.adapt import view_method
from benchmark.adapt.caches import ClassCache, TDACaches
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import ClipClassifier, load_clip
from benchmark.registry import get_method

K = len(CLASSNAMES)


def stream(adapter, data: UnlabeledData) -> torch.Tensor:
    return torch.cat([o for _, o in adapter.stream(data)])


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


# ---- the official functions, transcribed ----------------------------------------------------------


def official_update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False, fifo=True):
    """runner.py:52-64."""
    item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
    if pred in cache:
        cache[pred].append(item)
        if fifo:
            if len(cache[pred]) > shot_capacity:
                cache[pred] = cache[pred][1:]
        else:
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
            cache[pred] = cache[pred][:shot_capacity]
    else:
        cache[pred] = [item]


def official_cache_logits(image_features, cache, alpha, beta, num_classes, neg_mask_thresholds=None):
    """runner.py:67-92 (fp32 here, fp16 in the official code)."""
    keys, values = [], []
    for class_index in sorted(cache.keys()):
        for item in cache[class_index]:
            keys.append(item[0])
            values.append(item[2] if neg_mask_thresholds else class_index)
    keys = torch.cat(keys, dim=0).permute(1, 0)
    if neg_mask_thresholds:
        values = torch.cat(values, dim=0)
        values = ((values > neg_mask_thresholds[0]) & (values < neg_mask_thresholds[1])).float()
    else:
        values = F.one_hot(torch.tensor(values).to(torch.int64), num_classes=num_classes).float()
    return alpha * ((-1) * (beta - beta * (image_features @ keys))).exp() @ values


def softmax_entropy(x):
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def avg_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def official_get_clip_logits(image_features, clip_weights, infer_ori_image):
    """utils.py:74-109 on already normalised features."""
    clip_logits = 100.0 * image_features @ clip_weights
    ori_feat, ori_output = image_features.clone(), clip_logits.clone()
    if infer_ori_image:
        return (
            image_features[:1],
            clip_logits[:1],
            softmax_entropy(clip_logits[:1]),
            clip_logits[:1].softmax(1),
            int(clip_logits[:1].topk(1, 1, True, True)[1].t()[0]),
            ori_feat,
            ori_output,
        )
    selected = torch.argsort(softmax_entropy(clip_logits), descending=False)[: int(clip_logits.size(0) * 0.1)]
    output = clip_logits[selected]
    return (
        image_features[selected].mean(0).unsqueeze(0),
        output.mean(0).unsqueeze(0),
        avg_entropy(output),
        output.softmax(1).mean(0).unsqueeze(0),
        int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t()),
        ori_feat,
        ori_output,
    )


def official_boostadapter(views, clip_weights, cfg, infer_ori_image):
    """run_test_tda in ``--mode boostadapter`` (runner.py:102-160)."""
    pos_cache, neg_cache, out = {}, {}, []
    pos, neg = cfg["positive"], cfg["negative"]
    for feats in views:
        image_features, clip_logits, loss, prob_map, pred, ori_feat, ori_output = official_get_clip_logits(
            feats, clip_weights, infer_ori_image
        )
        prop_entropy = float(loss / math.log2(clip_weights.size(1)))
        official_update_cache(pos_cache, pred, [image_features, loss], pos["shot_capacity"], fifo=False)
        selected = torch.argsort(softmax_entropy(ori_output), descending=False)[: int(ori_output.size(0) * 0.1)]
        select_feat, select_output = ori_feat[selected], ori_output[selected]
        select_entropy = -(select_output.log_softmax(-1) * select_output.softmax(-1)).sum(-1)
        cur_pos_cache = copy.deepcopy(pos_cache)
        for i in range(select_entropy.shape[0]):
            official_update_cache(
                cur_pos_cache,
                int(select_output[i].argmax(dim=-1).item()),
                [select_feat[i].unsqueeze(0), select_entropy[i].item()],
                pos["shot_capacity"] + cfg["delta"],
                fifo=False,
            )
        if neg["entropy_threshold"]["lower"] < prop_entropy < neg["entropy_threshold"]["upper"]:
            official_update_cache(neg_cache, pred, [image_features, loss, prob_map], neg["shot_capacity"], True)
        final = clip_logits.clone()
        final += official_cache_logits(image_features, cur_pos_cache, pos["alpha"], pos["beta"], clip_weights.size(1))
        if neg_cache:
            final -= official_cache_logits(
                image_features,
                neg_cache,
                neg["alpha"],
                neg["beta"],
                clip_weights.size(1),
                (neg["mask_threshold"]["lower"], neg["mask_threshold"]["upper"]),
            )
        out.append(final)
    return torch.cat(out)


CFG = {
    "positive": {"shot_capacity": 3, "alpha": 2.0, "beta": 5.0},
    "negative": {
        "shot_capacity": 2,
        "alpha": 0.117,
        "beta": 1.0,
        "entropy_threshold": {"lower": 0.2, "upper": 0.5},
        "mask_threshold": {"lower": 0.03, "upper": 1.0},
    },
    "delta": 3,
}


# ---- rules by hand -------------------------------------------------------------------------------


def test_class_cache_keeps_the_official_entries_under_both_rules():
    """TDA's replace-the-worst rule equals BoostAdapter's append-sort-truncate (ties included), and the
    FIFO rule its ``fifo=True``, on a random sequence with repeated entropies."""
    rng = random.Random(0)
    for fifo in (False, True):
        ours, theirs = ClassCache(3, fifo=fifo), {}
        for step in range(200):
            label, h = rng.randrange(3), rng.choice([0.1, 0.2, 0.3, 0.4, 0.5])
            f = torch.tensor([float(step)])
            ours.offer(label, f, h)
            official_update_cache(theirs, label, [f, h], 3, fifo=fifo)
            assert {c: [e[0].item() for e in v] for c, v in ours.entries.items()} == {
                c: [e[0].item() for e in v] for c, v in theirs.items()
            }


def test_boosted_copy_grows_to_capacity_plus_delta_and_leaves_the_cache_alone():
    cache = ClassCache(2)
    for h in (0.5, 0.4):
        cache.offer(0, torch.tensor([h]), h)
    boosted = cache.copy(4)
    for h in (0.1, 0.2, 0.3):
        boosted.offer(0, torch.tensor([h]), h)
    assert [e[1] for e in boosted.entries[0]] == [0.1, 0.2, 0.3, 0.4]  # 0.5 dropped at capacity 2 + 2
    assert [e[1] for e in cache.entries[0]] == [0.4, 0.5] and cache.capacity == 2


def test_fifo_negative_cache_drops_the_oldest():
    caches = TDACaches(
        {
            "pos_shot_capacity": 3,
            "neg_shot_capacity": 2,
            "neg_entropy_lower": 0.0,
            "neg_entropy_upper": 10.0,
            "neg_fifo": True,
        }
    )
    for h in (0.3, 0.1, 0.2):
        caches.offer(1, torch.tensor([h]), h, torch.zeros(3), 3)
    assert [e[1] for e in caches.negative.entries[1]] == [0.1, 0.2]  # 0.3 was first in, first out
    assert [e[1] for e in caches.positive.entries[1]] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("image", ["confident_mean", "original"])
def test_stream_matches_the_official_arithmetic_on_fixed_features(image, monkeypatch):
    g = torch.Generator().manual_seed(1)
    n, v, dim = 30, 20, 8
    common = torch.randn(dim, generator=g)  # similar classes: entropies inside the negative cache's window too
    text = F.normalize(common + 0.3 * torch.randn(K, dim, generator=g), dim=-1)
    feats = F.normalize(
        common + 0.3 * torch.randn(n, v, dim, generator=g) + 0.3 * text[torch.arange(n) % K].unsqueeze(1), dim=-1
    )
    model = make_classifier("vit")
    monkeypatch.setattr(model, "text_features", lambda: text)
    monkeypatch.setattr(view_method, "view_features", lambda model, batch, views, augment, seed: feats[batch["index"]])
    method = get_method("boostadapter")(model, {"views": v, "image": image, "batch_size": 7}, seed=0)
    got = stream(method, full_data(model, n))
    expected = official_boostadapter(list(feats), text.t(), CFG, image == "original")
    assert torch.allclose(got, expected, atol=1e-4)
    assert len(method.negative) > 0 and method.boosted > len(method.positive)
    assert all(len(e) <= 3 for e in method.positive.entries.values())  # boosting samples never enter the cache


# ---- runs ------------------------------------------------------------------------------------------


def test_boostadapter_trains_nothing_and_leaves_the_model_alone():
    model = make_classifier("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method("boostadapter")(model, {"views": 8, "batch_size": 4}, seed=0)
    assert not method.trainable_parameters() and not any(p.requires_grad for p in model.parameters())
    data = full_data(model, 10)
    zero = torch.cat([model(b["images"]).detach() for b in data.batches(10)])
    logits = stream(method, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.allclose(logits, zero, atol=1e-3) and {"positive_cache", "boosted_cache"} <= set(
        method.history[-1]
    )
    same = stream(get_method("boostadapter")(make_classifier("vit"), {"views": 8, "batch_size": 10}, seed=0), data)
    assert torch.allclose(same, logits, atol=1e-4)  # batching only groups the encoding


def test_boostadapter_on_the_embedded_model():
    """The shipped tiny CLIP (its real weights) on random images: finite logits, a filled cache, a bounded copy."""
    model = ClipClassifier(load_clip("clipbench-tiny", "embedded"), CLASSNAMES)
    method = get_method("boostadapter")(model, {"views": 8}, seed=1)
    logits = stream(method, full_data(model, 24))
    assert logits.shape == (24, K) and torch.isfinite(logits).all()
    assert 0 < len(method.positive) <= 3 * K and 0 < method.boosted <= len(method.positive) + 1
