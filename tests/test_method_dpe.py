"""DPE: its rules against hand-computed cases, its closed-form step against autograd and torch's
AdamW, a whole stream against a transcription of the official per-image loop, reset, batching,
and a run on the embedded model."""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_classifier, make_data

from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.registry import get_method
from methods.dpe import PrototypeQueues, adamw_first_step, info_nce, residual_gradients


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


def stream(adapter, data: UnlabeledData) -> torch.Tensor:
    return torch.cat([out for _, out in adapter.stream(data)])


# ---- the rules, by hand ------------------------------------------------------------------------


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # rows are normalised first: both become (1, 0)
    k = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # row 0: logits (100, 0), label 0; row 1: logits (100, 0), label 1
    expected = (math.log1p(math.exp(-100)) + 100 + math.log1p(math.exp(-100))) / 2
    assert info_nce(q, k, 0.01).item() == pytest.approx(expected, rel=1e-6)
    assert info_nce(q[:1], k[:1], 0.01).item() == 0.0  # one pair: nothing to contrast


def test_adamw_first_step_is_torch_adamw_from_zero():
    g = torch.tensor([0.5, -2e-3, 1e-4, 0.0, -3.0, 7e-3])
    for dtype in (torch.float32, torch.float16):
        for lr, wd in ((6e-4, 0.1), (1e-2, 0.0)):
            p = torch.zeros(6, dtype=dtype, requires_grad=True)
            opt = torch.optim.AdamW([p], lr=lr, eps=1e-3, weight_decay=wd)
            p.grad = g.to(dtype)
            opt.step()
            assert torch.equal(adamw_first_step(g.to(dtype), lr, 1e-3), p.detach())
    # the rule: about -lr g / (|g| + eps) in fp32; in fp16 (1 - b2) g^2 underflows for small g: -lr g / eps
    lr = 6e-4
    r32 = adamw_first_step(g, lr, 1e-3)
    assert torch.allclose(r32, -lr * g / (g.abs() + 1e-3), rtol=1e-5, atol=0)
    r16 = adamw_first_step(torch.tensor([2e-3], dtype=torch.float16), lr, 1e-3)
    assert r16.item() == pytest.approx(-lr * 2.0, rel=2e-3)  # fp32: -lr * 2/3


def test_queues_keep_the_lowest_entropies_and_average_them():
    q = PrototypeQueues(num_classes=4, dim=2, capacity=2, device=torch.device("cpu"))
    for h in (0.5, 0.3, 0.4, 0.9):
        q.offer(2, torch.tensor([h, 1.0]), h)
    assert [e[1] for e in q.entries[2]] == [0.3, 0.4]
    assert q.prototypes[2].tolist() == pytest.approx([0.35, 1.0])  # the mean, not re-normalised
    q.offer(0, torch.tensor([0.0, 2.0]), 0.7)
    assert q.classes().tolist() == [0, 2] and len(q) == 3
    assert q.prototypes[0].tolist() == [0.0, 2.0] and q.prototypes[1].tolist() == [0.0, 0.0]


# ---- transcription of the official arithmetic (zhangce01/DPE-CLIP main_dpe.py, utils.py) ------
# Written from the official formulas in the official layout (text features as D x K columns),
# with autograd and torch's AdamW, independently of methods/dpe.py.


def official_avg_entropy(outputs):  # utils.py:55-60
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def official_info_nce(query, positive_key, temperature=0.01):  # info_nce/__init__.py:90, 113-118 (0.1.4)
    query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
    logits = query @ positive_key.transpose(-2, -1)
    return F.cross_entropy(logits / temperature, torch.arange(len(query)), reduction="mean")


def official_clip_logits(feats, clip_weights, selection):  # utils.py:132-163, the encoder's output given
    clip_logits = 100.0 * feats @ clip_weights
    if feats.size(0) > 1:
        batch_entropy = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        selected_idx = torch.argsort(batch_entropy, descending=False)[: int(batch_entropy.size()[0] * selection)]
        output = clip_logits[selected_idx]
        return (
            feats[selected_idx].mean(0).unsqueeze(0),
            output.mean(0).unsqueeze(0),
            official_avg_entropy(output),
            int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t()),
        )
    loss = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
    return feats, clip_logits, loss, int(clip_logits.topk(1, 1, True, True)[1].t()[0])


@torch.no_grad()
def official_update_cache(cache, pred, features_loss, shot_capacity):  # main_dpe.py:40-52
    if pred in cache:
        if len(cache[pred]) < shot_capacity:
            cache[pred].append(features_loss)
        elif features_loss[1] < cache[pred][-1][1]:
            cache[pred][-1] = features_loss
        cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
    else:
        cache[pred] = [features_loss]


