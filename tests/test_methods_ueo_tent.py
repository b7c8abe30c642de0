"""UEO, InfoMax and TENT on the tiny ViT and ResNet: what trains, in which mode, and what is recorded."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods.infomax
import methods.tent
import methods.ueo
from benchmark.adapt.adapter import Adapter, HyperParameterError, NonFiniteLoss
from benchmark.model.clip import ClipClassifier
from benchmark.registry import get_method
from tests.conftest import CLASSNAMES, make_classifier, make_data

N = 16
FAST = {"epochs": 1, "batch_size": 6, "lr": 1e-2}
VIT_NORMS = r"clip\.visual\.(ln_pre|ln_post|transformer\.resblocks\.\d+\.ln_[12])\.(weight|bias)"
RN_NORMS = r"clip\.visual\.(layer\d+\.\d+\.)?bn[123]\.(weight|bias)"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def requires_grad_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def lively_classifier(arch: str) -> ClipClassifier:
    """The tiny random model, with a ResNet's BatchNorm made informative.

    open_clip zero-initialises each bottleneck's bn3 weight and leaves running statistics at
    (0, 1), so the random ResNet maps every image to almost the same feature and gradients to
    its norms vanish. Unit bn3 weights and statistics measured on the test images stand in for
    pre-training; the ViT needs nothing.
    """
    model = make_classifier(arch)
    bns = [m for _, m in batchnorms(model)]
    if bns:
        for m in bns:
            m.weight.data.fill_(1.0)
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            model(make_data(model, N).images.float() / 255)
        for m in bns:
            m.momentum = 0.1
        model.eval()
    return model


def build(method: str, arch: str, **hparams: Any) -> Adapter:
    return get_method(method)(lively_classifier(arch), {**FAST, **hparams}, seed=0)


def expected_trainable(method: str, arch: str, model: nn.Module) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    if arch == "vit":
        norms = {n for n in names if re.fullmatch(VIT_NORMS, n)}
    elif method == "tent":
        norms = {f"{n}.{p}" for n, m in batchnorms(model) for p in ("weight", "bias")}
        assert any("downsample" in n for n in norms)
    else:
        norms = {n for n in names if re.fullmatch(RN_NORMS, n)}
        assert not any("downsample" in n for n in norms)
    assert norms
    return norms if method == "tent" else norms | {"prompt.ctx"}


@pytest.mark.parametrize("method", ["ueo", "infomax", "tent"])
def test_exactly_the_recipe_parameters_train(method, arch):
    adapter = build(method, arch)
    model = adapter.model
    expected = expected_trainable(method, arch, model)
    assert requires_grad_names(model) == expected
    mine = {id(p) for p in adapter.trainable_parameters()}
    assert {n for n, p in model.named_parameters() if id(p) in mine} == expected


@pytest.mark.parametrize("method", ["ueo", "infomax", "tent"])
def test_adapting_moves_trainables_and_leaves_frozen_bit_identical(method, arch):
    adapter = build(method, arch)
    model = adapter.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_stats = {n: m.running_mean.clone() for n, m in batchnorms(model) if m.running_mean is not None}
    adapter.adapt(make_data(model, N))
    trainable = requires_grad_names(model)
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not change"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    assert any(n.startswith("clip.transformer.") for n in before) and "clip.visual.conv1.weight" in before
    for n, mean in bn_stats.items():
        assert torch.equal(dict(batchnorms(model))[n].running_mean, mean), f"{n} statistics moved"
    if method == "tent":  # one pass over the stream: points along it
        assert adapter.history and adapter.history[-1]["epoch"] == 1.0
    else:
        assert len(adapter.history) == 1
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in adapter.history)


@pytest.mark.parametrize("method", ["ueo", "infomax"])
def test_ueo_and_infomax_keep_the_whole_model_in_eval_mode(method, arch):
    adapter = build(method, arch)
    adapter.adapt(make_data(adapter.model, N))
    assert not any(m.training for m in adapter.model.modules())
    assert all(m.track_running_stats and m.running_mean is not None for _, m in batchnorms(adapter.model))


def test_tent_batchnorm_uses_batch_statistics_and_the_rest_is_eval(arch):
    adapter = build("tent", arch)
    model = adapter.model
    bns = batchnorms(model)
    assert bool(bns) == (arch == "rn")
    for _, m in bns:
        assert m.training and not m.track_running_stats
        assert m.running_mean is None and m.running_var is None
    assert not any(m.training for m in model.modules() if not isinstance(m, nn.BatchNorm2d))
    assert not model.clip.transformer.training and not model.visual.conv1.training


def zero_shot_msp(arch: str, images: torch.Tensor) -> torch.Tensor:
    """MSP of unscaled cosines, computed from the raw open_clip model with the fixed prompt."""
    reference = lively_classifier(arch)
    clip, tok = reference.clip, reference.tokenizer
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES]
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tok(prompts)), dim=-1)
        mean = torch.tensor(clip.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(clip.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
        img = F.normalize(clip.encode_image((images.float() / 255 - mean) / std), dim=-1)
    return (img @ text.t()).softmax(dim=-1).max(dim=-1).values


def test_ueo_weights_are_zero_shot_msp_of_unscaled_cosine_on_clean_images(arch):
    adapter = build("ueo", arch)
    data = make_data(adapter.model, N)
    expected = zero_shot_msp(arch, data.images)
    assert expected.std() > 1e-3, "the reference model must tell images apart"
    adapter.adapt(data)
    assert torch.allclose(adapter.weights, expected, atol=1e-6)
    batch = next(data.batches(6))
    loss = adapter.loss(batch)
    reference = methods.ueo.ueo_loss(adapter.model(batch["images"]), expected[batch["index"]])
    assert torch.allclose(loss, reference)


def test_infomax_has_no_weights():
    adapter = build("infomax", "vit")
    adapter.adapt(make_data(adapter.model, N))
    assert adapter.weights is None


def tent_reference_batches(arch: str) -> list[dict[str, torch.Tensor]]:
    """The shuffled stream TENT sees: the adapter's seed (0) draws the order, no augmentation."""
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    return list(make_data(make_classifier(arch), N).batches(FAST["batch_size"], indices=order))


