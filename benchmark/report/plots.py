"""Figures of a report (matplotlib, Agg backend), each saved as PNG and PDF.

Every figure here is built for any number of methods (tested with 24 methods with 40-character
labels, ``tests/test_figures.py``): its size is computed from its content (rows, panels and the
measured width of its labels), long labels wrap, legends sit outside the data axes in their own
area (constrained layout, ``outside`` locations), and titles wrap inside the canvas. Each
``*_figure`` function returns the figure; :func:`save` writes it. The numbers a figure draws come
from ``benchmark.report.aggregate`` (e.g. :func:`~benchmark.report.aggregate.difference_frame`);
nothing here computes a statistic. Files are reproducible: no creation date is embedded.
"""

from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from benchmark.report.curves import curves_figure  # noqa: E402,F401  (every figure under one name)
from benchmark.report.figstyle import (  # noqa: E402,F401  (LABEL_WIDTH and save: every figure helper under one name)
    DPI,
    FONT,
    LABEL_WIDTH,
    MARKERS,
    PAD,
    SMALL,
    TITLE,
    _difference_text,
    _figure,
    _legend,
    _legend_layout,
    _row_height,
    _styled,
    _title,
    _title_height,
    header_text,
    method_styles,
    regime_style,
    save,
    text_height,
    text_width,
    wrap,
    wrap_label,
)
from benchmark.report.frame import higher_is_better  # noqa: E402
from benchmark.report.tables import Cell, fmt_num  # noqa: E402


@_styled
def difference_figure(frame: pd.DataFrame, metric: str, baseline: str, title: str, alpha: float = 0.05) -> Figure:
    """Each method's mean difference to ``baseline`` on ``metric`` with its 95% paired t interval.

    ``frame`` is :func:`benchmark.report.aggregate.difference_frame` (sorted best first), drawn top
    to bottom: marker and colour by regime, filled when the Holm-adjusted Wilcoxon p is below
    ``alpha`` (the tables' daggers), hollow otherwise; a vertical line marks zero. Right of each row:
    mean [interval] and the Holm-adjusted Wilcoxon p. The artists carry ``gid`` ``mean <method>``
    and ``ci <method>``.
    """
    labels = [wrap_label(m) for m in frame.method]
    texts = [_difference_text(r) for r in frame.itertuples()]
    row = _row_height(labels)
    plot_w = 3.2
    width = (
        max((text_width(lab) for lab in labels), default=1.0)
        + plot_w
        + max([text_width(t, SMALL) for t in texts] + [text_width(header_text(), SMALL)])
        + 4 * PAD
        + 0.3
    )
    regimes = list(dict.fromkeys(frame.regime))
    handles = [
        Line2D([], [], ls="none", marker=regime_style(r)[0], color=regime_style(r)[1], mfc=regime_style(r)[1], ms=6)
        for r in regimes
    ]
    legend_labels = [f"{r}" for r in regimes]
    handles += [
        Line2D([], [], ls="none", marker="o", color="0.3", mfc="0.3", ms=6),
        Line2D([], [], ls="none", marker="o", color="0.3", mfc="white", ms=6),
    ]
    legend_labels += [f"filled: Holm-adjusted Wilcoxon p < {alpha:g}", "hollow: not significant"]
    ncols, legend_h = _legend_layout(legend_labels, width)
    direction = "higher" if higher_is_better(metric) else "lower"
    xlabel = wrap(
        f"{metric}: method − {baseline} (points; {direction} is better), mean over (domain, seed) pairs "
        f"with its 95% paired t interval",
        plot_w + 1.5,
        FONT,
    )
    header = header_text()
    height = (
        _title_height(title, width)
        + text_height(header, SMALL)
        + len(frame) * row
        + text_height(xlabel)
        + 0.35
        + legend_h
        + 2 * PAD
    )
    fig = _figure(width, height)
    _title(fig, title, width)
    ax = fig.add_subplot()
    y = np.arange(len(frame))[::-1].astype(float)
    ax.axvline(0.0, color="0.15", lw=0.9, zorder=1)
    values = [0.0]
    for yi, r in zip(y, frame.itertuples()):
        marker, colour = regime_style(r.regime)
        if math.isfinite(r.ci_lo) and math.isfinite(r.ci_hi):
            ax.plot(
                [r.ci_lo, r.ci_hi],
                [yi, yi],
                color=colour,
                lw=1.6,
                marker="|",
                ms=7,
                solid_capstyle="butt",
                gid=f"ci {r.method}",
                zorder=2,
            )
            values += [r.ci_lo, r.ci_hi]
        if math.isfinite(r.mean):
            ax.plot(
                [r.mean],
                [yi],
                ls="none",
                marker=marker,
                ms=6.5,
                color=colour,
                mew=1.3,
                mfc=colour if r.mark else "white",
                gid=f"mean {r.method}",
                zorder=3,
            )
            values.append(r.mean)
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - 0.08 * span, hi + 0.08 * span)
    ax.set_ylim(-0.6, len(frame) - 0.4)
    ax.set_yticks(y, labels, fontsize=FONT)
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, texts, fontsize=SMALL)
    right.tick_params(length=0)
    pad = plt.rcParams["ytick.major.pad"]
    ax.annotate(
        header,
        xy=(1, 1),
        xycoords="axes fraction",
        xytext=(pad, 3),
        textcoords="offset points",
        ha="left",
        va="bottom",
        fontsize=SMALL,
        color="0.3",
    )
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(xlabel)
    _legend(fig, handles, legend_labels, ncols)
    return fig


