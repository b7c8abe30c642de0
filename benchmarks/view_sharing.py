"""What sharing augmented views' features saves: a family of view-based methods against TPT alone.

    python benchmarks/view_sharing.py [--methods tpt ctpt tps zero mta] [--baseline tpt]
                                      [--seeds 1] [--views 8] [--repeats 1] [-- EXTRA run_bench ARGS]

Each measurement is a fresh ``python run_bench.py`` process with a fresh ``--out``, timed from
start to exit (wall seconds, and the child's CPU seconds, which a busy machine inflates less):

1. ``baseline``: the baseline method alone (its views computed and cached);
2. ``family``: every method of the family in one process (the first computes each image's
   views, the others read them from the in-memory cache);
3. ``family, no cache``: the same with ``--no-feature-cache`` (every method encodes its own views);
4. ``family, warm disk``: the same in another process whose records are fresh but whose feature
   folder (``$CLIPBENCH_FEATURES``) is the one ``family`` left: every view comes from disk.

Every method of the family that has a ``views`` hyper-parameter gets ``--views`` (default 8, the
embedded budget's TPT override), so all of them draw the same views. Methods not registered in
this checkout are left out and named. The goal: ``family`` under twice ``baseline``.
"""

from __future__ import annotations

import argparse
import os
import resource
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
from benchmark.registry import get_method, method_names  # noqa: E402


def timed_run(
    args: list[str], env: dict[str, str] | None = None, out: Path | None = None
) -> tuple[float, float, list[dict]]:
    """(wall seconds, CPU seconds, records) of one fresh ``run_bench.py`` process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = out or Path(tmp)
        cmd = [sys.executable, str(REPO / "run_bench.py"), "--out", str(out), *args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        status = subprocess.run(
            cmd,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if status.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{status.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, load_records(out)


def summary(records: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds per method (sum of the runs' ``total``) and the view-cache counters summed over runs."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        seconds[rec["spec"]["method"]] += rec["timings"]["total"]
        for k, v in (rec.get("view_cache") or {}).items():
            counts[k] += v
    return dict(seconds), dict(counts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["tpt", "ctpt", "tps", "zero", "mta"])
    p.add_argument("--baseline", default="tpt")
    p.add_argument("--seeds", nargs="+", default=["1"])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip-uncached", action="store_true", help="do not measure the family without the cache")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of every measured process (default: inherited); 1 is steadier on a busy machine",
    )
    p.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more hyper-parameters for every measured process (e.g. ctpt.augmix=false)",
    )
    p.add_argument("extra", nargs="*", help="more run_bench.py arguments (after --)")
    args = p.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    known = set(method_names())
    family = [m for m in args.methods if m in known]
    missing = [m for m in args.methods if m not in known]
    if args.baseline not in family:
        raise SystemExit(f"the baseline {args.baseline!r} must be one of the measured methods {family}")
    options = [f"{m}.views={args.views}" for m in family if "views" in get_method(m).hparam_defaults()]
    options += [o for o in args.cfg_options if o.split(".")[0] in family]
    common = ["--seeds", *args.seeds, *args.extra]

    def sweep(methods: list[str]) -> list[str]:
        """``--methods`` and the options of those methods (the command line refuses the others')."""
        mine = [o for o in options if o.split(".")[0] in methods]
        return ["--methods", *methods, *common, *(["--cfg-options", *mine] if mine else [])]

    print(f"family: {' '.join(family)}" + (f" (not registered here, left out: {' '.join(missing)})" if missing else ""))
    print(
        f"views: {args.views}; seeds: {' '.join(args.seeds)}; repeats: {args.repeats}; "
        f"OMP_NUM_THREADS: {os.environ.get('OMP_NUM_THREADS', 'unset')}\n",
        flush=True,
    )
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    details: dict[str, tuple[dict, dict]] = {}
    for r in range(args.repeats):
        plans = [("baseline", [args.baseline], {}), ("family", family, {})]
        if not args.skip_uncached:
            plans.append(("family, no cache", family, {"no_cache": True}))
        for name, methods, opts in plans:
            extra = ["--no-feature-cache"] if opts.get("no_cache") else []
            wall, cpu, records = timed_run([*sweep(methods), *extra])
            rows[name].append((wall, cpu))
            details[name] = summary(records)
            print(f"repeat {r + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {len(records)} runs", flush=True)
        with tempfile.TemporaryDirectory() as feats:  # warm disk: one process fills, another reads
            timed_run(sweep(family), env={"CLIPBENCH_FEATURES": feats})
            wall, cpu, records = timed_run(sweep(family), env={"CLIPBENCH_FEATURES": feats})
            rows["family, warm disk"].append((wall, cpu))
            details["family, warm disk"] = summary(records)
            print(
                f"repeat {r + 1} family, warm disk: {wall:.1f} s wall, {cpu:.1f} s CPU, {len(records)} runs", flush=True
            )
    base_wall = statistics.median(w for w, _ in rows["baseline"])
    base_cpu = statistics.median(c for _, c in rows["baseline"])
    print(
        "\n| configuration | wall s (median) | CPU s (median) | x baseline (wall / CPU) | view cache (hits / disk / misses) | s per method (sum of run totals) |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in rows.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        seconds, counts = details[name]
        cache = (
            f"{counts.get('hits', 0)} / {counts.get('disk_hits', 0)} / {counts.get('misses', 0)}" if counts else "off"
        )
        per = ", ".join(f"{m} {s:.1f}" for m, s in seconds.items())
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / base_wall:.2f} / {cpu / base_cpu:.2f} | {cache} | {per} |")
    fam_cpu = statistics.median(c for _, c in rows["family"])
    print(f"\nfamily / baseline CPU: {fam_cpu / base_cpu:.2f} (goal: under 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