def online(adapter: Adapter) -> dict[str, torch.Tensor]:
    """TENT's recorded stream predictions: index, logits, argmax and MSP in stream order."""
    index = torch.cat([i for i, _ in adapter.online_predictions])
    logits = torch.cat([out for _, out in adapter.online_predictions])
    probs = logits.softmax(-1)
    return {"index": index, "logits": logits, "pred": probs.argmax(-1), "score": probs.max(-1).values}


def test_tent_records_online_predictions_once_per_image(arch):
    adapter = build("tent", arch)
    adapter.adapt(make_data(adapter.model, N))
    seen = online(adapter)
    assert seen["index"].dtype == torch.long
    assert sorted(seen["index"].tolist()) == list(range(N))
    assert seen["logits"].shape == (N, len(CLASSNAMES))


def test_tent_takes_steps_updates_per_batch():
    adapter = build("tent", "vit", steps=2)
    calls = []
    adapter.after_step = lambda: calls.append(1)
    data = make_data(adapter.model, N)
    adapter.adapt(data)
    assert len(calls) == 2 * data.num_batches(FAST["batch_size"])
    assert sorted(online(adapter)["index"].tolist()) == list(range(N))


def test_tent_nesterov_reaches_the_optimiser():
    hp = get_method("tent").resolve_hparams({})
    assert hp["nesterov"] is True and hp["momentum"] == 0.9
    adapter = build("tent", "vit")
    assert adapter.optimizer.param_groups[0]["nesterov"] is True
    assert get_method("tent").resolve_hparams({"recipe": "cifar"})["nesterov"] is False
    plain = build("tent", "vit", nesterov=False)
    assert plain.optimizer.param_groups[0]["nesterov"] is False


