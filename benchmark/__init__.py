"""clipbench: a benchmark harness for unsupervised CLIP adaptation in the open-set setting."""

__version__ = "0.1.0"

PROTOCOL_VERSION = 2
"""Bumped whenever a change alters what a run computes; part of every run hash."""
