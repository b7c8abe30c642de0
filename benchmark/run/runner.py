"""The runner: one resolved run spec in, one record on disk out.

A record is a directory ``<out>/runs/<hash>/`` named by the hash of the resolved spec. It holds
``preds.npz`` (per-sample predictions, scores and labels, so metrics can be recomputed without
rerunning) and ``result.json`` (spec, data facts, metrics, timings, versions, status), the
latter written last. A run whose record is complete is never recomputed.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import random
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import PROTOCOL_VERSION
from benchmark.core.paths import REPO_ROOT
from benchmark.model.features import FeatureCache, frozen_image_features
from benchmark.model.clip import TEMPLATE_SETS, ClipClassifier, load_clip, resolve_pretrained
from benchmark.adapt.profiling import Profiler
from benchmark.core.records import PREDS, RESULT, is_complete, read_result, spec_hash, write_json, write_npz
from benchmark.registry import get_method
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.adapt.views import ViewCache

LOCK = ".lock"
"""``flock``-ed by the process computing a run; names its last holder (``host pid``)."""


@dataclass
class RunSpec:
    """Everything that determines a run's result (its hash names the record directory)."""

    method: str
    dataset: str
    domain: str
    setting: str
    protocol: str
    seed: int
    model: str
    pretrained: str
    hparams: dict[str, Any] = field(default_factory=dict)
    protocol_version: int = PROTOCOL_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def hash(self) -> str:
        return spec_hash(self.as_dict())

    @property
    def derived_seed(self) -> int:
        """Seed of all randomness in the run: a hash of the user seed and what is being run.

        Different (method, data set, domain, setting) cells get independent streams from the same
        user seed, as in DomainBed's ``seed_hash``.
        """
        key = json.dumps([self.seed, self.method, self.dataset, self.domain, self.setting, self.protocol])
        return int(hashlib.md5(key.encode()).hexdigest(), 16) % (2**31)

    @property
    def data_seed(self) -> int:
        """Seed of what every method of a cell must share: generated images, stream and evaluation order.

        A hash of the user seed and the cell without the method, so that paired comparisons
        between methods see the same images in the same order.
        """
        key = json.dumps([self.seed, "data", self.dataset, self.domain, self.setting, self.protocol])
        return int(hashlib.md5(key.encode()).hexdigest(), 16) % (2**31)

    @property
    def view_seed(self) -> int:
        """Seed of the test images' augmented views (``view_features``): every method of a (user
        seed, data set, domain) draws the same views of an image, whatever the setting, so
        methods are compared on the same views and share their features (the view cache)."""
        key = json.dumps([self.seed, "views", self.dataset, self.domain])
        return int(hashlib.md5(key.encode()).hexdigest(), 16) % (2**31)

    @property
    def render_seed(self) -> int:
        """Seed of a generated data set's images when its spec resamples them per run seed.

        It depends on the user seed and the domain only, so every setting and protocol of a seed
        draws from the same images, as they do for a data set on disk.
        """
        key = json.dumps([self.seed, "render", self.dataset, self.domain])
        return int(hashlib.md5(key.encode()).hexdigest(), 16) % (2**31)

    def label(self) -> str:
        return f"{self.method} {self.dataset}/{self.domain}/{self.setting} seed={self.seed}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=8)
def _load_split(dataset: str, domain: str, setting: str, protocol: str, data_root: str | None, resolution: int,
                full: bool = False, render_seed: int | None = None):
    from benchmark.data import load_split

    return load_split(
        dataset, domain=domain, setting=setting, protocol=protocol,
        data_root=Path(data_root) if data_root else None, resolution=resolution, full=full, render_seed=render_seed,
    )


