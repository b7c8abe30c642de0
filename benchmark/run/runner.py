"""The runner: one resolved run spec in, one record on disk out.

A record is a directory ``<out>/runs/<hash>/`` named by the hash of the resolved spec. It holds
``preds.npz`` (per-sample predictions, scores and labels, so metrics can be recomputed without
rerunning) and ``result.json`` (spec, data facts, metrics, timings, versions, status), the
latter written last. A run whose record is complete is never recomputed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import platform
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.adapt.profiling import Profiler
from benchmark.adapt.scores import describe_score
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.adapt.views import ViewCache
from benchmark.core.hparams import method_label
from benchmark.core.metrics import LABEL_FREE, infomax_criterion
from benchmark.core.records import PREDS, RESULT, is_complete, read_record, write_json
from benchmark.core.schema import RECORD_SCHEMA
from benchmark.core.spec import RunSpec
from benchmark.data.fingerprint import data_fingerprint
from benchmark.model.clip import TEMPLATE_SETS, ClipClassifier, load_clip, resolve_pretrained
from benchmark.model.features import FeatureCache, frozen_image_features
from benchmark.registry import get_method
from benchmark.run.artifacts import LOG, _now, _verified_npz, environment, run_log  # noqa: F401

LOCK = ".lock"
"""``flock``-ed by the process computing a run; names its last holder (``host pid``)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=8)
def _load_split(
    dataset: str,
    domain: str,
    setting: str,
    protocol: str,
    data_root: str | None,
    resolution: int,
    full: bool = False,
    render_seed: int | None = None,
):
    from benchmark.data import load_split

    return load_split(
        dataset,
        domain=domain,
        setting=setting,
        protocol=protocol,
        data_root=Path(data_root) if data_root else None,
        resolution=resolution,
        full=full,
        render_seed=render_seed,
    )


def load_run_split(spec: RunSpec, data_root: str | None, resolution: int, full: bool = False):
    """The split a run uses (cached per process): a generated data set that resamples draws its
    images from the spec's ``render_seed``."""
    from benchmark.data import get_spec

    resample = get_spec(spec.dataset).layout.resample
    return _load_split(
        spec.dataset,
        spec.domain,
        spec.setting,
        spec.protocol,
        data_root,
        resolution,
        full,
        spec.render_seed if resample else None,
    )


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
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[bool]:
    """Hold ``run_dir``'s lock while computing it; yields False when another process holds it
    (with ``wait``, blocks until that process releases it or dies instead).

    An advisory ``flock`` on ``<run_dir>/.lock``: two sweeps sharing an ``--out`` (or two array
    tasks) never compute the same run at once, and the kernel drops the lock when its holder
    dies, even by SIGKILL, so a killed sweep leaves no stale lock behind. The file stays (removing
    it would let two processes lock different inodes); it names the last holder for diagnosis.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} {os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Errors that fail every later run too (no space, quota, read-only file system): they stop the sweep."""


def stops_sweep(err: BaseException) -> bool:
    """True when ``err`` would fail every later run the same way (see :data:`STOP_ERRNOS`)."""
    return isinstance(err, OSError) and err.errno in STOP_ERRNOS


def _discard(run_dir: Path) -> None:
    """Remove what an unfinished run left in ``run_dir``: temporary files, and predictions without their record.

    The caller holds the run's lock (or knows its writer is dead).
    """
    if not run_dir.is_dir():
        return
    for tmp in run_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not is_complete(run_dir):
        for name in (PREDS, LOG):  # predictions and a log without their record are no record
            with contextlib.suppress(OSError):
                (run_dir / name).unlink(missing_ok=True)


def discard_partial(run_dir: Path) -> None:
    """After a stop, leave nothing of an interrupted run in ``run_dir`` (unless another process holds its lock)."""
    if not run_dir.is_dir():
        return
    with contextlib.suppress(OSError), run_lock(run_dir) as mine:
        if mine:
            _discard(run_dir)


