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

RESULT = "result.json"
PREDS = "preds.npz"


def spec_hash(spec: dict[str, Any]) -> str:
    """A short, stable hash of a resolved run spec (sorted-key JSON, SHA-1, 16 hex digits)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


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


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The parsed ``result.json`` of a run directory, or None when absent or unreadable."""
    try:
        return json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None


def is_complete(run_dir: Path) -> bool:
    """True when the run finished successfully and both of its files are in place."""
    rec = read_result(run_dir)
    return rec is not None and rec.get("status") == "done" and (run_dir / PREDS).is_file()


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every parseable record under ``out/runs``, in a stable order (by directory name)."""
    runs = Path(out) / "runs"
    if not runs.is_dir():
        return []
    records = []
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        rec = read_result(d)
        if rec is not None:
            rec["_dir"] = str(d)
            records.append(rec)
    return records
