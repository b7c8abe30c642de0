"""The feature cache: same numbers as no cache, reused across the methods of a seed, keyed safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmark.cli import main
from benchmark.core.records import load_records
from benchmark.model.features import FeatureCache, frozen_image_features
from methods.pseudo_label import PseudoLabel
from methods.ueo import UEO
from tests.conftest import make_classifier, make_data

ZS = ["--datasets", "synthetic", "--domains", "sketch", "--methods", "zero_shot"]


def test_zero_shot_metrics_and_predictions_equal_without_cache(tmp_path: Path):
    assert main([*ZS, "--seeds", "1", "2", "--out", str(tmp_path / "cached")]) == 0
    assert main([*ZS, "--seeds", "1", "--out", str(tmp_path / "plain"), "--no-feature-cache"]) == 0
    cached = {r["spec"]["seed"]: r for r in load_records(tmp_path / "cached")}
    (plain,) = load_records(tmp_path / "plain")
    assert json.dumps(cached[1]["metrics"], sort_keys=True) == json.dumps(plain["metrics"], sort_keys=True)
    run_a = tmp_path / "cached" / "runs" / cached[1]["hash"]
    run_b = tmp_path / "plain" / "runs" / plain["hash"]
    with np.load(run_a / "preds.npz") as a, np.load(run_b / "preds.npz") as b:
        for key in b.files:
            assert np.array_equal(a[key], b[key]), key
    assert cached[1]["feature_cache"] == {"hits": 0, "misses": 1}
    assert cached[2]["feature_cache"] == {"hits": 0, "misses": 1}  # each seed draws its own images
    assert (
        main(
            [
                *ZS[:-1],
                "ueo",
                "pseudo_label",
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "cached"),
                "--cfg-options",
                "ueo.epochs=1",
                "pseudo_label.epochs=1",
            ]
        )
        == 0
    )
    runs = {r["spec"]["method"]: r for r in load_records(tmp_path / "cached") if r["spec"]["seed"] == 1}
    # UEO's confidence weights encode the adapt set once; UPL's pseudo-labels of the same seed reuse it
    assert runs["ueo"]["feature_cache"]["misses"] == 1 and runs["pseudo_label"]["feature_cache"]["hits"] == 1
    assert "feature_cache" not in plain and not (tmp_path / "plain" / "features").exists()
    assert any((tmp_path / "cached" / "features").glob("*.pt"))


def _attach(model, root: Path) -> None:
    model.feature_cache = FeatureCache(root, "test-tiny-vit", None)


def test_ueo_weights_and_upl_selection_equal_without_cache(tmp_path: Path):
    plain = UEO(make_classifier("vit"), {"epochs": 1})
    data = make_data(plain.model, n=20)
    expected = plain.zero_shot_confidence(data)
    for _ in range(2):  # cold, then warm
        ueo = UEO(make_classifier("vit"), {"epochs": 1})
        _attach(ueo.model, tmp_path)
        assert torch.equal(ueo.zero_shot_confidence(data), expected)
    assert ueo.model.feature_cache.hits == 1
    upl, upl_cached = PseudoLabel(make_classifier("vit")), PseudoLabel(make_classifier("vit"))
    _attach(upl_cached.model, tmp_path)  # warm from UEO: same model, same images
    fixed = upl.model.class_embeddings(upl.model.templates)
    assert torch.equal(upl_cached.probabilities(data, fixed), upl.probabilities(data, fixed))
    assert upl_cached.model.feature_cache.hits == 1


def test_key_separates_images_weights_and_skips_train_mode(tmp_path: Path):
    model = make_classifier("vit")
    a, b = make_data(model, n=8, seed=0).images, make_data(model, n=8, seed=1).images
    cache = FeatureCache(tmp_path, "test-tiny-vit", None)
    other = FeatureCache(tmp_path, "test-tiny-vit", "some-tag")
    key = cache.key(model.mean, model.std, a, "cpu")
    assert key != cache.key(model.mean, model.std, b, "cpu")
    assert key != other.key(model.mean, model.std, a, "cpu")
    assert key != cache.key(model.mean, model.std, a, "cuda")
    model.feature_cache = cache
    model.visual.train()  # BatchNorm/dropout in train mode would not give the frozen features
    frozen_image_features(model, a)
    assert cache.hits == cache.misses == 0 and not list(tmp_path.glob("*.pt"))