@torch.no_grad()
def official_cache_key_value(image_features, cache, num_classes):  # main_dpe.py:133-152
    cache_keys, cache_values = [], []
    for class_index in sorted(cache.keys()):
        image_prototype = torch.zeros_like(image_features)
        for item in cache[class_index]:
            image_prototype += item[0] / len(cache[class_index])
        cache_keys.append(image_prototype)
        cache_values.append(class_index)
    keys = torch.cat(cache_keys, dim=0).permute(1, 0)
    return keys, F.one_hot(torch.tensor(cache_values), num_classes=num_classes).float(), cache_values


def official_cache_logits(image_features, keys, values, alpha, beta):  # main_dpe.py:154-157
    return alpha * ((-1) * (beta - beta * (image_features @ keys))).exp() @ values


def official_stream(view_feats, text, cfg, dataset_name, selection):
    """main_dpe.py:197-303 on precomputed view features (V, D) per image; returns the final logits
    and the global text features (D x K)."""
    clip_weights = text.t().clone()
    num_classes = clip_weights.size(1)
    log2k = math.log2(num_classes)
    clip_weights_global, num_avg, cache, outs = clip_weights.clone(), 0, {}, []
    for feats in view_feats:
        clip_weights_local = clip_weights_global.clone().detach()
        text_residual = torch.zeros_like(clip_weights_local, requires_grad=True)
        new_clip_weights = F.normalize(clip_weights_local + text_residual, dim=0)
        x, clip_logits, entropy, pred = official_clip_logits(feats, new_clip_weights, selection)
        official_update_cache(cache, pred, [x, float(entropy / log2k)], cfg["shot_capacity"])
        keys, values, all_classes = official_cache_key_value(x, cache, num_classes)
        cache_residual = torch.zeros_like(keys, requires_grad=True)
        new_clip_weights = F.normalize(clip_weights_local + text_residual, dim=0)
        new_keys = F.normalize(keys + cache_residual, dim=0)
        final_logits = clip_logits.clone() + official_cache_logits(x, new_keys, values, cfg["alpha"], cfg["beta"])
        loss = official_avg_entropy(final_logits)
        loss = loss + official_info_nce(new_keys.T, new_clip_weights[:, all_classes].T) * cfg["align"]
        optimizer = torch.optim.AdamW(
            [
                {"params": [text_residual], "lr": cfg["text"], "eps": 1e-3, "weight_decay": 1e-1},
                {"params": [cache_residual], "lr": cfg["image"], "eps": 1e-3, "weight_decay": 1e-1},
            ]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            new_clip_weights = F.normalize(clip_weights_local + text_residual, dim=0)
            if dataset_name == "A":
                f, clip_logits, _, _ = official_clip_logits(feats, new_clip_weights, selection)
            else:
                f, clip_logits, _, _ = official_clip_logits(feats[:1], new_clip_weights, selection)
            final_logits = clip_logits + official_cache_logits(
                f, F.normalize(keys + cache_residual, dim=0), values, cfg["alpha"], cfg["beta"]
            )
            if float(official_avg_entropy(final_logits) / log2k) < 0.1:
                num_avg += 1
                clip_weights_global = clip_weights_global * (num_avg / (num_avg + 1)) + new_clip_weights * (
                    1 / (num_avg + 1)
                )
        outs.append(final_logits[0])
    return torch.stack(outs), clip_weights_global


def test_residual_gradients_equal_autograd_through_the_official_formulas():
    g = torch.Generator().manual_seed(3)
    d, k = 16, 6
    x = F.normalize(torch.randn(d, generator=g), dim=0) * 0.9  # a mean of views: not unit
    glob = F.normalize(torch.randn(k, d, generator=g), dim=1) * torch.rand(k, 1, generator=g).add(0.5)
    classes = torch.tensor([0, 2, 5])
    protos = torch.randn(3, d, generator=g) * 0.3
    r_t = torch.zeros(d, k, requires_grad=True)
    r_c = torch.zeros(d, 3, requires_grad=True)
    w = F.normalize(glob.t() + r_t, dim=0)
    keys = F.normalize(protos.t() + r_c, dim=0)
    values = F.one_hot(classes, k).float()
    final = 100.0 * x[None] @ w + official_cache_logits(x[None], keys, values, 6.0, 5.0)
    loss = official_avg_entropy(final) + 0.5 * official_info_nce(keys.T, w[:, classes].T)
    loss.backward()
    norms, key_norms = glob.norm(dim=1, keepdim=True), protos.norm(dim=1, keepdim=True)
    got, g_text, g_keys = residual_gradients(
        x, glob / norms, norms, protos / key_norms, key_norms, classes, 6.0, 5.0, 0.5, 0.01
    )
    assert got.item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(g_text, r_t.grad.t(), rtol=1e-4, atol=1e-7)
    assert torch.allclose(g_keys, r_c.grad.t(), rtol=1e-4, atol=1e-7)


def _structured_views(n: int, v: int, text: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, v, D) unit features near a class's text feature (confident) or between two (not)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, text.shape[0], (2, n), generator=g)
    mix = (torch.rand(n, generator=g) < 0.5).float()[:, None] * 0.5
    centre = text[a] * (1 - mix) + text[b] * mix
    noise = torch.randn(n, v, text.shape[1], generator=g) * 0.2
    return F.normalize(centre[:, None] + noise, dim=-1)


@pytest.mark.parametrize(
    "views,predict_view,dataset", [(6, "original", "I"), (6, "confident", "A"), (1, "original", "C")]
)
def test_stream_equals_the_official_loop(views, predict_view, dataset):
    """Same view features in, same logits and global text features out as main_dpe.py's loop
    (ImageNet's setting: confident views adapt, the original is predicted; ImageNet-A's: the
    confident views predict too; the cross-domain sets': one view)."""
    model = make_classifier("vit")
    hp = {"views": views, "selection": 0.34, "predict_view": predict_view, "batch_size": 4}
    dpe = get_method("dpe")(model, hp, seed=0)
    text = model.text_features()
    feats = _structured_views(15, views, text, seed=3)
    dpe.view_features = lambda batch: feats[batch["index"]]
    got = stream(dpe, make_data(model, 15))
    cfg = {"shot_capacity": 3, "alpha": 6.0, "beta": 5.0, "text": 6e-4, "image": 6e-4, "align": 0.5}  # imagenet.yaml
    expected, glob = official_stream(list(feats), text, cfg, dataset, 0.34)
    assert 0 < dpe.updates < 15  # the gate both opened and stayed shut
    # Not bit-equal: while a class's queue holds only the image itself, its prototype is parallel to
    # the image's feature and the true gradient of that prototype's residual is zero; both
    # computations then return rounding noise, which AdamW's normalised step (eps 1e-3) amplifies
    # to about lr * 1e-3; and entropies of near-certain predictions (which rank the queues) are
    # rounding noise too. Logits (on the 100 scale) then differ by up to ~3e-3.
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.allclose(got, expected, rtol=0, atol=1e-2)
    assert torch.allclose(dpe.text_global, glob.t(), atol=1e-5)


# ---- the method's behaviour ---------------------------------------------------------------------


def test_defaults_are_the_imagenet_setting():
    hp = get_method("dpe").hparam_defaults()
    assert {k: hp[k] for k in ("alpha", "beta", "lr", "align", "shot_capacity", "eps", "weight_decay")} == {
        "alpha": 6.0,
        "beta": 5.0,
        "lr": 6e-4,
        "align": 0.5,
        "shot_capacity": 3,
        "eps": 1e-3,
        "weight_decay": 0.1,
    }
    assert hp["views"] == 64 and hp["predict_view"] == "original" and hp["regime"] == "online"
    dpe = get_method("dpe")(make_classifier("vit"), {}, seed=0)
    augment = dpe.view_augment()
    assert (augment.kind, augment.scale, augment.interpolation) == ("augmix", (0.08, 1.0), "bilinear")
    assert dpe.describe()["views"]["images"] == augment.describe()
    one = get_method("dpe")(make_classifier("vit"), {"views": 1}, seed=0)
    assert dpe.needs_full and not one.needs_full and one.describe()["views"]["images"]["kind"] == "none"


def test_global_text_update_first_weighs_half_and_is_never_renormalised():
    model = make_classifier("vit")
    data = make_data(model, 1)
    init = model.text_features().clone()
    never = get_method("dpe")(model, {"views": 1, "gate": 0.0}, seed=0)
    stream(never, data)
    assert never.updates == 0 and torch.equal(never.text_global, init)
    always = get_method("dpe")(make_classifier("vit"), {"views": 1, "gate": 1e9, "lr": 0.05}, seed=0)
    x = model.image_features(data.images.float() / 255)[0]
    stream(always, data)
    # by hand: the image alone in its queue, the residual step, then T = T0 / 2 + t1 / 2
    label = int((x @ init.t()).argmax())
    key = x / x.norm()
    _, g_text, _ = residual_gradients(
        x, init, torch.ones(len(init), 1), key[None], x.norm().view(1, 1), torch.tensor([label]), 6.0, 5.0, 0.5, 0.01
    )
    t1 = F.normalize(init + adamw_first_step(g_text, 0.05, 1e-3), dim=-1)
    assert always.updates == 1
    assert torch.allclose(always.text_global, (init + t1) / 2, atol=1e-6)
    assert (always.text_global.norm(dim=-1) < 1 - 1e-6).any()  # a mean of unit vectors, left as it is


def test_residuals_restart_at_zero_and_the_model_is_untouched():
    model = make_classifier("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dpe = get_method("dpe")(model, {"views": 4, "batch_size": 3, "augmix": False}, seed=0)
    k, d = model.text_features().shape
    assert sum(p.numel() for p in dpe.trainable_parameters()) == 2 * k * d
    assert not any(p.requires_grad for p in model.parameters())
    zero = torch.cat([model(b["images"]).detach() for b in make_data(model, 9).batches(9)])
    logits = stream(dpe, full_data(model, 9))
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    assert all(not p.any() for p in dpe.trainable_parameters())  # the templates never move
    assert not torch.allclose(logits, zero, atol=1e-3)
    assert dpe.history and all(math.isfinite(h["loss"]) for h in dpe.history if "loss" in h)
    assert {"queued", "text_updates"} <= set(dpe.history[-1])


def test_reset_restores_the_stream_state():
    model = make_classifier("vit")
    dpe = get_method("dpe")(model, {"views": 4, "batch_size": 4, "gate": 1e9, "augmix": False}, seed=0)
    data = full_data(model, 6)
    first = stream(dpe, data)
    assert dpe.updates == 6 and len(dpe.queues) > 0
    dpe.reset()
    assert dpe.updates == 0 and len(dpe.queues) == 0 and not dpe.queues.present.any()
    assert torch.equal(dpe.text_global, model.text_features())
    assert torch.equal(stream(dpe, data), first)


def test_encoding_in_batches_changes_no_result():
    model = make_classifier("vit")
    data = full_data(model, 6)
    hp = {"views": 4, "augmix": False}  # AugMix or not, each image's views come from its own generator
    one = stream(get_method("dpe")(make_classifier("vit"), {**hp, "batch_size": 1}, seed=0), data)
    many = stream(get_method("dpe")(model, {**hp, "batch_size": 6}, seed=0), data)
    assert torch.allclose(one, many, atol=1e-5)


def test_runs_on_the_embedded_model():
    """The proposed embedded budget (``views=1``, DPE's cross-domain setting) on half of sketch's test set."""
    from benchmark.data import load_split
    from benchmark.model.clip import ClipClassifier, load_clip

    loaded = load_clip("clipbench-tiny", "embedded")
    split = load_split("synthetic", "sketch", "oda", resolution=loaded.image_size, full=True)
    rows = torch.arange(0, len(split.test.images), 4)
    data = UnlabeledData(
        split.test.images[rows], full=split.test.full[rows], sizes=np.asarray(split.test.sizes)[rows.numpy()], seed=0
    )
    model = ClipClassifier(loaded, split.classnames)
    zero = torch.cat([model(b["images"]).detach() for b in data.batches(64)])
    dpe = get_method("dpe")(model, {"views": 1}, seed=1)
    logits = stream(dpe, data)
    assert torch.isfinite(logits).all() and logits.shape == zero.shape
    assert dpe.updates > 0 and len(dpe.queues) > 0
    assert (logits.argmax(1) != zero.argmax(1)).any()


def test_fp16_residual_step_as_under_the_official_precision():
    """On a GPU ``precision=official`` steps the residuals in fp16 (as DPE's ``.half()`` residuals);
    forced here on the CPU. Where ``(1 - b2) g^2`` underflows the fp16 step is ``-lr g / eps``,
    larger than fp32's ``-lr g / (|g| + eps)``: logits move by up to about half a point here."""
    model = make_classifier("vit")
    data = make_data(model, 6)
    fp32 = get_method("dpe")(model, {"views": 1}, seed=0)
    fp16 = get_method("dpe")(make_classifier("vit"), {"views": 1}, seed=0)
    fp16.residual_dtype = torch.float16
    a, b = stream(fp32, data), stream(fp16, data)
    assert torch.isfinite(b).all() and not torch.equal(a, b)
    assert torch.allclose(a, b, atol=1.0) and torch.equal(a.argmax(1), b.argmax(1))
