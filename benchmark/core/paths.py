"""The repository's own folders, defined once."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout: holds ``datasets/``, ``methods/``, ``configs/`` and ``results/``."""
DATASETS_DIR = REPO_ROOT / "datasets"
"""One folder per data set (``dataset.yaml``, ``classes.txt``), data not code."""
EMBEDDED_DIR = DATASETS_DIR / "synthetic"
EMBEDDED_MODEL = "clipbench-tiny"
"""The shipped model (``datasets/synthetic/clipbench-tiny.{json,pt}``), the default backbone."""
EMBEDDED_TAG = "embedded"
"""The ``--pretrained`` tag of the shipped weights."""