@_styled
def heatmap_figure(grids: dict[str, pd.DataFrame], baseline: str, title: str) -> Figure:
    """Methods x domains of the mean difference to ``baseline``, one panel per metric, values printed in the
    cells; ``all``: the mean over every (domain, seed) pair. Blue is better, red worse, whatever the
    metric's direction; grey cells: no pair. ``grids`` holds :func:`benchmark.report.aggregate.difference_grid`
    per metric (same rows and columns)."""
    first = next(iter(grids.values()))
    methods, columns = list(first.index), list(first.columns)
    labels = [wrap_label(m) for m in methods]
    cell_texts = {m: [[fmt_num(v, 1, sign=True) for v in row] for row in g.to_numpy()] for m, g in grids.items()}
    widest = max((text_width(t, SMALL) for rows in cell_texts.values() for row in rows for t in row), default=0.3)
    cell_w = max(
        0.5, widest + 0.14, *(text_width(piece, SMALL) + 0.1 for c in columns for piece in re.findall(r"[^_\s]+_?", c))
    )
    column_labels = [wrap(c, cell_w - 0.08, SMALL) for c in columns]
    col_h = max(text_height(c, SMALL) for c in column_labels) + 0.08
    row = _row_height(labels)
    panel_w = len(columns) * cell_w
    panel_titles = {m: wrap(m, panel_w, FONT) for m in grids}
    bar_labels = {m: wrap(f"{m}: method − {baseline} (points)", panel_w, SMALL) for m in grids}
    width = max(text_width(lab) for lab in labels) + len(grids) * (panel_w + 0.3) + 3 * PAD
    bar_h = 0.5 + max(text_height(b, SMALL) for b in bar_labels.values())
    height = (
        _title_height(title, width)
        + max(text_height(t) for t in panel_titles.values())
        + 0.1
        + len(methods) * row
        + col_h
        + bar_h
        + 2 * PAD
    )
    fig = _figure(width, height)
    _title(fig, title, width)
    axes = fig.subplots(1, len(grids), sharey=True, squeeze=False)[0]
    for ax, (metric, grid) in zip(axes, grids.items()):
        values = grid.to_numpy(dtype=np.float64)
        finite = np.abs(values[np.isfinite(values)])
        vmax = max(float(finite.max()) if finite.size else 0.0, 0.5)
        cmap = plt.get_cmap("RdBu" if higher_is_better(metric) else "RdBu_r").with_extremes(bad="0.88")
        im = ax.imshow(
            np.ma.masked_invalid(values), cmap=cmap, norm=Normalize(-vmax, vmax), aspect="auto", interpolation="nearest"
        )
        for i in range(len(methods)):
            for j in range(len(columns)):
                v = values[i, j]
                dark = math.isfinite(v) and abs(v) > 0.6 * vmax
                ax.text(
                    j,
                    i,
                    cell_texts[metric][i][j],
                    ha="center",
                    va="center",
                    fontsize=SMALL,
                    color="white" if dark else ("0.35" if not math.isfinite(v) else "black"),
                )
        if "all" in columns and len(columns) > 1:
            ax.axvline(columns.index("all") - 0.5, color="white", lw=3)
        ax.set_xticks(range(len(columns)), column_labels)
        ax.set_yticks(range(len(methods)), labels, fontsize=FONT)
        ax.tick_params(length=0)
        ax.set_title(panel_titles[metric])
        bar = fig.colorbar(im, ax=ax, location="bottom", shrink=0.95, aspect=max(8.0, panel_w / 0.13), pad=0.02)
        bar.set_label(bar_labels[metric], fontsize=SMALL)
        bar.ax.tick_params(labelsize=SMALL)
        bar.ax.xaxis.set_major_locator(MaxNLocator(nbins=max(3, int(panel_w / 0.55))))
    return fig


