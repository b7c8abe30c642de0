"""The view cache: the same features as no cache, shared by every frozen-encoder method of a seed, keyed safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_classifier, make_data

from benchmark.adapt.augment import Augment
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.adapt.views import ByteLRU, ViewCache, encoder_fingerprint, view_features
from benchmark.core.spec import RunSpec
from benchmark.registry import get_method

RRC = Augment("rrc", scale=(0.08, 1.0), interpolation="bilinear")
SEED = 7


def frozen_model():
    """The tiny ViT in eval mode, nothing requiring a gradient: what a frozen-encoder method leaves."""
    model = make_classifier("vit").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def full_data(model, n: int, seed: int = 0) -> UnlabeledData:
    data = make_data(model, n, seed)
    r = data.images.shape[-1]
    sizes = np.stack([np.full(n, r), np.arange(n) % 3 + r - 2], axis=1)  # some images narrower than the frame
    return UnlabeledData(data.images, seed=seed, full=data.images, sizes=sizes)


def one_batch(data: UnlabeledData, size: int | None = None) -> dict:
    return next(data.batches(size or len(data)))


def attach(model, root=None, context: str = "") -> ViewCache:
    """A cache with a private memory LRU, so tests never share entries through the process-wide one."""
    model.view_cache = ViewCache(root, context, memory=ByteLRU(1 << 26))
    return model.view_cache


def test_cached_features_equal_uncached_bit_for_bit_and_hit_on_the_second_call():
    model = frozen_model()
    data = full_data(model, 5)
    batch = one_batch(data)
    plain = view_features(model, batch, 6, RRC, SEED)
    assert plain.shape == (5, 6, model.text_features().shape[1])
    cache = attach(model)
    cold = view_features(model, batch, 6, RRC, SEED)
    warm = view_features(model, batch, 6, RRC, SEED)
    assert torch.equal(cold, plain) and torch.equal(warm, plain)
    assert cache.stats() == {"hits": 5, "disk_hits": 0, "misses": 5, "bypassed": 0}
    warm += 1  # the caller's tensor is its own: the cache is untouched
    assert torch.equal(view_features(model, batch, 6, RRC, SEED), plain)


def test_views_do_not_depend_on_the_batching_bit_for_bit():
    """Each image's views are encoded as one batch of V, so any batch size gives the same bits."""
    model = frozen_model()
    data = full_data(model, 5)
    whole = view_features(model, one_batch(data), 4, RRC, SEED)
    pieces = torch.cat([view_features(model, b, 4, RRC, SEED) for b in data.batches(2)])
    assert torch.equal(whole, pieces)
    first = view_features(model, one_batch(data), 1, RRC, SEED)[:, 0]
    assert torch.allclose(first, whole[:, 0], atol=1e-5)  # view 0 is the test view (encoded in a batch of 1 here)
    assert torch.allclose(first, model.image_features(one_batch(data)["images"]), atol=1e-5)


def test_seeds_augmentations_images_and_view_counts_never_collide():
    model = frozen_model()
    data = full_data(model, 4)
    batch = one_batch(data)
    cache = attach(model)
    base = view_features(model, batch, 4, RRC, SEED)
    other_seed = view_features(model, batch, 4, RRC, SEED + 1)
    other_aug = view_features(model, batch, 4, Augment("rrc", scale=(0.5, 1.0), interpolation="bilinear"), SEED)
    bicubic = view_features(model, batch, 4, Augment("rrc", scale=(0.08, 1.0), interpolation="bicubic"), SEED)
    other_domain = view_features(model, one_batch(full_data(model, 4, seed=1)), 4, RRC, SEED)  # same indices
    more = view_features(model, batch, 6, RRC, SEED)
    assert cache.hits == 0 and cache.misses == 6 * 4  # nothing was served from another's entry
    for other in (other_seed, other_aug, bicubic, other_domain):
        assert not torch.equal(other[:, 1:], base[:, 1:])
    assert torch.equal(other_seed[:, 0], base[:, 0])  # the test view is the same
    # No prefix reuse: the augmentation draws all of an image's boxes in one call, so the first 3
    # augmented views of a draw of 5 are not the draw of 3 (the view count is part of the key).
    assert not torch.equal(more[:, :4], base)