def test_tent_episodic_predicts_every_batch_with_the_initial_model(arch):
    adapter = build("tent", arch, episodic=True)
    fresh = build("tent", arch, episodic=True)
    initial = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    adapter.adapt(make_data(adapter.model, N))
    seen = online(adapter)
    start = 0
    for batch in tent_reference_batches(arch):
        with torch.no_grad():
            probs = fresh.model(batch["images"]).softmax(-1)
        end = start + len(batch["index"])
        assert torch.equal(seen["index"][start:end], batch["index"])
        assert torch.equal(seen["pred"][start:end], probs.argmax(-1))
        assert torch.allclose(seen["score"][start:end], probs.max(-1).values, atol=1e-5)
        start = end
    changed = adapter.model.state_dict()
    assert any(not torch.equal(changed[k], initial[k]) for k in initial)
    adapter.reset()
    assert all(torch.equal(adapter.model.state_dict()[k], v) for k, v in initial.items())
    assert not adapter.optimizer.state


def test_tent_non_episodic_predictions_come_before_each_update():
    adapter = build("tent", "rn")
    fresh = build("tent", "rn")
    adapter.adapt(make_data(adapter.model, N))
    first = tent_reference_batches("rn")
    with torch.no_grad():
        probs = [fresh.model(b["images"]).softmax(-1) for b in first[:2]]
    seen = online(adapter)
    assert torch.allclose(seen["score"][:6], probs[0].max(-1).values, atol=1e-5)
    assert not torch.allclose(seen["score"][6:12], probs[1].max(-1).values, atol=1e-7)


def test_tent_recipe_preset_is_expanded_into_the_recorded_hparams():
    tent = get_method("tent")
    default = tent.resolve_hparams({})
    assert (default["recipe"], default["optimizer"], default["lr"], default["momentum"], default["batch_size"]) == (
        "imagenet",
        "sgd",
        2.5e-4,
        0.9,
        64,
    )
    assert (default["epochs"], default["steps"], default["episodic"], default["augment"]) == (1, 1, False, "none")
    cifar = tent.resolve_hparams({"recipe": "cifar"})
    assert (cifar["optimizer"], cifar["lr"], cifar["batch_size"]) == ("adam", 1e-3, 200)
    assert tent.resolve_hparams(cifar) == cifar
    assert tent.resolve_hparams({"recipe": "cifar", "lr": 5e-4})["lr"] == 5e-4
    with pytest.raises(HyperParameterError, match="recipe"):
        tent.resolve_hparams({"recipe": "mnist"})
    adapter = get_method("tent")(make_classifier("vit"), {"recipe": "cifar"})
    assert isinstance(adapter.optimizer, torch.optim.Adam)
    assert adapter.optimizer.param_groups[0]["lr"] == 1e-3


def test_ueo_and_infomax_defaults_follow_the_recipe():
    for name in ("ueo", "infomax"):
        hp = get_method(name).resolve_hparams({})
        assert (hp["optimizer"], hp["lr"], hp["momentum"], hp["weight_decay"]) == ("sgd", 1e-4, 0.0, 0.0)
        assert (hp["schedule"], hp["batch_size"], hp["epochs"], hp["lam"], hp["augment"]) == (
            "cosine",
            64,
            50,
            1.0,
            "rrc",
        )
        assert (hp["crop_scale"], hp["interpolation"], hp["nesterov"], hp["drop_last"]) == (
            [0.5, 1.0],
            "bicubic",
            False,
            False,
        )
        assert (hp["schedule_step"], hp["precision"], hp["regime"]) == ("iteration", "official", "transductive")


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return x.float().sum() * float("nan")


@pytest.mark.parametrize(
    "method, module, attr",
    [
        ("ueo", methods.ueo, "ueo_loss"),
        ("infomax", methods.infomax, "infomax_loss"),
        ("tent", methods.tent, "softmax_entropy"),
    ],
)
def test_nan_loss_raises(monkeypatch, method, module, attr):
    monkeypatch.setattr(module, attr, lambda logits, *args, **kwargs: nan_like(logits))
    adapter = build(method, "vit")
    with pytest.raises(NonFiniteLoss, match=method):
        adapter.adapt(make_data(adapter.model, 6))
