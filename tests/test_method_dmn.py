"""DMN-ZS: the memory's rules by hand, the whole stream against a transcription of DMN's official
arithmetic (YBZh/DMN @ c6c218c ``dmn_main.py``) on fixed features, and runs on tiny and embedded models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CLASSNAMES, make_classifier, make_data

from benchmark.adapt import view_method
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import ClipClassifier, load_clip
from benchmark.registry import get_method
from methods import dmn

K = len(CLASSNAMES)


def stream(adapter, data: UnlabeledData) -> torch.Tensor:
    return torch.cat([o for _, o in adapter.stream(data)])


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=np.full((n, 2), r))


# ---- rules by hand -------------------------------------------------------------------------------


def test_memory_fills_then_replaces_its_highest_entropy_slot_only_with_a_lower_one():
    mem = dmn.DynamicMemory(num_classes=2, size=2, dim=2)
    mem.write(1, torch.tensor([1.0, 0.0]), 0.5)
    mem.write(1, torch.tensor([0.0, 1.0]), 0.3)
    assert mem.count == [0, 2] and mem.entropy[1].tolist() == pytest.approx([0.5, 0.3])
    mem.write(1, torch.tensor([0.6, 0.8]), 0.5)  # not lower than the worst (0.5): ignored
    assert mem.features[1, 0].tolist() == [1.0, 0.0]
    mem.write(1, torch.tensor([0.6, 0.8]), 0.4)  # replaces slot 0 (entropy 0.5)
    assert mem.features[1, 0].tolist() == pytest.approx([0.6, 0.8]) and mem.entropy[1].tolist() == pytest.approx(
        [0.4, 0.3]
    )
    assert len(mem) == 2 and mem.features[0].abs().sum() == 0


def test_memory_read_by_hand():
    """q = e1, class 0 holds [0.6, 0.8] and its text e1, class 1 only its text e2; beta = 1."""
    text = torch.eye(2)
    mem = dmn.DynamicMemory(num_classes=2, size=3, dim=2)
    mem.write(0, torch.tensor([0.6, 0.8]), 0.1)
    w = math.exp(-(1 - 0.6))
    a0 = torch.tensor([1 + 0.6 * w, 0.8 * w])
    expected0 = 100 * (a0 / a0.norm())[0].item()
    got = mem.read(torch.tensor([1.0, 0.0]), text, beta=1.0)
    assert got.tolist() == pytest.approx([expected0, 0.0], rel=1e-6, abs=1e-5)
    empty = dmn.DynamicMemory(num_classes=2, size=3, dim=2)  # an empty memory reads the text logits back
    q = torch.tensor([0.6, 0.8])
    assert empty.read(q, text, beta=5.5).tolist() == pytest.approx((100 * text @ q).tolist(), rel=1e-6)


def test_confident_probs_and_the_mixed_prediction_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01], [0.7, 0.3]])
    assert dmn.confident_probs(p, 0.5).tolist() == [2, 1]
    assert dmn.confident_probs(p, 0.1).tolist() == [2]  # at least one view
    zt, zm = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 3.0, 0.0])
    mixed = dmn.mix_logits(zt, zm, 0.3)
    expected = (zt.softmax(-1) + 0.3 * zm.softmax(-1)) / 1.3
    assert torch.allclose(mixed.softmax(-1), expected, atol=1e-7)
    assert torch.equal(dmn.mix_logits(zt, zm, 0.0), zt)
    assert torch.allclose(dmn.mix_logits(zt, zt, 2.0), zt, atol=1e-6)  # the same distribution twice: CLIP's logits


# ---- the official arithmetic, transcribed --------------------------------------------------------


def official_dmn(
    views: list[torch.Tensor], text: torch.Tensor, beta: float, beta2: float, memory_size: int, selection: float
) -> torch.Tensor:
    """DMN's zero-shot loop (dmn_main.py:734-783, 850; get_image_pred :182-246; update_memory_bank
    :156-179; select_confident_samples :108-113; get_text_prediction :297-312), with the dynamic
    memory initialised as in fix_clip.py:384-398; returns each image's ``pred_vanilla + beta2 * pred_global``."""
    n_cls, dim = text.shape
    memory = torch.zeros(n_cls, memory_size, dim)
    entropy_mem = torch.zeros(n_cls, memory_size)
    count = torch.zeros(n_cls, 1).long()
    fixed = text.clone().unsqueeze(1)
    preds = []
    for feats in views:
        img_text = (100.0 * feats @ text.t()).softmax(-1)
        batch_entropy = -(img_text * torch.log(img_text + 1e-6)).sum(1)
        idx = torch.argsort(batch_entropy, descending=False)[: int(batch_entropy.size()[0] * selection)]
        mean_prob = img_text[idx].mean(0, keepdim=True)[0]
        label = mean_prob.max(0)[1].item()
        h = -(mean_prob * torch.log(mean_prob + 1e-8)).sum()
        if count[label] == memory_size:
            if (h < entropy_mem[label]).sum() != 0:
                slot = torch.sort(entropy_mem[label])[1][-1]
                memory[label][slot] = feats[:1]
                entropy_mem[label][slot] = h
        else:
            memory[label][count[label, 0].item()] = feats[:1]
            entropy_mem[label][count[label, 0].item()] = h
            count[label] += 1
        img = feats[:1]
        stored = torch.cat((memory, fixed), dim=1)
        keys = stored / stored.norm(dim=-1, keepdim=True)
        keys[stored.sum(-1) == 0] = 0
        query = img / img.norm(dim=-1, keepdim=True)
        sim = torch.exp(-beta * (-(query * keys).sum(-1) + 1))
        adaptive = (keys * sim.unsqueeze(-1)).sum(1)
        adaptive = adaptive / adaptive.norm(dim=-1, keepdim=True)
        adaptive = adaptive / adaptive.norm(dim=-1, keepdim=True)
        pred_global = (100.0 * adaptive @ img.unsqueeze(-1))[:, :, 0].softmax(dim=1)
        preds.append(img_text[:1] + beta2 * pred_global)
    return torch.cat(preds)


