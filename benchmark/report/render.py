"""Rendering: the leaderboard page, per-group tables (Markdown, LaTeX, CSV) and the report page, as text.

Every number comes from the cells of ``benchmark.report.aggregate``; nothing here computes a
statistic. The text is a pure function of the groups (sorted, no timestamps).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from benchmark.report import stats
from benchmark.report.aggregate import AVG, BOOTSTRAP_SEED, DEFAULT_ALPHA, DEFAULT_BASELINE, Group, _grid
from benchmark.report.frame import DEFAULT_METRICS, SUMMARY_METRICS, TABLE_KEY, higher_is_better, split_metric
from benchmark.report.reported import match_reported
from benchmark.report.selection import describe_pick
from benchmark.report.tables import (
    MARK_BETTER,
    MARK_WORSE,
    csv_rows,
    fmt_num,
    fmt_p,
    latex_grid,
    markdown_ci_grid,
    markdown_grid,
)


def _caption(g: Group, metric: str, baseline: str | None, alpha: float) -> str:
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    n_dom = f"{len(g.domains)} domain{'s' if len(g.domains) != 1 else ''}"
    text = (
        f"{g.title}: {metric} (%), mean ± sample std over {g.seeds_text()}; avg: mean over the "
        f"{n_dom} within each seed, then over seeds. Bold: best per column ({direction}). "
        f"{g.score_text()} {g.regime_text()}"
    )
    if g.selection is not None:
        text += " " + g.selection.caption(g.key[1])
    if baseline:
        text += (
            f" {MARK_BETTER}/{MARK_WORSE} on avg: significantly better/worse than {baseline} (paired Wilcoxon "
            f"over (domain, seed), Holm across methods, p < {alpha:g})."
        )
    return text


def _per_metric_markdown(g: Group, metrics: tuple[str, ...], alpha: float, bootstrap: int) -> list[str]:
    lines = []
    for m in metrics:
        lines += [
            f"### {m} per domain",
            "",
            _caption(g, m, g.baseline, alpha),
            "",
            markdown_grid(g.grids[m], g.columns),
            "",
        ]
        if bootstrap > 0:
            lines += [
                f"Bootstrap 95% percentile intervals of `{m}` ({bootstrap} resamples of the test samples, "
                f"seed {BOOTSTRAP_SEED}):",
                "",
            ]
            if split_metric(m)[1] in stats.BOOTSTRAP_METRICS:
                lines += [markdown_ci_grid(g.grids[m], g.columns), ""]
            else:
                lines += [f"n/a: the bootstrap covers {', '.join(stats.BOOTSTRAP_METRICS)}.", ""]
    return lines


def _summary_markdown(g: Group) -> str:
    rows = []
    for method in g.methods:
        cells = [g.grids[m][method][AVG] for m in SUMMARY_METRICS]
        mg = g.frame[g.frame.method == method]
        present = set(zip(mg.domain, mg.seed))
        n_missing = sum((d, s) not in present for d in g.domains for s in g.seeds)
        texts = [(f"**{c.value()}**" if c.bold else c.value()) + c.mark for c in cells]
        rows.append([method, *texts, cells[0].n_done, int((mg.status != "done").sum()), n_missing])
    return tabulate(
        rows,
        headers=["method", *SUMMARY_METRICS, "seeds", "failed", "missing"],
        tablefmt="github",
        disable_numparse=True,
    )


def _tests_markdown(g: Group, metrics: list[str], alpha: float) -> list[str]:
    if g.baseline is None:
        return ["No baseline run in this group: no paired tests.", ""]
    rows = []
    for m in metrics:
        for t in g.tests[m]:
            r = t.result
            rows.append(
                [
                    t.method,
                    m,
                    r.n,
                    fmt_num(r.mean_diff),
                    fmt_p(r.p_wilcoxon),
                    fmt_p(t.holm_wilcoxon),
                    fmt_p(r.p_ttest),
                    fmt_p(t.holm_ttest),
                    t.mark,
                ]
            )
    if not rows:
        return [f"Only the baseline `{g.baseline}` ran: no paired tests.", ""]
    return [
        f"Each method minus `{g.baseline}` over the (domain, seed) pairs both finished: mean difference in "
        f"points, two-sided p-values of the paired Wilcoxon signed-rank test and the paired t-test, and their "
        f"Holm-adjusted values across the methods of this table (per metric and test); for fpr95 a negative "
        f"difference is an improvement. Marked: Holm-adjusted "
        f"Wilcoxon p < {alpha:g}. n/a: too few pairs, all differences zero, or zero variance.",
        "",
        tabulate(
            rows,
            headers=["method", "metric", "pairs", "mean diff", "Wilcoxon p", "Holm", "t-test p", "Holm", "sig."],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]


def _ranks_markdown(g: Group, metrics: tuple[str, ...], alpha: float) -> list[str]:
    ranked = {m: r for m, r in g.ranks.items() if r is not None}
    if not ranked:
        return ["Fewer than two methods share a finished (domain, seed) block: no ranks.", ""]
    rows = []
    for method in g.methods:
        cells = []
        for m in metrics:
            r = ranked.get(m)
            cells.append(fmt_num(r.result.avg_ranks[r.methods.index(method)]) if r and method in r.methods else "n/a")
        rows.append([method, *cells])
    lines = [
        "Average rank (1 = best; ties share the mean rank) over the (domain, seed) blocks on which every "
        "ranked method finished.",
        "",
        tabulate(rows, headers=["method", *metrics], tablefmt="github", disable_numparse=True),
        "",
    ]
    for m in metrics:
        r = ranked.get(m)
        if r is None:
            lines.append(f"- {m}: n/a (fewer than two methods share a finished block)")
            continue
        f = r.result
        friedman = (
            f"Friedman chi2 = {fmt_p(f.statistic)}, p = {fmt_p(f.pvalue)}"
            if len(r.methods) >= 3
            else "Friedman n/a (needs 3 or more methods)"
        )
        lines.append(
            f"- {m}: N = {f.n_blocks} blocks, k = {len(r.methods)} methods; {friedman}; "
            f"Nemenyi CD (alpha = {alpha:g}) = {fmt_num(f.cd)}"
        )
    return lines + [""]


def _reported_markdown(g: Group, reported: pd.DataFrame) -> list[str]:
    protocol, dataset, setting, model, pretrained, _ = g.key
    rows = []
    for r in match_reported(reported, protocol, dataset, setting, model, pretrained).itertuples():
        if r.method not in g.methods or (r.domain != AVG and r.domain not in g.domains):
            continue
        grid = g.grids.get(r.metric) or _grid(g, r.metric)
        cell = grid[r.method][r.domain]
        gap = cell.mean - r.value if cell.ok else math.nan
        rows.append(
            [
                r.method,
                r.domain,
                r.metric,
                f"{r.value:.1f}",
                cell.value() + cell.suffix(),
                f"{gap:+.1f}" if math.isfinite(gap) else "n/a",
                r.source,
            ]
        )
    if not rows:
        return []
    return [
        "Published numbers for the same data set, protocol, setting and backbone; gap = measured - published.",
        "",
        tabulate(
            rows,
            headers=["method", "domain", "metric", "published", "measured", "gap", "source"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]


def _problems_markdown(g: Group) -> list[str]:
    lines = []
    bad = g.frame[g.frame.status != "done"].sort_values(["method", "domain", "seed"], kind="mergesort")
    for r in bad.itertuples():
        reason = r.error.splitlines()[0] if isinstance(r.error, str) and r.error else "no error recorded"
        lines.append(f"- {r.method} {r.domain} seed {r.seed}: {r.status}: {reason}")
    for method in g.methods:
        mg = g.frame[g.frame.method == method]
        present = set(zip(mg.domain, mg.seed))
        lines += [
            f"- {method} {d} seed {s}: missing (no record)" for d in g.domains for s in g.seeds if (d, s) not in present
        ]
    return (["Failed and missing runs:", "", *lines, ""]) if lines else []


def leaderboard_markdown(
    groups: list[Group],
    df: pd.DataFrame,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    baseline: str = DEFAULT_BASELINE,
    alpha: float = DEFAULT_ALPHA,
    bootstrap: int = 0,
    reported: pd.DataFrame | None = None,
    problems: list[str] | None = None,
) -> str:
    """The Markdown leaderboard: conventions, then per group a summary, per-domain tables and statistics."""
    n_done = int((df.status == "done").sum())
    n_missing = sum(
        len(g.methods) * len(g.domains) * len(g.seeds) - len(set(zip(g.frame.method, g.frame.domain, g.frame.seed)))
        for g in groups
    )
    lines = [
        "# Leaderboard",
        "",
        f"Built from {len(df)} run records ({n_done} done, {len(df) - n_done} failed; {n_missing} expected runs "
        f"missing). Metrics in percent on the test set (all classes; known = the first K); fpr95: lower is "
        f"better, all others higher.",
        "",
        "- Cells: mean ± sample standard deviation (ddof = 1) over seeds; n is in each caption. `avg` and the "
        "summary: mean over the domains within each seed, then mean ± std over the seeds that finished every "
        "domain.",
        "- **Bold**: best of its column (on the printed value). `(d/n)`: only d of the n seeds finished. "
        "`failed`: every run of the cell failed; `missing`: no record; `incomplete`: no seed finished every "
        "domain.",
        f"- {MARK_BETTER} / {MARK_WORSE}: significantly better / worse than the baseline `{baseline}` (paired "
        f"Wilcoxon signed-rank test over (domain, seed) pairs, Holm-corrected across methods, p < {alpha:g}).",
        "- p-values and test statistics: two significant digits (scientific notation below 1e-4, e.g. "
        "1.2e-05); mean differences, average ranks and the critical difference: two decimals.",
        "",
    ]
    for g in groups:
        lines += [
            f"## {g.title}",
            "",
            f"Summary: {len(g.domains)} domains ({', '.join(g.domains)}), {g.seeds_text()}. Each metric: "
            f"mean ± std over seeds of the average over domains.",
            "",
            _summary_markdown(g),
            "",
        ]
        lines += _selection_markdown(g)
        lines += _per_metric_markdown(g, metrics, alpha, bootstrap)
        lines += [f"### Significance against {g.baseline or baseline}", ""]
        lines += _tests_markdown(g, list(g.tests), alpha)
        lines += ["### Average ranks", ""] + _ranks_markdown(g, metrics, alpha)
        pub = _reported_markdown(g, reported) if reported is not None else []
        if pub:
            lines += ["### Published numbers", "", *pub]
        lines += _problems_markdown(g)
    if problems:
        lines += [
            "## Records left out",
            "",
            "These run folders hold no usable record (another schema or protocol version, a hollow or "
            "malformed result.json, predictions missing or not matching their checksum); the next sweep "
            "with the same arguments recomputes them.",
            "",
            *[f"- {p}" for p in problems],
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _selection_markdown(g: Group) -> list[str]:
    """The points a selection rule kept for this group, with their values, and the points it skipped."""
    sel = g.selection
    if sel is None or sel.rule == "fixed":
        return []
    rows = [
        [p.method, p.domain, describe_pick(p), fmt_num(p.value, 3), p.candidates, p.basis]
        for p in sel.picks
        if tuple(p.group[:-1]) == tuple(g.key)
    ]
    lines = ["### Hyper-parameter selection", "", sel.caption(g.key[1]), ""]
    if rows:
        lines += [
            tabulate(
                rows,
                headers=["method", "domain", "selected (departures)", "value", "points", "judged on"],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    skipped = [s for s in sel.skipped if f" in {g.key[1]}/{g.key[2]}:" in s]
    if skipped:
        lines += ["Skipped:", "", *[f"- {s}" for s in skipped], ""]
    return lines


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def group_tables(g: Group, metrics: tuple[str, ...], alpha: float) -> tuple[str, str, str]:
    """One group's per-domain tables of ``metrics`` as (Markdown, LaTeX, long-format CSV) text."""
    md = [f"# {g.title}", ""]
    tex = []
    rows = []
    for m in metrics:
        md += [f"## {m}", "", _caption(g, m, g.baseline, alpha), "", markdown_grid(g.grids[m], g.columns), ""]
        tex += [latex_grid(g.grids[m], g.columns, _caption(g, m, g.baseline, alpha), f"tab:{g.slug}-{m}"), ""]
        rows += [dict(zip(TABLE_KEY, g.key), metric=m, **r) for r in csv_rows(g.grids[m], g.columns)]
    return ("\n".join(md).rstrip("\n") + "\n", "\n".join(tex).rstrip("\n") + "\n", csv_text(pd.DataFrame(rows)))


