"""Do the loss curves flatten within their budgets? Read from the records of a sweep.

    python benchmarks/loss_curves.py --out results/

Every run records its loss over the whole budget in ten windows of steps (``curve``: for epoch
methods the training loss, for online and episodic methods the loss on the stream's images as
they arrive). A curve has flattened when, over the second half of its points, the least-squares
line changes by at most ``--tolerance`` (default 10%) of the curve's whole range, or by at most
1% of its mean level, or shows no significant trend (the slope's two-sided t-test, p >= 0.05).
Prints per method
how many runs flattened, the median change of the fitted line over the second half (relative to
the range and to the level), and the median number of points. Methods that train nothing
(zero-shot, TDA) record no loss.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scipy import stats  # noqa: E402

from benchmark.core.records import load_records  # noqa: E402


def second_half_trend(losses: list[float]) -> tuple[float, float, float]:
    """(fitted change over the second half / range, / mean level, p-value of the slope's t-test)."""
    half = losses[len(losses) // 2 :]
    n = len(half)
    if n < 2:
        return 0.0, 0.0, 1.0
    xs = list(range(n))
    mx, my = sum(xs) / n, sum(half) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, half)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, half)]
    dof = n - 2
    se = math.sqrt(sum(r * r for r in resid) / dof / sxx) if dof > 0 else 0.0
    t = slope / se if se > 0 else (0.0 if slope == 0 else math.inf)
    pvalue = float(2 * stats.t.sf(abs(t), dof)) if dof > 0 else 1.0
    change = abs(slope) * (n - 1)
    spread = max(losses) - min(losses)
    level = sum(abs(v) for v in losses) / len(losses)
    return (change / spread if spread else 0.0), (change / level if level else 0.0), pvalue


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--tolerance", type=float, default=0.1)
    args = p.parse_args()
    rows = defaultdict(list)
    for rec in load_records(args.out):
        if rec.get("status") != "done":
            continue
        rows[rec["spec"]["method"]].append([c["loss"] for c in rec.get("curve") or []])
    print(
        "| method | runs | flattened | median second-half change (of range / of level) | median p of the trend | points |"
    )
    print("|---|---|---|---|---|---|")
    for method, curves in sorted(rows.items()):
        curves = [c for c in curves if c]
        if not curves:
            print(f"| {method} | 0 | no loss (nothing trains) | n/a | n/a | 0 |")
            continue
        trends = [second_half_trend(c) for c in curves]
        flat = sum(r <= args.tolerance or lv <= 0.01 or pv >= 0.05 for r, lv, pv in trends)
        print(
            f"| {method} | {len(curves)} | {flat}/{len(curves)} | {statistics.median(r for r, _, _ in trends):.1%} / "
            f"{statistics.median(lv for _, lv, _ in trends):.1%} | {statistics.median(pv for _, _, pv in trends):.2f} "
            f"| {statistics.median(len(c) for c in curves):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