# --- scores, ranks, trade-off ----------------------------------------------------------------------------------


@_styled
def bars_figure(
    grids: dict[str, dict[str, dict[str, Cell]]], columns: list[str], title: str, regimes: dict[str, str] | None = None
) -> Figure:
    """One panel per metric, one row per method: a bar for the average over domains (mean ± std over seeds,
    coloured by regime) and a marker per domain (its mean over seeds). A cell without a finished run
    gets its state (``failed``, ``missing``) written in place of the bar."""
    methods = list(next(iter(grids.values())))
    regimes = regimes or {}
    labels = [wrap_label(m) for m in methods]
    domains = [c for c in columns if c != "avg"]
    markers = dict(zip(domains, MARKERS))
    row = _row_height(labels)
    panel_w = 2.4
    width = max(text_width(lab) for lab in labels) + len(grids) * (panel_w + 0.25) + 3 * PAD
    used = list(dict.fromkeys(regimes.get(m, "?") for m in methods))
    handles = [Patch(color=regime_style(r)[1], alpha=0.6) for r in used]
    legend_labels = [f"avg, {r} (mean ± std over seeds)" for r in used]
    handles += [Line2D([], [], ls="none", marker=markers[d], color="0.15", mfc="none", ms=4) for d in domains]
    legend_labels += [f"{d} (mean over seeds)" for d in domains]
    ncols, legend_h = _legend_layout(legend_labels, width)
    height = _title_height(title, width) + len(methods) * row + 0.55 + legend_h + 2 * PAD
    fig = _figure(width, height)
    _title(fig, title, width)
    axes = fig.subplots(1, len(grids), sharey=True, squeeze=False)[0]
    y = np.arange(len(methods))[::-1].astype(float)
    offsets = np.linspace(-0.22, 0.22, len(domains)) if len(domains) > 1 else np.zeros(len(domains))
    for ax, (metric, grid) in zip(axes, grids.items()):
        top = 100.0
        for yi, m in zip(y, methods):
            avg = grid[m].get("avg", Cell())
            colour = regime_style(regimes.get(m, "?"))[1]
            if avg.ok:
                err = avg.std if math.isfinite(avg.std) else 0.0
                ax.barh(
                    yi,
                    avg.mean,
                    0.7,
                    xerr=err,
                    color=colour,
                    alpha=0.6,
                    lw=0,
                    error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "0.1"},
                )
                top = max(top, avg.mean + err)
            else:
                ax.text(
                    0.02,
                    yi,
                    avg.state,
                    transform=ax.get_yaxis_transform(),
                    ha="left",
                    va="center",
                    fontsize=SMALL,
                    color="0.3",
                )
            for d, off in zip(domains, offsets):
                c = grid[m].get(d, Cell())
                if c.ok:
                    ax.plot(
                        [c.mean], [yi + off], ls="none", marker=markers[d], ms=3.5, color="0.15", mfc="none", mew=0.8
                    )
                    top = max(top, c.mean)
        ax.set_xlim(0, top * 1.02)
        ax.set_ylim(-0.6, len(methods) - 0.4)
        ax.set_yticks(y, labels, fontsize=FONT)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel(f"{metric} (%)")
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, handles, legend_labels, ncols)
    return fig


