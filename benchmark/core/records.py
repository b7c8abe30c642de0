"""Run records on disk: one directory per run, files written atomically, ``result.json`` last.

A run directory is complete when its ``result.json`` parses and says ``status: done``; a
half-written file can never be observed because every file is written to a temporary name in
the same directory and renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.schema import problems
from benchmark.core.spec import PROTOCOL_VERSION, spec_hash

RESULT = "result.json"
PREDS = "preds.npz"


def _umask() -> int:
    """The process's file-creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in its folder and a rename: readers see old or new, never half."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file an ordinary file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    """Plain JSON: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write ``obj`` as indented JSON (NaN written as null)."""
    atomic_write(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write compressed arrays."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The parsed ``result.json`` of a run directory, or None when absent or unreadable."""
    try:
        return json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None


def read_record(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a valid record of this schema, else ``(None, what is wrong)``.

    Wrong: no or unparsable ``result.json``, a schema or protocol version other than this one's,
    a hollow record, a folder not named by its spec's hash, or (for a done run) a ``preds.npz``
    that is missing or does not match the checksum the record stores.
    """
    path = run_dir / RESULT
    if not path.is_file():
        return None, f"{path}: no result.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{path}: unreadable ({type(err).__name__}: {err})"
    found = problems(rec)
    if found:
        return None, f"{path}: {'; '.join(found)}"
    version = rec["spec"].get("protocol_version")
    if version != PROTOCOL_VERSION:
        return (
            None,
            f"{path}: protocol version {version!r}, this version computes {PROTOCOL_VERSION} (rerun to recompute)",
        )
    if rec["hash"] != run_dir.name or spec_hash(rec["spec"]) != rec["hash"]:
        return None, f"{path}: its spec hashes to {spec_hash(rec['spec'])}, not to its folder's name {run_dir.name}"
    if rec["status"] == "done":
        preds = run_dir / PREDS
        if not preds.is_file():
            return None, f"{preds}: missing"
        if file_sha256(preds) != rec["preds_sha256"]:
            return None, f"{preds}: does not match the checksum in result.json (truncated or replaced)"
    return rec, None


def is_complete(run_dir: Path) -> bool:
    """True when the run finished successfully and its record and predictions check out."""
    rec, _ = read_record(run_dir)
    return rec is not None and rec["status"] == "done"


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every valid record under ``out/runs``, in folder order (for scripts and notebooks)::

    pd.json_normalize(load_records("results"))   # one row per run, nested keys dotted
    """
    return [rec for _, rec in scan_records(out)[0]]


def scan_records(out: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Every valid record under ``out/runs`` as ``(folder, record)`` in folder order, and a line per
    folder whose record is not valid (path and what is wrong): those are left out of every table."""
    runs = Path(out) / "runs"
    if not runs.is_dir():
        return [], []
    records, bad = [], []
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        if not (d / RESULT).exists():
            continue  # a run in progress or one never finished: not a record yet
        rec, problem = read_record(d)
        if rec is None:
            bad.append(problem)
        else:
            records.append((d, rec))
    return records, bad
