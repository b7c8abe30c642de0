"""The training-curve figure: one small panel per method, the loss on its own axis and the other
quantities a method records along its budget or stream (e.g. TDA's cache sizes) beside it."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from benchmark.report.figstyle import (  # noqa: E402
    FONT,
    PAD,
    SMALL,
    _figure,
    _legend,
    _legend_layout,
    _styled,
    _title,
    _title_height,
    text_height,
    wrap,
    wrap_label,
)


def _series(runs: list[list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std (over runs reaching it) of ``key`` at each recorded x (epoch, or stream fraction)."""
    by_x: dict[float, list[float]] = {}
    for h in runs:
        for i, e in enumerate(h):
            v = e.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                by_x.setdefault(float(e.get("epoch", i + 1)), []).append(float(v))
    xs = np.array(sorted(by_x))
    mean = np.array([np.mean(by_x[x]) for x in xs])
    std = np.array([np.std(by_x[x], ddof=1) if len(by_x[x]) > 1 else 0.0 for x in xs])
    return xs, mean, std


def _keys(runs: list[list[dict[str, float]]]) -> list[str]:
    keys = {
        k
        for h in runs
        for e in h
        for k, v in e.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return sorted(keys, key=lambda k: (k != "loss", k))


@_styled
def curves_figure(histories: dict[str, list[list[dict[str, float]]]], regimes: dict[str, str], title: str) -> Figure:
    """One small panel per method (mean over its runs at each recorded epoch or stream fraction, shaded ± one
    std where more than one run reached it): the loss on the left axis, the method's other recorded
    quantities (stream statistics such as TDA's cache sizes, selected or confident shares) on a right
    axis of their own. A series of one point is drawn as a marker and named in the panel ("1 point")."""
    methods = list(histories)
    stats_keys = sorted({k for runs in histories.values() for k in _keys(runs) if k != "loss"})
    cmap = plt.get_cmap("tab10")
    key_colour = {k: cmap((i + 1) % cmap.N) for i, k in enumerate(stats_keys)}
    n = len(methods)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    panel_w, panel_h = 2.5, 1.7
    titles = {
        m: wrap_label(m, panel_w, FONT) + f"\n{regimes.get(m, '?')}, {len(histories[m])} "
        f"run{'s' if len(histories[m]) != 1 else ''}"
        for m in methods
    }
    title_h = max(text_height(t) for t in titles.values())
    width = ncols * (panel_w + (1.05 if stats_keys else 0.6)) + 2 * PAD
    handles = [Line2D([], [], color="k", marker="o", ms=3)] + [
        Line2D([], [], color=key_colour[k], marker="o", ms=3, ls="--") for k in stats_keys
    ]
    legend_labels = [f"loss ({'left axis; ' if stats_keys else ''}mean ± std over runs)"]
    legend_labels += [f"{k} (statistics axis)" for k in stats_keys]
    lcols, legend_h = _legend_layout(legend_labels, width)
    height = _title_height(title, width) + nrows * (panel_h + title_h + 0.45) + legend_h + 2 * PAD
    fig = _figure(width, height)
    _title(fig, title, width)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, m in zip(axes.ravel(), methods):
        runs = histories[m]
        keys = _keys(runs)
        single = []
        stats_ax = ax.twinx() if "loss" in keys and len(keys) > 1 else ax
        for key in keys:
            target = ax if key == "loss" else stats_ax
            colour = "k" if key == "loss" else key_colour[key]
            xs, mean, std = _series(runs, key)
            target.plot(xs, mean, "-" if key == "loss" else "--", marker="o", ms=3, color=colour, lw=1.1)
            if len(xs) > 1:
                target.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            else:
                single.append(key)
        ax.set_ylabel("loss" if "loss" in keys else "statistics")
        if stats_ax is not ax:
            stats_ax.set_ylabel("statistics")
            stats_ax.tick_params(labelsize=SMALL)
        stream = regimes.get(m) in ("online", "episodic")
        ax.set_xlabel("fraction of the stream" if stream else "epoch")
        if not stream:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if single:
            ax.text(
                0.03,
                0.95,
                wrap(", ".join(single) + ": 1 point", panel_w - 0.2, SMALL),
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=SMALL,
                color="0.25",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
        ax.grid(alpha=0.3)
        ax.set_title(titles[m], fontsize=FONT)
    for ax in axes.ravel()[n:]:
        ax.remove()
    _legend(fig, handles, legend_labels, lcols)
    return fig
