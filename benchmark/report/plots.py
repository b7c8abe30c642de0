"""Figures of a report (matplotlib, Agg backend), each saved as PNG and PDF.

Files are reproducible: no creation date is embedded, and colours follow the method order given.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmark.core.records import atomic_write  # noqa: E402
from benchmark.report.tables import Cell  # noqa: E402

DPI = 110
_PNG_META = {"Software": None}
_PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}


def colours(methods: list[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per method (tab10, then tab20), in the given order."""
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def save(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically, close the figure, return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    for path, kwargs in ((png, {"dpi": DPI, "metadata": _PNG_META}), (pdf, {"metadata": _PDF_META})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], **kwargs)
        atomic_write(path, buf.getvalue())
    plt.close(fig)
    return [png, pdf]


def grouped_bars(grids: dict[str, dict[str, dict[str, Cell]]], columns: list[str], title: str,
                 stem: Path) -> list[Path]:
    """One panel per metric: bars of mean over seeds per column (domains, avg) and method, error bars = std.

    A cell without a finished run gets no bar but its state (``failed``, ``missing``) written in its place.
    """
    methods = list(next(iter(grids.values())))
    col_of = colours(methods)
    width = 0.8 / max(len(methods), 1)
    height = 2.4 * len(grids) + 0.9
    fig, axes = plt.subplots(len(grids), 1, figsize=(max(6.0, 1.2 * len(columns) + 3), height), squeeze=False)
    fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.4 / height, bottom=0.75 / height, hspace=0.3)
    x = np.arange(len(columns))
    for ax, (metric, grid) in zip(axes[:, 0], grids.items()):
        for i, m in enumerate(methods):
            cells = [grid[m].get(c, Cell()) for c in columns]
            means = [c.mean if c.ok else 0.0 for c in cells]
            errs = [c.std if c.ok and math.isfinite(c.std) else 0.0 for c in cells]
            pos = x + (i - (len(methods) - 1) / 2) * width
            ax.bar(pos, means, width, yerr=errs, capsize=2, color=col_of[m], label=m if ax is axes[0, 0] else None,
                   error_kw={"elinewidth": 0.8})
            for p, c in zip(pos, cells):
                if not c.ok:
                    ax.text(p, 1.0, c.state, rotation=90, ha="center", va="bottom", fontsize=6, color="0.3")
        ax.set_xticks(x, columns)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.legend(fontsize=7, ncol=min(len(methods), 6), loc="lower center", frameon=False)
    return save(fig, stem)


def cd_diagram(names: list[str], avg_ranks: list[float], cd: float, cliques: list[tuple[int, int]], title: str,
               stem: Path) -> list[Path]:
    """Critical-difference diagram: methods on the average-rank axis (1 = best, left), a bar of length CD,
    and thick lines joining runs of methods whose ranks differ by less than CD."""
    k = len(names)
    order = sorted(range(k), key=lambda i: (avg_ranks[i], names[i]))
    ranks = [avg_ranks[i] for i in order]
    half = math.ceil(k / 2)
    height = 1.2 + 0.3 * half + 0.12 * len(cliques)
    fig, ax = plt.subplots(figsize=(6.4, height))
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.35 / height, bottom=0.02)
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.set_ylim(-(half + 1) * 0.3 - 0.12 * len(cliques), 0.55)
    ax.axis("off")
    ax.hlines(0, lo, hi, color="k", lw=1)
    for t in range(lo, hi + 1):
        ax.vlines(t, 0, 0.06, color="k", lw=1)
        ax.text(t, 0.1, str(t), ha="center", va="bottom", fontsize=8)
    if math.isfinite(cd):
        ax.hlines(0.4, lo, lo + cd, color="k", lw=1.5)
        ax.text(lo + cd / 2, 0.44, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    for pos, (i, r) in enumerate(zip(order, ranks)):
        left = pos < half
        row = (pos if left else k - 1 - pos) + 1
        y = -row * 0.3 - 0.12 * len(cliques)
        x_text = lo - 0.5 if left else hi + 0.5
        ax.plot([r, r, x_text], [0, y, y], color="0.3", lw=0.8)
        ax.text(x_text, y, f"{names[i]} ({r:.2f})", ha="left" if left else "right", va="center", fontsize=8,
                transform=ax.transData, clip_on=False,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    for n, (i, j) in enumerate(cliques):
        y = -0.08 - 0.12 * n
        ax.hlines(y, ranks[i] - 0.03, ranks[j] + 0.03, color="k", lw=3)
    ax.set_title(title, fontsize=9)
    return save(fig, stem)


def tradeoff(points: list[tuple[str, str, Cell, Cell]], methods: list[str], title: str, stem: Path) -> list[Path]:
    """Accuracy (``acc_pc``) against AUROC: one point per method (colour) and domain (marker), error bars = std."""
    col_of = colours(methods)
    domains = sorted({d for _, d, _, _ in points})
    markers = dict(zip(domains, "osD^v<>pP*Xh"))
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    for m, d, acc, au in points:
        if not (acc.ok and au.ok):
            continue
        ax.errorbar(acc.mean, au.mean, xerr=acc.std if math.isfinite(acc.std) else None,
                    yerr=au.std if math.isfinite(au.std) else None, fmt=markers.get(d, "o"), color=col_of[m],
                    ms=6, elinewidth=0.7, capsize=2)
    for m in methods:
        ax.plot([], [], "s", color=col_of[m], label=m)
    for d in domains:
        ax.plot([], [], markers.get(d, "o"), color="0.4", mfc="none", label=d)
    ax.set_xlabel("acc_pc (%)")
    ax.set_ylabel("auroc (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_title(title, fontsize=9)
    return save(fig, stem)


def curves(histories: dict[str, list[list[dict[str, float]]]], methods: list[str], title: str,
           stem: Path) -> list[Path]:
    """One panel per recorded quantity (``loss`` first): per method, the mean over its runs at each
    epoch (for online and episodic runs, each recorded fraction of the stream), shaded +- one std
    where more than one run reached that point. Colours follow ``methods``."""
    col_of = colours(methods)
    keys = sorted({k for runs in histories.values() for h in runs for e in h for k, v in e.items()
                   if k != "epoch" and isinstance(v, (int, float))}, key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.2), squeeze=False)
    fig.subplots_adjust(left=0.16 / len(keys), right=0.97, top=0.88, bottom=0.15, wspace=0.3)
    for ax, key in zip(axes[0], keys):
        for m, runs in histories.items():
            by_epoch: dict[int, list[float]] = {}
            for h in runs:
                for i, e in enumerate(h):
                    v = e.get(key)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        by_epoch.setdefault(float(e.get("epoch", i + 1)), []).append(float(v))
            if not by_epoch:
                continue
            ep = np.array(sorted(by_epoch))
            mean = np.array([np.mean(by_epoch[e]) for e in ep])
            std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in ep])
            ax.plot(ep, mean, "-o", ms=3, color=col_of[m], label=m)
            ax.fill_between(ep, mean - std, mean + std, color=col_of[m], alpha=0.15, lw=0)
        ax.set_xlabel("epoch (online: fraction of the stream)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, stem)
