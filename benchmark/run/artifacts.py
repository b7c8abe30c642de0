"""What a run leaves beside its record: its log (everything it printed), predictions written and
read back before they count, and the environment it ran in."""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.paths import REPO_ROOT
from benchmark.core.records import file_sha256, write_npz

LOG = "run.log"
"""Everything a run printed (progress, warnings, its traceback), kept beside its record."""


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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "versions": versions,
        "git_commit": commit or None,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Tee:
    """A text stream that writes to a file as well as to the stream it stands in for."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[Any]:
    """Copy what the run prints (stdout and stderr) into ``run_dir/run.log``, replacing an older one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG, "w", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield log
        finally:
            sys.stdout, sys.stderr = saved


def _verified_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` to ``path``, reopen it and check every key and length; its SHA-256."""
    write_npz(path, arrays)
    with np.load(path) as z:
        if sorted(z.files) != sorted(arrays):
            raise OSError(f"{path}: written keys {sorted(z.files)} differ from {sorted(arrays)}")
        for key, value in arrays.items():
            if z[key].shape != np.shape(value):
                raise OSError(f"{path}: {key} reads back with shape {z[key].shape}, wrote {np.shape(value)}")
    return file_sha256(path)