def _figure_caption(kind: str, metric: str, baseline: str, alpha: float) -> str:
    """What a figure shows and one sentence on how to read it."""
    better = "left of" if not higher_is_better(metric) else "right of"
    captions = {
        "diff": (
            f"**Difference to `{baseline}` on `{metric}`**: each method's mean difference over the (domain, seed) "
            f"pairs with its 95% paired t interval, best first; marker and colour give the regime, a filled "
            f"marker a Holm-adjusted paired Wilcoxon p < {alpha:g} (the tables' {MARK_BETTER} / {MARK_WORSE}). "
            f"How to read: a method helps where its interval lies {better} the zero line, and the gain is "
            f"significant where its marker is filled."
        ),
        "heatmap": (
            f"**Difference to `{baseline}` per domain** (mean over seeds; `all`: over every pair), one panel "
            f"per metric. How to read: follow a row across the domains to see where a method gains (blue) "
            f"or loses (red), in the points printed in each cell."
        ),
        "bars": (
            "**Scores**: per method the average over domains (bar, mean ± std over seeds; colour: regime) and "
            "each domain's mean (markers). How to read: compare bar lengths between methods, and the spread of "
            "a row's markers for how much a method varies across domains."
        ),
        "cd": (
            f"**Critical-difference diagram of `{metric}`** (Friedman ranks, Nemenyi). How to read: methods "
            f"further left rank better on average, and methods joined by a thick bar do not differ "
            f"significantly (their average ranks differ by less than CD)."
        ),
        "tradeoff": (
            "**Known-class accuracy against AUROC**, one panel per domain and the average; error bars: std "
            "over seeds. How to read: points above and right of the dashed lines (the baseline) improve "
            "both accuracy and AUROC; points in the other quadrants trade one for the other."
        ),
        "curves": (
            "**Training curves**, one panel per method, mean ± std over runs. How to read: the loss (left "
            "axis) and the recorded stream statistics (right axis) against the epoch or the fraction of the "
            'stream seen; a series of one point is a single marker labelled "1 point".'
        ),
    }
    return captions.get(kind, kind)


