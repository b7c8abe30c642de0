"""The engine's contracts: hyper-parameter validation, the trainable-subset check, schedules,
records on disk, and the registry."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.adapt.adapter import Adapter, HyperParameterError
from benchmark.core.records import (
    file_sha256,
    is_complete,
    load_records,
    read_result,
    scan_records,
    spec_hash,
    write_json,
    write_npz,
)
from benchmark.core.schema import RECORD_SCHEMA
from benchmark.core.spec import PROTOCOL_VERSION
from benchmark.registry import get_method, method_names
from tests.conftest import make_classifier, make_data


class _AllParams(Adapter):
    name = "all_params"

    def configure(self):
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        return params


class _NoParams(Adapter):
    name = "no_params"

    def configure(self):
        return []


class _NormEntropy(Adapter):
    name = "norm_entropy"
    defaults = {"epochs": 2, "batch_size": 8, "lr": 1e-2}

    def configure(self):
        self.model.eval()
        params = []
        for _, m in self.model.norm_layers():
            m.weight.requires_grad_(True)
            params.append(m.weight)
        return params

    def loss(self, batch):
        p = self.model(batch["images"]).softmax(-1)
        return -(p * p.clamp_min(1e-8).log()).sum(-1).mean()


def test_adaptive_method_must_update_a_strict_subset():
    with pytest.raises(AssertionError, match="every parameter"):
        _AllParams(make_classifier("vit"))
    with pytest.raises(AssertionError, match="no parameters"):
        _NoParams(make_classifier("vit"))


def test_hparams_unknown_key_and_bad_type_are_named():
    with pytest.raises(HyperParameterError, match="norm_entropy.nope"):
        _NormEntropy.resolve_hparams({"nope": 1})
    with pytest.raises(HyperParameterError, match="norm_entropy.epochs expects an integer"):
        _NormEntropy.resolve_hparams({"epochs": 1.5})
    with pytest.raises(HyperParameterError, match="must be one of"):
        _NormEntropy.resolve_hparams({"optimizer": "lbfgs"})
    hp = _NormEntropy.resolve_hparams({"lr": 1, "nesterov": "false"})
    assert hp["lr"] == 1.0 and isinstance(hp["lr"], float) and hp["nesterov"] is False
    assert hp["epochs"] == 2 and hp["momentum"] == 0.0


def test_cosine_schedule_with_constant_warmup():
    a = _NormEntropy(make_classifier("vit"), {"warmup_epochs": 1, "warmup_lr": 1e-5, "lr": 1e-2})
    assert a.lr_factor(0, 100, 10) == pytest.approx(1e-3)
    assert a.lr_factor(10, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert a.lr_factor(50, 100, 0) == pytest.approx(0.5)


def test_default_loop_updates_only_configured_params_and_reset_restores():
    model = make_classifier("vit")
    a = _NormEntropy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a.adapt(make_data(model, n=16))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("weight") and ("ln_" in k) for k in changed)
    assert len(a.history) == 2 and all(math.isfinite(h["loss"]) for h in a.history)
    a.reset()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_loss_curve_windows_cover_the_whole_budget():
    """record_loss averages the step losses in HISTORY_POINTS windows of the budget, the last ending at 1."""
    a = _NormEntropy(make_classifier("vit"))
    losses = [float(i) for i in range(1, 21)]
    for step, loss in enumerate(losses, 1):
        a.record_loss(loss, step, len(losses))
    assert [c["progress"] for c in a.curve] == [round(0.1 * k, 4) for k in range(1, 11)]
    assert [c["loss"] for c in a.curve] == [(losses[2 * k] + losses[2 * k + 1]) / 2 for k in range(10)]
    b = _NormEntropy(make_classifier("vit"))
    for step in range(1, 4):  # fewer steps than points: one entry per step
        b.record_loss(1.0, step, 3)
    assert len(b.curve) == 3 and b.curve[-1]["progress"] == 1.0


def test_same_seed_same_adaptation():
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = make_classifier("vit")
        a = _NormEntropy(model, seed=3)
        a.adapt(make_data(model, n=16, seed=3))
        results.append(torch.cat([p.detach().flatten() for p in a.trainable_parameters()]))
    assert torch.equal(results[0], results[1])


def valid_record(run: Path) -> dict:
    """A minimal done record of this schema for ``run``'s predictions (named by its spec's hash)."""
    spec = {
        "method": "zero_shot",
        "dataset": "synthetic",
        "domain": "photo",
        "setting": "oda",
        "protocol": "ueo",
        "seed": 1,
        "model": "clipbench-tiny",
        "pretrained": "embedded",
        "hparams": {},
        "device": "cpu",
        "protocol_version": PROTOCOL_VERSION,
    }
    return {
        "schema": RECORD_SCHEMA,
        "spec": spec,
        "hash": spec_hash(spec),
        "status": "done",
        "label": "zero_shot",
        "departures": {},
        "regime": "none",
        "precision": "fp32",
        "device": "cpu",
        "headline_score": "msp_cos",
        "scores": {},
        "metrics": {"test": {"auroc": float("nan")}},
        "preds_sha256": file_sha256(run / "preds.npz"),
    }


def test_records_atomic_and_complete(tmp_path):
    run = tmp_path / "runs" / "pending"
    assert not is_complete(run)
    write_npz(run / "preds.npz", {"x": np.arange(3)})
    assert not is_complete(run)
    rec = valid_record(run)
    run = run.rename(run.parent / rec["hash"])
    write_json(run / "result.json", rec)
    assert is_complete(run)
    assert read_result(run)["metrics"]["test"]["auroc"] is None
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "result.json").write_text("{not json")
    assert [r["status"] for r in load_records(tmp_path)] == ["done"]
    assert any("broken" in p and "unreadable" in p for p in scan_records(tmp_path)[1])


def test_atomic_writes_get_an_ordinary_files_mode(tmp_path):
    """Reports and records are readable like any file the user writes (mkstemp alone gives 0600)."""
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_spec_hash_is_stable_and_order_free():
    a = spec_hash({"method": "ueo", "hparams": {"lr": 1e-4, "epochs": 50}})
    b = spec_hash({"hparams": {"epochs": 50, "lr": 1e-4}, "method": "ueo"})
    assert a == b and len(a) == 16
    assert a != spec_hash({"method": "ueo", "hparams": {"lr": 1e-3, "epochs": 50}})
    assert json.loads(json.dumps({"h": a}))["h"] == a


def test_registry_lists_names_on_unknown_method():
    assert "zero_shot" in method_names()
    with pytest.raises(KeyError, match="zero_shot"):
        get_method("does_not_exist")


def test_a_context_initialised_from_words_equals_the_fixed_prompt():
    """The learnable prompt path (cut after the end token) gives the features of the written prompt."""
    from benchmark.model.clip import ClipClassifier, load_clip

    model = ClipClassifier(load_clip("clipbench-tiny", "embedded"), ["circle", "square", "Alarm_Clock"])
    fixed = model.class_embeddings(("a photo of a {}.",))
    model.enable_prompt_learning(4, "a photo of a")
    assert torch.allclose(model.text_features(), fixed, atol=1e-6)
    batched = model.text_features_for(torch.stack([model.prompt.ctx.detach()] * 2))
    assert torch.allclose(batched[1], fixed, atol=1e-6)