@_styled
def cd_figure(
    names: list[str], avg_ranks: list[float], cd: float, cliques: list[tuple[int, int]], title: str
) -> Figure:
    """Critical-difference diagram: methods on the average-rank axis (1 = best, left), the better half
    labelled on the left, the other half on the right, a bar of length CD above the axis, and thick
    lines below it joining runs of methods whose ranks differ by less than CD (not significantly
    different). Laid out in inches from the measured labels, so nothing overlaps at any number of
    methods."""
    k = len(names)
    order = sorted(range(k), key=lambda i: (avg_ranks[i], names[i]))
    ranks = [avg_ranks[i] for i in order]
    half = math.ceil(k / 2)
    texts = [wrap_label(f"{names[i]} ({r:.2f})") for i, r in zip(order, ranks)]
    left_w = max(text_width(t) for t in texts[:half])
    right_w = max((text_width(t) for t in texts[half:]), default=0.0)
    hi = max(k, 2)
    axis_w = max(3.0, 0.32 * (hi - 1))
    x0 = PAD + left_w + 0.35  # inches: where rank 1 sits
    width = x0 + axis_w + 0.35 + right_w + PAD
    title_text = wrap(title, width - 2 * PAD, TITLE)
    row = _row_height(texts, 0.22)
    y_axis = PAD + text_height(title_text, TITLE) + 0.9  # below the title, the CD bar and its note, the tick labels
    y_rows = y_axis + 0.12 + 0.1 * len(cliques) + 0.12
    height = y_rows + half * row + PAD
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # inches from the top
    ax.axis("off")

    def x_of(r: float) -> float:
        return x0 + (r - 1) / (hi - 1) * axis_w

    ax.text(width / 2, PAD, title_text, ha="center", va="top", fontsize=TITLE)
    ax.hlines(y_axis, x_of(1), x_of(hi), color="k", lw=1)
    step = 1 if axis_w / (hi - 1) >= 0.22 else 2
    for t in range(1, hi + 1):
        ax.vlines(x_of(t), y_axis - 0.06, y_axis, color="k", lw=1)
        if (t - 1) % step == 0 or t == hi:
            ax.text(x_of(t), y_axis - 0.09, str(t), ha="center", va="bottom", fontsize=SMALL)
    if math.isfinite(cd):
        end = min(1 + cd, hi)
        y_cd = y_axis - 0.45
        ax.hlines(y_cd, x_of(1), x_of(end), color="k", lw=1.5)
        ax.vlines([x_of(1), x_of(end)], y_cd - 0.04, y_cd + 0.04, color="k", lw=1.5)
        note = f"CD = {cd:.2f}" + (" (wider than the axis)" if 1 + cd > hi else "")
        ax.text(x_of(1), y_cd - 0.07, note, ha="left", va="bottom", fontsize=SMALL)
    for n, (i, j) in enumerate(cliques):
        yc = y_axis + 0.12 + 0.1 * n
        ax.hlines(yc, x_of(ranks[i]) - 0.04, x_of(ranks[j]) + 0.04, color="k", lw=3)
    for pos, (r, text) in enumerate(zip(ranks, texts)):
        left = pos < half
        y = y_rows + ((pos if left else k - 1 - pos) + 0.5) * row
        x_text = x0 - 0.3 if left else x0 + axis_w + 0.3
        ax.plot([x_of(r), x_of(r), x_text], [y_axis, y, y], color="0.35", lw=0.8)
        ax.text(x_text + (-0.05 if left else 0.05), y, text, ha="right" if left else "left", va="center", fontsize=FONT)
    return fig


@_styled
def tradeoff_figure(
    acc: dict[str, dict[str, Cell]],
    auroc: dict[str, dict[str, Cell]],
    columns: list[str],
    baseline: str | None,
    title: str,
) -> Figure:
    """``acc_pc`` against AUROC, one panel per column (each domain, then ``avg``): a point per method (a
    distinct colour and marker each; error bars: std over seeds), dashed lines through the baseline."""
    methods = list(acc)
    styles = method_styles(methods)
    labels = [wrap_label(m) for m in methods]
    n = len(columns)
    ncols = n if n <= 3 else min(3, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    panel = 2.5
    width = ncols * (panel + 0.45) + 2 * PAD
    handles = [Line2D([], [], ls="none", marker=styles[m][1], color=styles[m][0], ms=5) for m in methods]
    lcols, legend_h = _legend_layout(labels, width)
    height = _title_height(title, width) + nrows * (panel + 0.55) + legend_h + 2 * PAD
    fig = _figure(width, height)
    _title(fig, title, width)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, col in zip(axes.ravel(), columns):
        base_a = acc.get(baseline, {}).get(col, Cell()) if baseline else Cell()
        base_u = auroc.get(baseline, {}).get(col, Cell()) if baseline else Cell()
        if base_a.ok and base_u.ok:
            ax.axvline(base_a.mean, color="0.5", ls="--", lw=0.8)
            ax.axhline(base_u.mean, color="0.5", ls="--", lw=0.8)
        for m in methods:
            a, u = acc[m].get(col, Cell()), auroc[m].get(col, Cell())
            if not (a.ok and u.ok):
                continue
            colour, marker = styles[m]
            ax.errorbar(
                a.mean,
                u.mean,
                xerr=a.std if math.isfinite(a.std) else None,
                yerr=u.std if math.isfinite(u.std) else None,
                fmt=marker,
                color=colour,
                ms=5,
                elinewidth=0.6,
                capsize=1.2,
                ecolor=(*colour[:3], 0.55),
            )
        ax.set_title("avg over domains" if col == "avg" else col)
        ax.set_xlabel("acc_pc (%)")
        ax.set_ylabel("auroc (%)")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.remove()
    _legend(fig, handles, labels, lcols)
    return fig


# --- curves ----------------------------------------------------------------------------------------------------