@pytest.mark.parametrize("beta2", [1.0, 0.3])
def test_stream_matches_the_official_arithmetic_on_fixed_features(beta2, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n, v, dim = 14, 10, 8
    text = torch.nn.functional.normalize(torch.randn(K, dim, generator=g), dim=-1)
    feats = torch.nn.functional.normalize(
        torch.randn(n, v, dim, generator=g) + 0.6 * text[torch.arange(n) % K].unsqueeze(1), dim=-1
    )
    model = make_classifier("vit")
    monkeypatch.setattr(model, "text_features", lambda: text)
    monkeypatch.setattr(view_method, "view_features", lambda model, batch, views, augment, seed: feats[batch["index"]])
    method = get_method("dmn")(
        model, {"views": v, "selection": 0.3, "memory_size": 2, "beta2": beta2, "batch_size": 4}, seed=0
    )
    got = stream(method, full_data(model, n))
    expected = official_dmn(list(feats), text, 5.5, beta2, 2, 0.3)
    assert torch.allclose(got.softmax(-1), expected / (1 + beta2), atol=1e-5)
    assert max(method.memory.count) == 2  # some class was full, so replacement was exercised


# ---- runs ------------------------------------------------------------------------------------------


def test_dmn_trains_nothing_leaves_the_model_alone_and_reads_after_writing():
    model = make_classifier("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method("dmn")(model, {"views": 4, "memory_size": 2, "batch_size": 3}, seed=0)
    assert not method.trainable_parameters() and not any(p.requires_grad for p in model.parameters())
    data = full_data(model, 9)
    zero = torch.cat([model(b["images"]).detach() for b in data.batches(9)])
    logits = stream(method, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert max(method.memory.count) <= 2 and not torch.allclose(logits, zero, atol=1e-3)
    assert method.history and "memory" in method.history[-1]
    assert not torch.allclose(logits[0], zero[0], atol=1e-3)  # the first image already attends to itself
    read_first = stream(
        get_method("dmn")(make_classifier("vit"), {"views": 4, "memory_size": 2, "write_first": False}, seed=0), data
    )
    assert torch.allclose(read_first[0], zero[0], atol=1e-3)  # an empty memory reads the text logits back
    same = stream(
        get_method("dmn")(make_classifier("vit"), {"views": 4, "memory_size": 2, "batch_size": 9}, seed=0), data
    )
    assert torch.allclose(same, logits, atol=1e-4)  # batching only groups the encoding


def test_dmn_on_the_embedded_model():
    """The shipped tiny CLIP (its real weights) on random images: finite logits, a filled memory, fp32."""
    model = ClipClassifier(load_clip("clipbench-tiny", "embedded"), CLASSNAMES)
    method = get_method("dmn")(model, {"views": 8}, seed=1)
    assert method.precision == "fp32"
    logits = stream(method, full_data(model, 24))
    assert logits.shape == (24, K) and torch.isfinite(logits).all() and len(method.memory) == 24
