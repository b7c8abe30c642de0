#!/usr/bin/env python
"""Benchmark unsupervised CLIP adaptation methods: ``python run_bench.py --methods ueo tent``."""

import gc
import os
import signal
import sys


def _stopped_while_starting(signum, frame):
    """Ctrl-C or SIGTERM while torch and friends load: nothing has run or been written yet."""
    print("stopped before any run started; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(128 + signum)


if __name__ == "__main__":
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _stopped_while_starting)

from benchmark.cli import main  # noqa: E402  (after the handlers: importing torch takes seconds)

if __name__ == "__main__":
    code = main()
    gc.freeze()  # the interpreter's final collections over torch's objects take seconds on a busy machine
    sys.exit(code)