def _current(spec: RunSpec, run_dir: Path, data_root: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` when ``run_dir`` holds a complete record of ``spec`` on today's data; else
    ``(None, why it is computed again)`` (``why`` None: no record yet, or a failed run to retry).

    Not current: a broken or stale record (see ``read_record``), or one whose data fingerprint
    differs from the data's now (files added, removed or modified since).
    """
    if not (run_dir / RESULT).exists():
        return None, None
    rec, problem = read_record(run_dir)
    if rec is None:
        return None, problem
    if rec["status"] != "done":
        return None, None
    now = data_fingerprint(spec.dataset, spec.domain, data_root)
    then = (rec.get("data") or {}).get("fingerprint")
    if then != now:
        return None, f"{run_dir / RESULT}: its data changed since it ran (fingerprint {then} -> {now})"
    return {**rec, "skipped": True}, None


def execute(
    spec: RunSpec,
    out: Path,
    data_root: str | None = None,
    device: str = "cpu",
    *,
    profile: bool = False,
    feature_cache: bool = True,
    wait: bool = False,
) -> dict[str, Any]:
    """Run ``spec`` unless its record is complete; return the record (``skipped`` says which).

    A run another live process is computing right now is not started twice: it comes back with
    ``status: "busy"`` and ``skipped``. ``profile`` adds phase timings to the record;
    ``feature_cache`` lets frozen-encoder work reuse image features across runs. An interrupted run
    (``KeyboardInterrupt``, e.g. from a stop signal) leaves no record, no predictions and no
    temporary file behind. A failed record with ``stop_sweep`` set means every later run would
    fail the same way (no space left, see :func:`stops_sweep`): launchers stop the sweep.
    Frozen-encoder methods also reuse the features of the test images' augmented views
    (``benchmark.adapt.views``).
    """
    run_dir = Path(out) / "runs" / spec.hash
    rec, _ = _current(spec, run_dir, data_root)
    if rec is not None:
        return rec
    try:
        with run_lock(run_dir, wait=wait) as mine:
            if not mine:
                return {
                    "spec": spec.as_dict(),
                    "hash": spec.hash,
                    "status": "busy",
                    "skipped": True,
                    "error": "being computed by another process (its lock is held)",
                }
            rec, problem = _current(spec, run_dir, data_root)  # another process may have completed it meanwhile
            if rec is not None:
                return rec
            _discard(run_dir)  # what a killed earlier attempt left (we hold the lock: its writer is gone)
            try:
                rec = _compute(spec, run_dir, out, data_root, device, profile, feature_cache)
            except BaseException:  # interrupted: nothing half-written stays behind
                _discard(run_dir)
                raise
            if problem:
                rec["redone"] = problem
            return rec
    except OSError as err:  # the run's folder or lock cannot be created: no later run could either
        error = f"cannot create {run_dir}: {type(err).__name__}: {err}"
        return {
            "spec": spec.as_dict(),
            "hash": spec.hash,
            "status": "failed",
            "skipped": False,
            "error": error,
            "traceback": traceback.format_exc(),
            "stop_sweep": error,
        }


def _evaluate(spec: RunSpec, adapter, split, model, feature_cache: bool) -> tuple[dict, dict, dict, dict]:
    """Predictions, metrics (under every score), rejection thresholds and label-free criteria of one run.

    Transductive (and zero-shot) runs predict the test set after ``adapt`` and fit each score's
    label-free rejection threshold, and the ``unsupervised`` selection criterion, on the adapt
    set's predictions; online and episodic runs take the predictions made along the test stream
    (in the cell's seeded order) and fit both on them.
    """
    from benchmark.run.evaluate import PredictionSink, as_prediction, fit_thresholds, predict_set, score_predictions

    num_known = split.num_known
    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, dict] = {}
    parts: list[tuple[str, dict, np.ndarray]] = []
    if adapter.regime in ("online", "episodic"):
        data = UnlabeledData(
            split.test.images, device=model.device, seed=spec.derived_seed, full=split.test.full, sizes=split.test.sizes
        )
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
        frozen = (
            frozen_image_features(model, split.test.images)
            if feature_cache and not adapter.adapts and hasattr(adapter, "predict_features")
            else None
        )
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
        metrics[part] = score_predictions(p, labels, num_known, thresholds)
        arrays.update({f"{part}_{k}": v for k, v in p.items()})
        arrays[f"{part}_label"] = labels
    return arrays, metrics, thresholds, label_free


def _compute(
    spec: RunSpec, run_dir: Path, out: Path, data_root: str | None, device: str, profile: bool, feature_cache: bool
) -> dict[str, Any]:
    with run_log(run_dir) as log:
        log.write(
            f"{_now()} start {spec.label()} ({spec.hash}) on {device}, host {platform.node()} pid {os.getpid()}\n"
            f"hparams: {json.dumps(spec.hparams, sort_keys=True)}\n"
        )
        log.flush()
        record = _compute_logged(spec, run_dir, out, data_root, device, profile, feature_cache)
        if record.get("traceback"):
            log.write(record["traceback"])
        log.write(
            f"{_now()} {record['status']}"
            f"{': ' + record['error'] if record.get('error') else ''} in {record['timings']['total']:.1f} s\n"
        )
        return record


def _compute_logged(
    spec: RunSpec, run_dir: Path, out: Path, data_root: str | None, device: str, profile: bool, feature_cache: bool
) -> dict[str, Any]:
    from benchmark.data import get_spec
    from benchmark.run.evaluate import REJECTION_RULE

    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "spec": spec.as_dict(),
        "hash": spec.hash,
        "label": method_label(spec.method, spec.departures),
        "departures": spec.departures,
        "device": spec.device,
        "validation_domains": list(spec.validation_domains),
        "started": _now(),
        "environment": environment(),
    }
    timings: dict[str, float] = {}
    profiler = Profiler(device) if profile else None
    t_start = time.perf_counter()
    try:
        seed = spec.derived_seed
        seed_everything(seed)
        cls = get_method(spec.method)
        hparams = cls.check_resolved(spec.hparams)
        record.update(
            regime=hparams["regime"],
            precision=hparams["precision"],
            headline_score=get_spec(spec.dataset).protocol(spec.protocol).score,
        )

        t = time.perf_counter()
        loaded = load_clip(spec.model, spec.pretrained, device)
        timings["load_model"] = time.perf_counter() - t

        t = time.perf_counter()
        split = load_run_split(spec, data_root, loaded.image_size)
        model = ClipClassifier(loaded, split.classnames, TEMPLATE_SETS[hparams["prompts"]]).to(device)
        if feature_cache:
            model.feature_cache = FeatureCache.for_run(out, spec.model, resolve_pretrained(spec.model, spec.pretrained))
            model.view_cache = ViewCache.for_run(out, context=f"{spec.dataset}/{spec.domain}")
        adapter = cls(model, hparams, seed=seed, view_seed=spec.view_seed, resolved=True)
        if adapter.needs_full:
            split = load_run_split(spec, data_root, loaded.image_size, full=True)
        timings["load_data"] = time.perf_counter() - t
        record["data"] = {**split.info, "fingerprint": data_fingerprint(spec.dataset, spec.domain, data_root)}
        if profiler is not None:
            adapter.profiler = profiler

        t = time.perf_counter()
        if adapter.regime == "transductive":
            adapter.adapt(
                UnlabeledData(
                    split.adapt.images, device=device, seed=seed, full=split.adapt.full, sizes=split.adapt.sizes
                )
            )
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
        digest = _verified_npz(run_dir / PREDS, arrays)
        record.update(
            status="done",
            metrics=metrics,
            execution=adapter.describe(),
            preds_sha256=digest,
            scores={name: describe_score(name) for name in sorted(thresholds)},
            rejection={"rule": REJECTION_RULE, "thresholds": thresholds},
            label_free=label_free,
            history=adapter.history,
            curve=adapter.curve,
            num_trainable=sum(p.numel() for p in adapter.trainable_parameters()),
        )
    except Exception as err:  # a failed run is recorded, never lost; the sweep goes on unless no run could succeed
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        if stops_sweep(err):
            record["stop_sweep"] = record["error"]
    timings["total"] = time.perf_counter() - t_start
    record.update(timings=timings, finished=_now())
    try:
        write_json(run_dir / RESULT, record)
    except OSError as err:  # the record itself cannot be written: it is failed, and so would be the next ones
        error = f"cannot write {run_dir / RESULT}: {type(err).__name__}: {err}"
        record.update(status="failed", error=error, traceback=traceback.format_exc(), stop_sweep=error)
        with contextlib.suppress(OSError):  # predictions without their record are no record
            (run_dir / PREDS).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a failed record is small: it may still fit
            write_json(run_dir / RESULT, record)
    record["skipped"] = False
    return record