def load_run_split(spec: RunSpec, data_root: str | None, resolution: int, full: bool = False):
    """The split a run uses (cached per process): a generated data set that resamples draws its
    images from the spec's ``render_seed``."""
    from benchmark.data import get_spec

    resample = get_spec(spec.dataset).layout.resample
    return _load_split(spec.dataset, spec.domain, spec.setting, spec.protocol, data_root, resolution, full,
                       spec.render_seed if resample else None)


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Package versions, git commit and host facts recorded in every result."""
    versions = {}
    for pkg in ("torch", "torchvision", "open_clip_torch", "mmengine", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    repo = REPO_ROOT
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"versions": versions, "git_commit": commit or None, "git_dirty": dirty,
            "python": platform.python_version(), "host": platform.node()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def adapt_rows_in_test(split) -> np.ndarray | None:
    """Row of each adapt image in the test set when the split is transductive, else None.

    In transductive data sets (Office, Office-Home, VisDA, synthetic) the adapt set is a subset
    of the test set, so the adapted model is evaluated once and the adapt-set metrics are taken
    from the same predictions instead of a second forward pass.
    """
    position = {path: i for i, path in enumerate(split.test.paths)}
    rows = [position.get(path) for path in split.adapt.paths]
    if any(r is None for r in rows):
        return None
    rows = np.asarray(rows, dtype=np.int64)
    same = torch.equal(split.adapt.images, split.test.images[torch.from_numpy(rows)])
    return rows if same else None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir``'s lock while computing it; yields False when another process holds it.

    An advisory ``flock`` on ``<run_dir>/.lock``: two sweeps sharing an ``--out`` (or two array
    tasks) never compute the same run at once, and the kernel drops the lock when its holder
    dies, even by SIGKILL, so a killed sweep leaves no stale lock behind. The file stays (removing
    it would let two processes lock different inodes); it names the last holder for diagnosis.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} {os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def _reused(run_dir: Path) -> dict[str, Any] | None:
    if not is_complete(run_dir):
        return None
    rec = read_result(run_dir)
    rec["skipped"] = True
    return rec


def execute(
    spec: RunSpec, out: Path, data_root: str | None = None, device: str = "cpu", *,
    profile: bool = False, feature_cache: bool = True,
) -> dict[str, Any]:
    """Run ``spec`` unless its record is complete; return the record (``skipped`` says which).

    A run another live process is computing right now is not started twice: it comes back with
    ``status: "busy"`` and ``skipped``. ``profile`` adds phase timings to the record;
    ``feature_cache`` lets frozen-encoder work reuse image features across runs, and frozen-encoder
    episodic methods the features of the test images' augmented views (``benchmark.adapt.views``).
    """
    run_dir = Path(out) / "runs" / spec.hash
    rec = _reused(run_dir)
    if rec is not None:
        return rec
    with run_lock(run_dir) as mine:
        if not mine:
            return {"spec": spec.as_dict(), "hash": spec.hash, "status": "busy", "skipped": True,
                    "error": "being computed by another process (its lock is held)"}
        rec = _reused(run_dir)  # another process may have completed it meanwhile
        return rec if rec is not None else _compute(spec, run_dir, out, data_root, device, profile, feature_cache)


def _evaluate(spec: RunSpec, adapter, split, model, feature_cache: bool) -> tuple[dict, dict, dict, dict]:
    """Predictions, metrics (under every score), rejection thresholds and label-free criteria of one run.

    Transductive (and zero-shot) runs predict the test set after ``adapt`` and fit each score's
    label-free rejection threshold, and the ``unsupervised`` selection criterion, on the adapt
    set's predictions; online and episodic runs take the predictions made along the test stream
    (in the cell's seeded order) and fit both on them.
    """
    from benchmark.run.evaluate import PredictionSink, as_prediction, fit_thresholds, predict_set, score_predictions
    from benchmark.report.selection import LABEL_FREE, infomax_criterion

    num_known = split.num_known
    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, dict] = {}
    parts: list[tuple[str, dict, np.ndarray]] = []
    if adapter.regime in ("online", "episodic"):
        data = UnlabeledData(split.test.images, device=model.device, seed=spec.derived_seed,
                             full=split.test.full, sizes=split.test.sizes)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.data_seed))
        sink = PredictionSink(len(data), model.num_classes)
        for index, out in adapter.stream(data, order):
            sink.add(index, *as_prediction(out))
        test = sink.result()
        thresholds = fit_thresholds(test)
        label_free = {LABEL_FREE: infomax_criterion(sink.probs)}
        parts.append(("test", test, split.test.labels))
        arrays["test_order"] = order.numpy()
    else:
        frozen = (frozen_image_features(model, split.test.images)
                  if feature_cache and not adapter.adapts and hasattr(adapter, "predict_features") else None)
        test_sink = predict_set(adapter, split.test.images, seed=spec.data_seed, features=frozen)
        test = test_sink.result()
        rows = adapt_rows_in_test(split)
        if rows is None:
            adapt_sink = predict_set(adapter, split.adapt.images, seed=spec.data_seed)
            adapt, adapt_probs = adapt_sink.result(), adapt_sink.probs
        else:
            adapt, adapt_probs = {k: v[rows] for k, v in test.items()}, test_sink.probs[rows]
        thresholds = fit_thresholds(adapt)
        label_free = {LABEL_FREE: infomax_criterion(adapt_probs)}
        parts += [("test", test, split.test.labels), ("adapt", adapt, split.adapt.labels)]
        if adapter.online_predictions:
            sink = PredictionSink(len(split.adapt.labels), model.num_classes)
            for index, out in adapter.online_predictions:
                sink.add(index, *as_prediction(out))
            parts.append(("online", sink.result(), split.adapt.labels))
    for part, p, labels in parts:
        metrics["adapt_online" if part == "online" else part] = score_predictions(p, labels, num_known, thresholds)
        arrays.update({f"{part}_{k}": v for k, v in p.items()})
        arrays[f"{part}_label"] = labels
    return arrays, metrics, thresholds, label_free


def _compute(spec: RunSpec, run_dir: Path, out: Path, data_root: str | None, device: str,
             profile: bool, feature_cache: bool) -> dict[str, Any]:
    from benchmark.data import get_spec
    from benchmark.run.evaluate import REJECTION_RULE

    record: dict[str, Any] = {"spec": spec.as_dict(), "hash": spec.hash, "started": _now(), "device": device}
    record.update(environment())
    timings: dict[str, float] = {}
    profiler = Profiler(device) if profile else None
    t_start = time.perf_counter()
    try:
        seed = spec.derived_seed
        seed_everything(seed)
        cls = get_method(spec.method)
        hparams = cls.resolve_hparams(spec.hparams)
        record.update(regime=hparams["regime"], headline_score=get_spec(spec.dataset).protocol(spec.protocol).score)

        t = time.perf_counter()
        loaded = load_clip(spec.model, spec.pretrained, device)
        timings["load_model"] = time.perf_counter() - t

        t = time.perf_counter()
        split = load_run_split(spec, data_root, loaded.image_size)
        model = ClipClassifier(loaded, split.classnames, TEMPLATE_SETS[hparams["prompts"]]).to(device)
        if feature_cache:
            model.feature_cache = FeatureCache.for_run(out, spec.model, resolve_pretrained(spec.model, spec.pretrained))
            model.view_cache = ViewCache.for_run(out, context=f"{spec.dataset}/{spec.domain}")
        adapter = cls(model, hparams, seed=seed, view_seed=spec.view_seed)
        if adapter.needs_full:
            split = load_run_split(spec, data_root, loaded.image_size, full=True)
        timings["load_data"] = time.perf_counter() - t
        record["data"] = split.info
        if profiler is not None:
            adapter.profiler = profiler

        t = time.perf_counter()
        if adapter.regime == "transductive":
            adapter.adapt(UnlabeledData(split.adapt.images, device=device, seed=seed,
                                        full=split.adapt.full, sizes=split.adapt.sizes))
        timings["adapt"] = time.perf_counter() - t

        t = time.perf_counter()
        arrays, metrics, thresholds, label_free = _evaluate(spec, adapter, split, model, feature_cache)
        timings["evaluate"] = time.perf_counter() - t
        if adapter.regime in ("online", "episodic"):
            timings["adapt"] = timings.pop("evaluate")
        if profiler is not None:
            profiler.seconds["evaluate"] += timings.get("evaluate", 0.0)
            profiler.count("evaluate", len(split.test.labels))
            profiler.seconds["adapt_total"] += timings["adapt"]
            record["profile"] = profiler.summary()
        cache = getattr(model, "feature_cache", None)
        if cache is not None:
            record["feature_cache"] = {"hits": cache.hits, "misses": cache.misses}
        views = getattr(model, "view_cache", None)
        if views is not None:
            views.flush()
            record["view_cache"] = views.stats()

        run_dir.mkdir(parents=True, exist_ok=True)
        write_npz(run_dir / PREDS, arrays)
        record.update(status="done", hparams=hparams, metrics=metrics, execution=adapter.describe(),
                      scores=sorted(thresholds), rejection={"rule": REJECTION_RULE, "thresholds": thresholds},
                      label_free=label_free,
                      history=adapter.history, curve=adapter.curve, num_trainable=sum(p.numel() for p in adapter.trainable_parameters()))
    except Exception as err:  # a failed run is recorded, never lost; the sweep goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    timings["total"] = time.perf_counter() - t_start
    record.update(timings=timings, finished=_now())
    write_json(run_dir / RESULT, record)
    record["skipped"] = False
    return record
