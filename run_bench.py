#!/usr/bin/env python
"""Benchmark unsupervised CLIP adaptation methods: ``python run_bench.py --methods ueo tent``."""
import gc
import sys

from benchmark.cli import main

if __name__ == "__main__":
    code = main()
    gc.freeze()  # the interpreter's final collections over torch's objects take seconds on a busy machine
    sys.exit(code)
