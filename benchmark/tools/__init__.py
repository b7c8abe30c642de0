"""Maintainer tools: the embedded model's pre-training."""
