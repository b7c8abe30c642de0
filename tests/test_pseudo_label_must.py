"""pseudo_label (UPL) and MUST: hand-computed helper tests and method tests on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import make_classifier, make_data

from benchmark.adapt.ema import EmaTeacher, ema_update_, ramped_decay
from benchmark.adapt.masking import masked_alignment, masked_l1, normalize_patches, patchify, random_block_mask
from benchmark.adapt.selftrain import class_balanced_topk, confident, fairness_loss
from benchmark.model.clip import IMAGENET_TEMPLATES
from benchmark.registry import get_method

# Rows: predicted class (argmax), MSP. Class 3 is never predicted.
PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.05, 0.05],  # 0 -> 0, 0.7
        [0.50, 0.30, 0.15, 0.05],  # 1 -> 0, 0.5
        [0.90, 0.04, 0.03, 0.03],  # 2 -> 0, 0.9
        [0.10, 0.80, 0.05, 0.05],  # 3 -> 1, 0.8
        [0.20, 0.60, 0.10, 0.10],  # 4 -> 1, 0.6
        [0.30, 0.20, 0.40, 0.10],  # 5 -> 2, 0.4 (the only candidate of class 2)
    ]
)


def test_class_balanced_topk_keeps_k_most_confident_per_class():
    idx, lab = class_balanced_topk(PROBS, k=2)
    # class 0: rows 2 (0.9) and 0 (0.7), not 1 (0.5); class 1: rows 3 and 4; class 2: row 5 only; class 3: none
    assert idx.tolist() == [0, 2, 3, 4, 5]
    assert lab.tolist() == [0, 0, 1, 1, 2]
    idx1, lab1 = class_balanced_topk(PROBS, k=1)
    assert idx1.tolist() == [2, 3, 5] and lab1.tolist() == [0, 1, 2]


def test_threshold_selection_is_strict():
    idx, lab = confident(PROBS, 0.6)
    assert idx.tolist() == [0, 2, 3]  # row 4 has MSP exactly 0.6: not above
    assert lab.tolist() == [0, 0, 1]
    assert confident(PROBS, 0.95)[0].numel() == 0


def test_fairness_loss_hand_computed():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])  # batch mean (0.7, 0.3)
    expected = -(math.log(0.7) + math.log(0.3)) / 2  # 0.780324...
    assert fairness_loss(probs).item() == pytest.approx(expected, rel=1e-6)
    assert fairness_loss(torch.full((3, 4), 0.25)).item() == pytest.approx(math.log(4), rel=1e-6)


def test_masked_l1_counts_only_masked_patches():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # one image, two patches of two values
    target = torch.zeros(1, 2, 2)
    assert masked_l1(pred, target, torch.tensor([[True, False]])).item() == pytest.approx(1.5)
    assert masked_l1(pred, target, torch.tensor([[True, True]])).item() == pytest.approx(2.5)
    other = target.clone()
    other[0, 1] = 100.0  # the visible patch's target does not matter
    assert masked_l1(pred, other, torch.tensor([[True, False]])).item() == pytest.approx(1.5)
    assert masked_l1(pred, target, torch.tensor([[False, False]])).item() == 0.0


def test_patch_normalisation_and_alignment_hand_computed():
    normed = normalize_patches(torch.tensor([[[1.0, 3.0]]]), eps=0.0)  # mean 2, std 1
    assert normed.flatten().tolist() == pytest.approx([-1.0, 1.0])
    glob = torch.tensor([[1.0, 0.0]])
    local = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # only patch 1 is masked: |(0,1) - (1,0)|^2 = 2
    assert masked_alignment(glob, local, torch.tensor([[False, True]])).item() == pytest.approx(2.0)
    assert masked_alignment(glob, local, torch.tensor([[True, True]])).item() == pytest.approx(1.0)


def test_patchify_matches_pixel_shuffle_decoder_layout():
    """MUST decodes with a 1x1 conv + PixelShuffle; patchify must lay pixels out the same way."""
    p, grid = 4, 3
    vectors = torch.randn(2, grid * grid, 3 * p * p)
    conv_out = vectors.transpose(1, 2).reshape(2, 3 * p * p, grid, grid)
    image = F.pixel_shuffle(conv_out, p)
    assert torch.equal(patchify(image, p), vectors)


def test_block_mask_respects_ratio_and_blocks():
    g = torch.Generator().manual_seed(0)
    mask = random_block_mask(8, 14, 0.3, block=2, generator=g)  # ViT-B/16: 7x7 blocks of 2x2 patches
    assert mask.shape == (8, 196)
    assert (mask.sum(1) == 4 * math.ceil(49 * 0.3)).all()  # 15 blocks = 60 patches per image
    blocks = mask.view(8, 7, 2, 7, 2)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # each 2x2 block is all masked or all visible
    assert (random_block_mask(8, 4, 0.3, block=1, generator=g).sum(1) == 5).all()  # ceil(16 * 0.3)
    assert not torch.equal(mask[0], mask[1])  # one mask per image


def test_ema_update_formula_and_ramp():
    teacher, student = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(0.0)
        student.weight.fill_(3.0), student.bias.fill_(2.0)
    ema_update_(teacher, student, 0.9)
    assert teacher.weight.item() == pytest.approx(0.9 * 1 + 0.1 * 3)
    assert teacher.bias.item() == pytest.approx(0.1 * 2)
    ema = EmaTeacher(student)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert ramped_decay(0, 0.999, 0.9998, 2000) == pytest.approx(0.999)
    assert ramped_decay(1000, 0.999, 0.9998, 2000) == pytest.approx(0.9994)
    assert ramped_decay(5000, 0.999, 0.9998, 2000) == pytest.approx(0.9998)


def _trainable_names(adapter) -> set[str]:
    ids = {id(p) for p in adapter.trainable_parameters()}
    return {n for n, p in adapter.model.named_parameters() if id(p) in ids}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pseudo_label_trains_exactly_the_prompt_context(arch):
    adapter = get_method("pseudo_label")(make_classifier(arch))
    assert adapter.trainable_parameters() == [adapter.contexts] and adapter.contexts.shape[:2] == (1, 16)
    assert not any(p.requires_grad for p in adapter.model.parameters())
    assert adapter.model.prompt.ctx.shape[0] == 16
    hp = adapter.hp
    assert (hp["optimizer"], hp["lr"], hp["momentum"], hp["weight_decay"]) == ("sgd", 0.002, 0.9, 5e-4)
    assert (hp["epochs"], hp["batch_size"], hp["warmup_epochs"], hp["warmup_lr"]) == (50, 32, 1, 1e-5)
    assert hp["selection"] == "topk" and hp["num_per_class"] == 16
    assert (hp["crop_scale"], hp["drop_last"], hp["schedule_step"], hp["nesterov"]) == (
        [0.08, 1.0],
        True,
        "epoch",
        False,
    )
    assert hp["ensemble"] == 1 and get_method("pseudo_label_ensemble").resolve_hparams({})["ensemble"] == 16


def test_pseudo_label_rate_is_stepped_per_epoch_as_dassl():
    """1e-5 for the warm-up epoch, then 0.002 * 0.5 (1 + cos(pi (e - 1) / 50)), constant within an epoch."""
    adapter = get_method("pseudo_label")(make_classifier("vit"))
    per_epoch = 4
    rates = []
    for epoch in (0, 1, 2, 49):
        within = {adapter.lr_factor(epoch * per_epoch + b, 50 * per_epoch, per_epoch) for b in range(per_epoch)}
        assert len(within) == 1
        rates.append(adapter.hp["lr"] * within.pop())
    assert rates[0] == pytest.approx(1e-5)
    assert rates[1] == pytest.approx(0.002)
    assert rates[2] == pytest.approx(0.001 * (1 + math.cos(math.pi / 50)))
    assert rates[3] == pytest.approx(0.001 * (1 + math.cos(math.pi * 48 / 50)))  # 7.9e-6, never 0


def test_pseudo_label_selects_topk_steps_and_resets():
    model = make_classifier("rn")
    data = make_data(model, 16)
    adapter = get_method("pseudo_label")(
        model, {"epochs": 1, "batch_size": 4, "num_per_class": 2, "drop_last": False, "warmup_epochs": 0}
    )
    before = _state(model)
    adapter.adapt(data)
    idx, lab = class_balanced_topk(adapter.zero_shot_probs, 2)
    assert torch.equal(adapter.adapt_indices(), idx)
    assert torch.equal(adapter.labels[idx], lab) and (adapter.labels >= 0).sum() == len(idx)
    assert adapter.history[0]["selected"] == len(idx)
    after = _state(model)
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (key == "prompt.ctx"), key  # the trained context is written back to the model
    assert torch.equal(adapter.model.prompt.ctx, adapter.contexts[0])
    adapter.reset()
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    assert adapter.member_text is None and torch.equal(adapter.contexts, adapter._initial_contexts)


def test_pseudo_label_scales_its_training_logits_by_the_checkpoint():
    """UPL's logits are ``logit_scale.exp() * cos`` (upltrainer.py:262 training, :279 pseudo-labels):
    the zero-shot probabilities and the loss use it (1/0.07 for this random model), predictions stay ``100 cos``."""
    model = make_classifier("vit")
    data = make_data(model, 8)
    adapter = get_method("pseudo_label")(model, {"epochs": 1, "batch_size": 8, "drop_last": False, "num_per_class": 1})
    scale = model.clip.logit_scale.exp().item()
    assert adapter.train_logit_scale == pytest.approx(scale) and scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert adapter.describe()["logit_scale"] == {"rule": "checkpoint", "value": round(scale, 4)}
    fixed = model.class_embeddings(model.templates)
    cos = model.image_features(data.images.float() / 255) @ fixed.t()
    assert torch.allclose(adapter.probabilities(data, fixed), (scale * cos).softmax(-1), atol=1e-5)
    adapter.before_adapt(data)
    images = data.images[:4].float() / 255
    batch = {"features": model.image_features(images)[None], "index": torch.arange(4)[None]}
    adapter.labels = torch.zeros(8, dtype=torch.long)
    text = model.text_features_for(adapter.contexts[:1])[0]
    expected = F.cross_entropy(scale * model.image_features(images) @ text.t(), adapter.labels[:4])
    assert adapter.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    predicted = adapter.predict(images)
    assert torch.allclose(predicted, 100 * model.cosine(images), atol=1e-4)  # the scores' scale
    assert get_method("ueo").logit_scale_rule == "fixed100" and get_method("must").logit_scale_rule == "fixed100"
    assert get_method("infomax").logit_scale_rule == "fixed100"


def test_pseudo_label_threshold_variant_refreshes_after_warmup():
    model = make_classifier("vit")
    data = make_data(model, 12)
    hp = {"selection": "threshold", "threshold": 0.0, "epochs": 3, "batch_size": 6, "drop_last": False}
    adapter = get_method("pseudo_label")(model, hp)
    refreshed = []
    original = adapter.probabilities
    adapter.probabilities = lambda d, text: refreshed.append(True) or original(d, text)
    adapter.adapt(data)
    assert len(refreshed) == 2  # zero-shot once, then the current model at epoch 2 (> 1 warm-up epoch)
    assert [h["selected"] for h in adapter.history] == [12, 12, 12]  # MSP > 0 for every image
    with pytest.raises(ValueError, match="lower pseudo_label.threshold"):
        get_method("pseudo_label")(make_classifier("vit"), {"selection": "threshold", "threshold": 1.0}).adapt(data)


def test_pseudo_label_ensemble_averages_member_logits():
    model = make_classifier("vit")
    data = make_data(model, 8)
    adapter = get_method("pseudo_label")(model, {"ensemble": 2, "epochs": 1, "batch_size": 8, "drop_last": False})
    adapter.adapt(data)
    assert adapter.member_text.shape[0] == 2 and adapter.contexts.shape[0] == 2
    assert not torch.allclose(adapter.member_text[0], adapter.member_text[1])
    assert len(adapter.history) == 1
    images = data.images[:3].float() / 255
    logits = adapter.predict(images)
    feats = model.image_features(images)
    expected = torch.stack([100 * feats @ t.t() for t in adapter.member_text]).mean(0)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_must_needs_a_vit():
    with pytest.raises(ValueError, match=r"needs a ViT image encoder.*ViT-B-16"):
        get_method("must")(make_classifier("rn"))


def test_must_trainable_set_and_layer_decay():
    adapter = get_method("must")(make_classifier("vit"))
    names = {n for n, _ in adapter.model.named_parameters()}
    expected = {n for n in names if n.startswith(("clip.visual.", "must."))}
    assert _trainable_names(adapter) == expected
    assert {"must.head.weight", "must.mask_token", "must.decoder.weight", "must.ln_patch.weight"} <= expected
    assert not any(n.startswith("clip.transformer.") for n in _trainable_names(adapter))  # text side frozen
    mult = {}
    for group in adapter.param_groups:
        for p in group["params"]:
            mult[id(p)] = (group["lr_mult"], group["weight_decay"])
    v, extras = adapter.model.visual, adapter.model.must  # 2 blocks: depths 0..3
    assert mult[id(v.conv1.weight)] == (pytest.approx(0.65**3), 0.05)
    assert mult[id(v.class_embedding)] == (pytest.approx(0.65**3), 0.0)
    assert mult[id(extras.mask_token)] == (pytest.approx(0.65**3), 0.05)
    assert mult[id(v.transformer.resblocks[0].mlp.c_fc.weight)] == (pytest.approx(0.65**2), 0.05)
    assert mult[id(v.transformer.resblocks[1].ln_1.bias)] == (pytest.approx(0.65), 0.0)
    assert mult[id(extras.head.weight)] == (1.0, 0.05)
    assert mult[id(v.proj)] == (1.0, 0.05)
    assert adapter.hp["prompts"] == "imagenet80" and len(IMAGENET_TEMPLATES) == 80
    assert torch.allclose(extras.head.weight, adapter.model.class_embeddings(IMAGENET_TEMPLATES))
    assert adapter.hp["batch_size"] == 1024 and adapter.hp["lr"] == pytest.approx(2e-5 * 1024 / 256)
    assert get_method("must").resolve_hparams({"batch_size": 128})["lr"] == pytest.approx(1e-5)
    assert get_method("must").resolve_hparams({"batch_size": 128, "lr": 1e-3})["lr"] == 1e-3


def test_must_masked_student_uses_raw_patch_tokens():
    adapter = get_method("must")(make_classifier("vit"))
    images = make_data(adapter.model, 2).images.float() / 255
    none = torch.zeros(2, 16, dtype=torch.bool)
    with torch.no_grad():
        logits, embed, tokens = adapter.masked_student(images, none)
        assert torch.allclose(embed, adapter.model.image_features(images), atol=1e-5)
        assert torch.allclose(logits, adapter.predict(images), atol=1e-4)
        assert tokens.shape == (2, 16, adapter.model.visual.conv1.out_channels)
        # LayerNorm-ed tokens (fresh ln_patch: zero mean, unit variance per token)
        assert torch.allclose(tokens.mean(-1), torch.zeros(2, 16), atol=1e-4)


def test_must_steps_update_student_and_teacher_then_reset():
    model = make_classifier("vit")
    data = make_data(model, 16)
    adapter = get_method("must")(model, {"epochs": 1, "batch_size": 8, "lr": 1e-3, "tau": 0.0})
    trainable = _trainable_names(adapter)
    before = _state(model)
    teacher_before = _state(adapter.teacher.module)
    adapter.adapt(data)
    assert len(adapter.history) == 1 and adapter.history[0]["confident"] == 1.0
    after = _state(model)
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (key in trainable), key
    teacher_after = _state(adapter.teacher.module)
    moved = [k for k in teacher_before if not torch.equal(teacher_before[k], teacher_after[k])]
    assert moved  # the EMA follows the student ...
    student = adapter.student.state_dict()
    assert any(not torch.equal(student[k], teacher_after[k]) for k in moved)  # ... slowly
    adapter.reset()
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    assert all(torch.equal(teacher_before[k], v) for k, v in _state(adapter.teacher.module).items())
    assert adapter.iteration == 0


def test_must_views_are_the_official_weak_and_strong_transforms():
    """Weak: resize + random crop, no flip; strong: crop 0.3-1 + flip + RandAugment m9 (timm), recorded."""
    adapter = get_method("must")(make_classifier("vit"), {"batch_size": 8})
    views = adapter.views()
    assert views["images"].kind == "crop" and views["images_strong"].kind == "randaugment"
    described = adapter.describe()["views"]
    strong = described["images_strong"]
    assert strong["randaugment"] == "rand-m9-mstd0.5-inc1" and strong["randaugment_magnitude"] == 9
    assert strong["randaugment_num_ops"] == 2 and list(strong["scale"]) == [0.3, 1.0] and strong["flip"]
    assert {
        "AutoContrast",
        "Equalize",
        "Rotate",
        "PosterizeIncreasing",
        "SolarizeIncreasing",
        "ShearX",
        "TranslateXRel",
    } <= set(strong["randaugment_ops"])
    assert described["images"] == {"kind": "crop", "interpolation": "bicubic"}
    data = make_data(adapter.model, 8)
    batch = next(data.batches(8, views=views))
    assert batch["images"].shape == batch["images_strong"].shape == (8, 3, 32, 32)
    assert not torch.equal(batch["images"], batch["images_strong"])


def test_pseudo_label_members_train_as_if_alone():
    """Member m of an ensemble ends where training its seed alone ends: lockstep changes no result."""
    data = make_data(make_classifier("vit"), 16)
    hp = {"epochs": 2, "batch_size": 4, "num_per_class": 3, "drop_last": False, "warmup_epochs": 0, "lr": 0.05}
    pair = get_method("pseudo_label")(make_classifier("vit"), {**hp, "ensemble": 2}, seed=3)
    pair.adapt(data)
    alone = get_method("pseudo_label")(make_classifier("vit"), {**hp, "ensemble": 1}, seed=3)
    alone.adapt(data)
    assert torch.allclose(pair.contexts[0], alone.contexts[0], atol=1e-5)
    assert not torch.allclose(pair.contexts[1], alone.contexts[0], atol=1e-3)


def test_pseudo_label_view_pool_draws_from_precomputed_crops():
    data = make_data(make_classifier("vit"), 16)
    adapter = get_method("pseudo_label")(
        make_classifier("vit"), {"epochs": 1, "batch_size": 4, "view_pool": 2, "num_per_class": 3, "drop_last": False}
    )
    calls = []
    real = adapter.model.image_features
    adapter.model.image_features = lambda x: calls.append(len(x)) or real(x)
    adapter.adapt(data)
    assert calls == [16, len(adapter.selected), len(adapter.selected)]  # zero-shot labels, the pool, then nothing
    assert adapter.history[0]["loss"] > 0
