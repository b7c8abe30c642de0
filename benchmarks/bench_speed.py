"""How long the embedded benchmark takes: ``make bench``'s run and zero-shot alone, several times each.

    python benchmarks/bench_speed.py [--repeats 3] [--only default|zero_shot]

Each repeat is a fresh ``python run_bench.py`` process with a fresh ``--out`` (so nothing is
reused: no records, no feature cache), timed from start to exit. Reports the median and the
range of the wall time, and from the records the median seconds per run of each method and its
images per second (adapted plus evaluated images over the run's time).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.core.records import load_records  # noqa: E402

COMMANDS = {"default": ["--launcher", "local", "--workers", "2"], "zero_shot": ["--methods", "zero_shot"]}
"""``default`` is what ``make bench`` runs (every method, two local workers); ``zero_shot`` runs inline."""


def timed_run(extra: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds of one fresh ``run_bench.py`` process, and its records."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "run_bench.py"), "--out", tmp, *extra]
        start = time.perf_counter()
        status = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if status.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{status.stderr[-3000:]}")
        return wall, load_records(Path(tmp))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=sorted(COMMANDS), default=None)
    args = p.parse_args()
    for name, extra in COMMANDS.items():
        if args.only and name != args.only:
            continue
        walls, per_method = [], defaultdict(list)
        for i in range(args.repeats):
            wall, records = timed_run(extra)
            walls.append(wall)
            for rec in records:
                t = rec["timings"]["total"]
                images = rec["data"]["n_test"] + (
                    rec["data"]["n_adapt"] * rec["spec"]["hparams"].get("epochs", 1)
                    if rec.get("regime") == "transductive"
                    else 0
                )
                per_method[rec["spec"]["method"]].append((t, images / t))
            print(f"{name} run {i + 1}: {wall:.1f} s wall, {len(records)} runs", flush=True)
        print(
            f"\n{name}: median {statistics.median(walls):.1f} s wall (min {min(walls):.1f}, max {max(walls):.1f}, "
            f"{len(walls)} runs of `python run_bench.py {' '.join(extra)}`)"
        )
        print("| method | s per run (median) | images/s (median) |\n|---|---|---|")
        for method, values in sorted(per_method.items()):
            secs = statistics.median(v[0] for v in values)
            rate = statistics.median(v[1] for v in values)
            print(f"| {method} | {secs:.2f} | {rate:.0f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