def report_markdown(
    groups: list[Group],
    out: Path,
    tables: dict[str, list[Path]],
    figures: dict[str, list[Path]],
    metrics: tuple[str, ...],
    baseline: str,
    alpha: float = DEFAULT_ALPHA,
) -> str:
    """``report.md``: links to the leaderboard, tables and figures (each with a sentence on how to read it),
    and each group's best methods."""

    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    lines = [
        "# Report",
        "",
        "Built from the run records under `runs/`; rebuild with `python run_bench.py --report-only --out DIR`.",
        "",
        "- [Leaderboard](leaderboard.md): all tables, significance tests, ranks, failed and missing runs",
        "- [leaderboard.csv](leaderboard.csv): one row per method x data set x setting (mean and std over seeds)",
        "",
    ]
    for g in groups:
        lines += [f"## {g.title}", ""]
        files = tables.get(g.slug, [])
        if files:
            lines += ["Tables: " + ", ".join(f"[{p.suffix[1:]}]({rel(p)})" for p in files), ""]
        for m in metrics:
            ok = {name: row[AVG] for name, row in g.grids[m].items() if row[AVG].ok and row[AVG].bold}
            if ok:
                best = "; ".join(f"{name} {c.value()}{c.mark}" for name, c in ok.items())
                lines.append(f"- best average `{m}`: {best}")
        lines.append("")
        for png in [p for p in figures.get(g.slug, []) if p.suffix == ".png"]:
            kind = png.stem.split("_", 1)[0]
            metric = png.stem.removeprefix(f"{kind}_{g.slug}").lstrip("_") or metrics[0]
            pdf = png.with_suffix(".pdf")
            lines += [
                f"{_figure_caption(kind, metric, g.baseline or baseline, alpha)} ([PDF]({rel(pdf)}))",
                "",
                f"![{kind}]({rel(png)})",
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"
