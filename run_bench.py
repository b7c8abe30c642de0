#!/usr/bin/env python
"""Benchmark unsupervised CLIP adaptation methods: ``python run_bench.py --methods ueo tent``."""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
