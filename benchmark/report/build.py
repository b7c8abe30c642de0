"""Run records -> leaderboard, per-group tables, statistics, plots and a report page, on disk.

Tables come only from the records on disk, never from logs, so a sweep split across machines can
be reported later; the report is a function of the records alone and imports no torch. Outputs
under ``out``: ``leaderboard.md`` / ``leaderboard.csv`` (one row per method x group),
``tables/<group>.{md,tex,csv}``, ``plots/*.{png,pdf}`` (per group: ``diff_<group>_<metric>``, the
difference to the baseline, ``heatmap_<group>``, ``bars_``, ``cd_``, ``tradeoff_``, ``curves_``) and
``report.md`` showing each figure with a sentence on how to read it. The output
is byte-identical when rebuilt from the same records. Every file is written atomically
(temporary file + rename) and a rebuild holds ``<out>/.report.lock``, so two sweeps sharing an
``--out`` never interleave; the records are read under that lock too, so the last rebuild counts
every record on disk.

Metrics that depend on the OOD score are shown under one score per report: each record's
headline score (its protocol's, ``msp_cos`` for ``ueo``) unless ``score`` names another; every
caption names it. Records that are not valid (another schema or protocol version, hollow,
predictions missing or not matching their checksum) are left out and listed in ``problems``.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.core.records import atomic_write, scan_records
from benchmark.report.aggregate import (
    DEFAULT_ALPHA,
    DEFAULT_BASELINE,
    Group,
    analyse,
    difference_frame,
    difference_grid,
    leaderboard,
    method_regime,
)
from benchmark.report.frame import ALL_METRICS, DEFAULT_METRICS, records_frame
from benchmark.report.render import csv_text, group_tables, leaderboard_markdown, report_markdown
from benchmark.report.reported import load_reported, reported_files
from benchmark.report.selection import select


@dataclass
class Report:
    """What a rebuild produced: the leaderboard frame and the records it could not use."""

    board: pd.DataFrame
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.report.lock`` (``flock``) while a report is rebuilt: rebuilds on one ``--out`` take turns."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".report.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_tables(groups: list[Group], out: Path, metrics: tuple[str, ...], alpha: float) -> dict[str, list[Path]]:
    """``tables/<group>.md``, ``.tex`` and ``.csv`` (long format) per group; returns the paths by group slug.

    Tables of an earlier report that this one does not rewrite are removed by ``write_report``
    once ``report.md`` no longer links them (:func:`remove_stale`).
    """
    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for g in groups:
        files = [tdir / f"{g.slug}.md", tdir / f"{g.slug}.tex", tdir / f"{g.slug}.csv"]
        for path, text in zip(files, group_tables(g, metrics, alpha)):
            atomic_write(path, text)
        paths[g.slug] = files
    return paths


def write_plots(
    groups: list[Group], out: Path, metrics: tuple[str, ...], alpha: float = DEFAULT_ALPHA
) -> dict[str, list[Path]]:
    """Per group: the difference to the baseline of each metric in ``metrics`` (the headline) and its
    methods x domains heatmap, the scores, a critical-difference diagram, the accuracy/AUROC
    trade-off and the training curves.

    Figures of an earlier report that this one does not rewrite are removed by ``write_report``
    once ``report.md`` no longer links them (:func:`remove_stale`).
    """
    from benchmark.report import plots

    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Path]] = {}
    primary = "hm_accpc_auroc" if "hm_accpc_auroc" in metrics else metrics[0]
    for g in groups:
        files: list[Path] = []
        regimes = {m: method_regime(g, m) for m in g.methods}
        if g.baseline is not None:
            for m in metrics:
                frame = difference_frame(g, m)
                if (frame.n > 0).any():
                    files += plots.save(
                        plots.difference_figure(frame, m, g.baseline, f"{g.title}: {m} − {g.baseline}", alpha),
                        pdir / f"diff_{g.slug}_{m}",
                    )
            grids = {m: difference_grid(g, m) for m in metrics}
            if any(len(grid) for grid in grids.values()):
                files += plots.save(
                    plots.heatmap_figure(grids, g.baseline, f"{g.title}: difference to {g.baseline} per domain"),
                    pdir / f"heatmap_{g.slug}",
                )
        files += plots.save(
            plots.bars_figure({m: g.grids[m] for m in metrics}, g.columns, g.title, regimes), pdir / f"bars_{g.slug}"
        )
        r = g.ranks.get(primary)
        if r is not None:
            files += plots.save(
                plots.cd_figure(
                    r.methods,
                    r.result.avg_ranks,
                    r.result.cd,
                    r.cliques,
                    f"{g.title}: average rank of {primary} (N = {r.result.n_blocks} blocks)",
                ),
                pdir / f"cd_{g.slug}_{primary}",
            )
        files += plots.save(
            plots.tradeoff_figure(g.grids["acc_pc"], g.grids["auroc"], g.columns, g.baseline, g.title),
            pdir / f"tradeoff_{g.slug}",
        )
        done = g.frame[g.frame.status == "done"]
        histories = {m: [h for h in done[done.method == m].history if h] for m in g.methods}
        histories = {m: h for m, h in histories.items() if h}
        if histories:
            files += plots.save(plots.curves_figure(histories, regimes, g.title), pdir / f"curves_{g.slug}")
        made[g.slug] = files
    return made


def remove_stale(folder: Path, suffixes: tuple[str, ...], written: dict[str, list[Path]]) -> None:
    """Remove the files of an earlier report in ``folder`` that this one did not write (after ``report.md``)."""
    keep = {p for files in written.values() for p in files}
    for old in sorted(folder.glob("*")):
        if old.suffix in suffixes and old not in keep:
            old.unlink(missing_ok=True)


def write_report(
    out: Path,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    baseline: str = DEFAULT_BASELINE,
    alpha: float = DEFAULT_ALPHA,
    bootstrap: int = 0,
    plots: bool = True,
    reported: list[Path] | None = None,
    score: str | None = None,
    selection: str = "fixed",
    selection_metric: str = "hm_accpc_auroc",
) -> Report:
    """Rebuild the leaderboard, tables, plots and report page under ``out`` from its records.

    ``metrics``: per-domain tables, ranks and plots (any of :data:`ALL_METRICS`); ``baseline``: the
    method the paired tests compare against; ``bootstrap``: number of resamples of the test samples
    for 95% intervals (0 = off); ``reported``: published-number files (default: every
    ``datasets/*/reported.csv``); ``score``: the OOD score of the score-dependent metrics (default:
    each record's headline score); ``selection``: the rule that picks one hyper-parameter point per
    method (``benchmark.report.selection``) by ``selection_metric``. Returns the leaderboard frame and
    the records left out as unusable.
    """
    out = Path(out)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(ALL_METRICS)}")
    with report_lock(out):
        stored, problems = scan_records(out)
        if not stored:
            more = f" ({len(problems)} unusable: {problems[0]})" if problems else ""
            raise FileNotFoundError(f"no valid run records under {out / 'runs'}{more}; run a sweep first")
        if score is not None:
            available = sorted({n for _, r in stored for n in r.get("scores") or {}})
            if score not in available:
                raise ValueError(
                    f"no record has the OOD score {score!r}; recorded scores: {', '.join(available) or 'none'}"
                )
        kept, chosen = select(stored, selection, selection_metric, score)
        if not kept:
            raise FileNotFoundError(f"no run records of a target domain under {out / 'runs'}")
        df = records_frame(kept, score, chosen.labels)
        sources = reported_files() if reported is None else list(reported)
        published = load_reported(sources)
        groups = analyse(df, metrics, baseline, alpha, bootstrap, chosen)
        board = leaderboard(groups)
        atomic_write(out / "leaderboard.csv", csv_text(board))
        atomic_write(
            out / "leaderboard.md",
            leaderboard_markdown(groups, df, metrics, baseline, alpha, bootstrap, published, problems),
        )
        tables = write_tables(groups, out, metrics, alpha)
        figures = write_plots(groups, out, metrics, alpha) if plots else {}
        # report.md last, stale files after it: an interrupted rebuild never leaves a link to a removed file
        atomic_write(out / "report.md", report_markdown(groups, out, tables, figures, metrics, baseline, alpha))
        remove_stale(out / "tables", (".md", ".tex", ".csv"), tables)
        if plots:
            remove_stale(out / "plots", (".png", ".pdf"), figures)
    return Report(board, problems)