def test_a_second_method_of_the_same_seed_hits_and_gets_what_it_would_have_computed():
    """TPT fills the cache; ZERO, MTA and TDA (crops without AugMix) of the same view seed only read it.

    Each method gets its own model, as each run does; the cache (memory) is shared, as in a sweep.
    """
    n, views = 4, 6
    others = (("zero", {}), ("mta", {}), ("tda", {"augmix": False}))
    plain = {}
    for name, hp in others:
        method = get_method(name)(make_classifier("vit"), {"views": views, "batch_size": 3, **hp}, view_seed=SEED)
        plain[name] = torch.cat([o for _, o in method.stream(full_data(method.model, n))])
    cache = ViewCache(None, "", memory=ByteLRU(1 << 26))
    model = make_classifier("vit")
    model.view_cache = cache
    tpt = get_method("tpt")(model, {"views": views, "batch_size": 2}, seed=1, view_seed=SEED)
    list(tpt.stream(full_data(model, n)))
    assert cache.misses == n and cache.hits == 0
    for name, hp in others:
        cache.hits = 0
        model = make_classifier("vit")
        model.view_cache = cache
        method = get_method(name)(model, {"views": views, "batch_size": 3, **hp}, seed=2, view_seed=SEED)
        got = torch.cat([o for _, o in method.stream(full_data(model, n))])
        assert cache.hits == n and cache.misses == n, name
        assert torch.equal(got, plain[name]), name


def test_disk_round_trip_between_two_cache_instances(tmp_path):
    model = frozen_model()
    data = full_data(model, 5)
    batch = one_batch(data)
    first = attach(model, tmp_path, "synthetic/sketch")
    expected = view_features(model, batch, 4, RRC, SEED)
    assert not list(tmp_path.rglob("*.pt"))  # written at flush, not per image
    first.flush()
    (segment,) = tmp_path.rglob("*.pt")
    second = attach(model, tmp_path, "synthetic/sketch")  # a fresh memory, as in another process
    got = view_features(model, batch, 4, RRC, SEED)
    assert torch.equal(got, expected)
    assert second.stats() == {"hits": 0, "disk_hits": 5, "misses": 0, "bypassed": 0}
    assert torch.equal(view_features(model, batch, 4, RRC, SEED), expected) and second.hits == 5
    # a corrupt segment is ignored (recomputed), never fatal
    segment.write_bytes(b"not a tensor file")
    third = attach(model, tmp_path, "synthetic/sketch")
    assert torch.equal(view_features(model, batch, 4, RRC, SEED), expected) and third.misses == 5


def test_only_a_frozen_encoder_uses_the_cache_and_its_weights_are_in_the_key():
    model = frozen_model()
    batch = one_batch(full_data(model, 3))
    cache = attach(model)
    view_features(model, batch, 4, RRC, SEED)
    model.visual.train()
    view_features(model, batch, 4, RRC, SEED)
    model.visual.eval()
    next(model.visual.parameters()).requires_grad_(True)
    view_features(model, batch, 4, RRC, SEED)
    next(model.visual.parameters()).requires_grad_(False)
    assert cache.bypassed == 2 and cache.misses == 3 and cache.hits == 0
    before = encoder_fingerprint(model)
    with torch.no_grad():
        model.visual.ln_post.weight.mul_(1.5)  # changed in place, still frozen
    assert encoder_fingerprint(model) != before
    changed = view_features(model, batch, 4, RRC, SEED)
    assert cache.hits == 0 and cache.misses == 6  # a new key: never another state's features
    attach(model)
    assert torch.equal(view_features(model, batch, 4, RRC, SEED), changed)


def test_the_memory_is_bounded_in_bytes():
    lru = ByteLRU(3 * 64)
    for i in range(5):
        lru.put(str(i), torch.zeros(16))  # 64 bytes each
    assert lru.used == 3 * 64 and len(lru) == 3 and lru.get("0") is None and lru.get("4") is not None
    lru.get("2")
    lru.put("5", torch.zeros(16))
    assert lru.get("3") is None and lru.get("2") is not None  # the least recently used went first
    lru.put("big", torch.zeros(1000))
    assert lru.get("big") is None and lru.used <= lru.limit


def test_every_method_of_a_cell_gets_the_same_view_seed():
    spec = dict(dataset="synthetic", domain="sketch", setting="oda", protocol="ueo", seed=1, model="m", pretrained="p")
    a, b = RunSpec(method="tpt", **spec), RunSpec(method="zero", **spec)
    assert a.view_seed == b.view_seed and a.derived_seed != b.derived_seed
    assert RunSpec(method="tpt", **{**spec, "setting": "opda"}).view_seed == a.view_seed
    assert RunSpec(method="tpt", **{**spec, "seed": 2}).view_seed != a.view_seed
    assert RunSpec(method="tpt", **{**spec, "domain": "photo"}).view_seed != a.view_seed


@pytest.mark.parametrize("views", [1, 3])
def test_view_features_shape_and_errors(views):
    model = frozen_model()
    batch = one_batch(full_data(model, 2))
    assert view_features(model, batch, views, RRC, SEED).shape[:2] == (2, views)
    with pytest.raises(ValueError):
        view_features(model, batch, 0, RRC, SEED)
