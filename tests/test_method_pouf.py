"""POUF: its two losses by hand and against a transcription of the official arithmetic, what trains
at which rate, the schedule, the official iteration budget (500 batches per epoch), and a run on the
embedded benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.registry import get_method
from methods.pouf import ForeverBatches, pouf_im_loss, transport_loss
from tests.conftest import CLASSNAMES, make_classifier, make_data

K = len(CLASSNAMES)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(arch: str = "vit", **hp):
    return get_method("pouf")(make_classifier(arch), hp, seed=0)


def count_steps(adapter) -> list:
    """Record every optimiser step (the base loop calls ``after_step`` after each)."""
    steps: list = []
    adapter.after_step = lambda: steps.append(1)
    return steps


# ---- the losses ------------------------------------------------------------------------------------


def test_transport_loss_by_hand():
    """Two images, two classes: both plans worked out on paper."""
    cos = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    logits = torch.log(torch.tensor([[3.0, 1.0], [1.0, 1.0]]))  # rows: softmax (3/4, 1/4), (1/2, 1/2)
    # image -> prototypes: mean_i sum_k (1 - cos) p_ik = mean(0.5*0.75 + 1*0.25, 1*0.5 + 0.5*0.5) = mean(0.625, 0.75)
    # prototypes -> images: columns softmax over the batch: class 0 (3/4, 1/4), class 1 (1/2, 1/2)
    # mean_k sum_i (1 - cos) q_ik = mean(0.5*0.75 + 1*0.25, 1*0.5 + 0.5*0.5) = mean(0.625, 0.75)
    assert transport_loss(logits, cos).item() == pytest.approx(0.6875 + 0.6875, rel=1e-6)


def test_im_loss_by_hand():
    """Uniform predictions: no conditional entropy term to gain, the marginal is uniform too."""
    logits = torch.zeros(3, 4)
    h = -4 * 0.25 * math.log(0.25 + 1e-5)
    hm = -4 * 0.25 * math.log(0.25 + 1e-6)
    assert pouf_im_loss(logits).item() == pytest.approx(h - hm, abs=1e-6)
    # one-hot-like confident and diverse predictions: IM close to -log K
    sharp = 50 * torch.eye(4)
    assert pouf_im_loss(sharp).item() == pytest.approx(-math.log(4), abs=1e-3)


def official_pouf_loss(sim: torch.Tensor, logit_scale: torch.Tensor, lambda_im: float = 0.3) -> torch.Tensor:
    """A transcription of pouf.py:120-141, 173-179 (get_entropy, compute_im_loss, compute_transport_loss)."""
    logits = logit_scale.exp() * sim
    s_dist, t_dist = torch.softmax(logits, 1), torch.softmax(logits, 0)
    cost = 1 - sim
    transport = (cost * s_dist).sum(1).mean() + (cost * t_dist).sum(0).mean()
    soft = torch.softmax(logits, 1)
    ent = torch.sum(-soft * torch.log(soft + 1e-5), 1).mean()
    m = soft.mean(0)
    im = ent - torch.sum(-m * torch.log(m + 1e-6))
    return 1.0 * transport + lambda_im * im


def test_loss_and_its_gradient_match_the_official_arithmetic():
    g = torch.Generator().manual_seed(0)
    sim = (torch.rand(7, K, generator=g) * 0.6 - 0.1).requires_grad_(True)
    scale = torch.tensor(math.log(100.0), requires_grad=True)
    official = official_pouf_loss(sim, scale)
    ga = torch.autograd.grad(official, [sim, scale])
    logits = scale.exp() * sim
    ours = transport_loss(logits, sim) + 0.3 * pouf_im_loss(logits)
    gb = torch.autograd.grad(ours, [sim, scale])
    assert ours.item() == pytest.approx(official.item(), rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ga, gb))


# ---- what trains, at which rate ----------------------------------------------------------------------


def test_prompt_tuning_trains_the_context_and_the_logit_scale_at_their_official_rates():
    pouf = build("vit")
    assert {n for n, p in pouf.model.named_parameters() if p.requires_grad} == {"prompt.ctx"}
    opt = pouf.optimizer
    assert isinstance(opt, torch.optim.SGD)
    ctx_group, scale_group = opt.param_groups
    assert ctx_group["params"][0] is pouf.model.prompt.ctx and scale_group["params"][0] is pouf.log_scale
    # official: -plr 0.1 and model_lr 5e-5, each x the lambda's --lr 0.01
    assert ctx_group["lr"] == pytest.approx(0.1 * 0.01) and scale_group["lr"] == pytest.approx(5e-5 * 0.01)
    for group in (ctx_group, scale_group):
        assert group["momentum"] == 0.9 and group["nesterov"] and group["weight_decay"] == 1e-3
    assert pouf.log_scale.exp().item() == pytest.approx(100.0)


def test_visual_tuning_trains_every_image_encoder_weight_and_nothing_of_the_text_tower(arch):
    pouf = build(arch, tune="visual")
    trainable = {n for n, p in pouf.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in pouf.model.named_parameters() if n.startswith("clip.visual.")}
    assert pouf.model.prompt is None
    assert [g["lr"] for g in pouf.optimizer.param_groups] == pytest.approx([5e-7, 5e-7])
    assert not pouf.model.training


def test_frozen_logit_scale_is_an_option():
    pouf = build("vit", train_logit_scale=False)
    assert len(pouf.optimizer.param_groups) == 1 and not pouf.log_scale.requires_grad


# ---- schedule and budget -----------------------------------------------------------------------------


def test_inverse_decay_schedule_counts_iterations_not_the_budget():
    pouf = build("vit")
    for t in (0, 1, 499, 4999):
        assert pouf.lr_factor(t, 10, 0) == pytest.approx((1 + 2e-4 * t) ** -0.75)
    assert pouf.lr_factor(5000, 5000, 0) == pytest.approx(2**-0.75)  # where the official 10 x 500 ends


def test_forever_batches_are_whole_reshuffled_passes_that_run_across_epochs():
    model = make_classifier("vit")
    data = make_data(model, 10)
    stream = ForeverBatches(data, iters=4, batch_size=3)
    g = torch.Generator().manual_seed(0)
    epochs = [[b["index"].tolist() for b in stream.batches(3, generator=g)] for _ in range(2)]
    flat = [b for e in epochs for b in e]
    assert all(len(b) == 3 for b in flat) and len(flat) == 8
    passes = [flat[i : i + 3] for i in range(0, 8, 3)]  # 10 images: 3 batches a pass, 1 image dropped
    for p in passes:
        seen = [i for b in p for i in b]
        assert len(seen) == len(set(seen))
    assert passes[0] != passes[1]  # each pass reshuffled
    small = ForeverBatches(make_data(model, 2), iters=3, batch_size=96)
    assert [sorted(b["index"].tolist()) for b in small.batches(96, generator=g)] == [[0, 1]] * 3


def test_budget_is_epochs_times_iters_per_epoch_with_the_schedule_at_the_last_step():
    pouf = build("vit", epochs=2, iters_per_epoch=3, batch_size=4)
    steps = count_steps(pouf)
    pouf.adapt(make_data(pouf.model, 10))
    assert len(steps) == 6 and pouf.curve[-1]["progress"] == 1.0 and len(pouf.history) == 2
    assert pouf.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 + 2e-4 * 5) ** -0.75)


def test_iters_per_epoch_zero_gives_passes_over_the_adapt_set():
    pouf = build("vit", epochs=2, iters_per_epoch=0, batch_size=4)
    steps = count_steps(pouf)
    pouf.adapt(make_data(pouf.model, 10))
    assert len(steps) == 2 * 2  # 10 // 4 a pass, the last batch dropped


def test_one_step_by_hand():
    """The whole set in one batch (fewer images than 96), no augmentation: one Nesterov SGD step."""
    model = make_classifier("vit")
    pouf = get_method("pouf")(model, {"epochs": 1, "iters_per_epoch": 1, "augment": "none"}, seed=0)
    data = make_data(model, 6)
    images = data.images.float() / 255
    ctx = model.prompt.ctx.detach().clone().requires_grad_(True)
    scale = torch.tensor(math.log(100.0), requires_grad=True)
    text = torch.nn.functional.normalize(
        model._encode_prompt_embeddings(model.prompt.embeddings(ctx.unsqueeze(0)), model.prompt.tokens).float(), dim=-1
    )
    sim = model.image_features(images).detach() @ text.t()
    loss = official_pouf_loss(sim, scale)
    g_ctx, g_scale = torch.autograd.grad(loss, [ctx, scale])
    # first Nesterov step: buf = g + wd p; p -= lr (g + wd p + momentum buf) = lr (1 + momentum)(g + wd p)
    want_ctx = ctx - 1e-3 * 1.9 * (g_ctx + 1e-3 * ctx)
    want_scale = scale - 5e-7 * 1.9 * (g_scale + 1e-3 * scale)
    pouf.adapt(data)
    assert torch.allclose(model.prompt.ctx.detach(), want_ctx.detach(), atol=1e-7)
    assert pouf.log_scale.item() == pytest.approx(want_scale.item(), abs=1e-9)


def test_reset_restores_context_and_logit_scale():
    pouf = build("vit", epochs=1, iters_per_epoch=2, batch_size=4, lr=0.5, model_lr_mult=1.0)
    before = {k: v.clone() for k, v in pouf.model.state_dict().items()}
    pouf.adapt(make_data(pouf.model, 8))
    assert not torch.equal(pouf.model.prompt.ctx, before["prompt.ctx"]) and pouf.log_scale.item() != math.log(100)
    pouf.reset()
    assert all(torch.equal(v, before[k]) for k, v in pouf.model.state_dict().items())
    assert pouf.log_scale.item() == pytest.approx(math.log(100))


# ---- the embedded benchmark ----------------------------------------------------------------------------


def test_a_short_run_on_the_embedded_benchmark(tmp_path):
    from benchmark.run.runner import execute
    from benchmark.run.sweep import SweepRequest, build_sweep

    hp = {"epochs": 1, "iters_per_epoch": 3, "lr": 3e-2}
    req = SweepRequest(
        methods=["pouf"],
        datasets=["synthetic"],
        seeds=[1],
        model="clipbench-tiny",
        pretrained="embedded",
        domains=["sketch"],
        overrides={"pouf": hp},
    )
    rec = execute(build_sweep(req)[0], tmp_path)
    assert rec["status"] == "done", rec.get("traceback")
    assert rec["regime"] == "transductive" and rec["precision"] == "fp32"
    assert rec["spec"]["hparams"]["iters_per_epoch"] == 3 and len(rec["curve"]) == 3
    with np.load(tmp_path / "runs" / rec["hash"] / "preds.npz") as z:
        assert np.isfinite(z["test_score_msp_cos"]).all()
        assert z["test_pred"].max() < rec["data"]["num_known"]
