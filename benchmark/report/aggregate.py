"""Aggregation, the one path every output takes: groups, cells (mean over domains within a seed,
then mean and std over seeds), paired tests against the baseline, ranks and bootstrap intervals.

A *group* is one protocol x data set x setting x backbone x device kind: tables never mix them.
Within a group every method is expected on every domain and seed that occurs in the group; a
run that failed or is missing is shown as such, never dropped. The Markdown, LaTeX and CSV
tables, the leaderboard CSV and the plots all read the cells computed here.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.hparams import format_departures
from benchmark.core.metrics import METRIC_NAMES
from benchmark.core.records import PREDS
from benchmark.report import stats
from benchmark.report.frame import (
    DEFAULT_METRICS,
    SUMMARY_METRICS,
    TABLE_KEY,
    _axes,
    _seed_domain_table,
    higher_is_better,
    split_metric,
)
from benchmark.report.tables import MARK_BETTER, MARK_WORSE, Cell, mark_best

DEFAULT_BASELINE = "zero_shot"
DEFAULT_ALPHA = 0.05
BOOTSTRAP_SEED = 0
AVG = "avg"


@dataclass
class Ranking:
    """Average ranks of the methods finished on every block, with Friedman and Nemenyi results."""

    methods: list[str]
    result: stats.FriedmanResult
    cliques: list[tuple[int, int]]


@dataclass
class TestRow:
    """One method against the baseline on one metric, with Holm-adjusted p-values."""

    method: str
    result: stats.PairedResult
    holm_wilcoxon: float
    holm_ttest: float
    mark: str


@dataclass
class Group:
    """Everything reported about one protocol x data set x setting x backbone."""

    key: tuple[str, str, str, str, str, str]
    frame: pd.DataFrame
    methods: list[str]
    domains: list[str]
    seeds: list[Any]
    baseline: str | None
    grids: dict[str, dict[str, dict[str, Cell]]] = field(default_factory=dict)
    tests: dict[str, list[TestRow]] = field(default_factory=dict)
    ranks: dict[str, Ranking | None] = field(default_factory=dict)
    selection: Any = None
    """The ``benchmark.report.selection.Selection`` the records went through (None: no selection step)."""

    @property
    def title(self) -> str:
        protocol, dataset, setting, model, pretrained, device = self.key
        return f"{dataset} / {setting} (protocol {protocol}, {model} / {pretrained}, {device})"

    @property
    def slug(self) -> str:
        protocol, dataset, setting, model, pretrained, device = self.key
        tag = Path(str(pretrained)).stem if "/" in str(pretrained) else str(pretrained)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}_{setting}_{protocol}_{model}_{tag}_{device}").strip("-")

    @property
    def stream_key(self) -> str:
        """What seeds a group's bootstrap resamples: the slug without the device kind, so that a CPU
        and a GPU group of the same cell draw the same resamples of the same samples."""
        return self.slug.removesuffix(f"_{self.key[-1]}")

    @property
    def columns(self) -> list[str]:
        return [*self.domains, AVG]

    def seeds_text(self) -> str:
        return f"n = {len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''} ({', '.join(map(str, self.seeds))})"

    def score_text(self) -> str:
        """Which OOD score the score-dependent metrics use, in words."""
        described = dict(zip(self.frame.score, self.frame.score_description))
        names = sorted(n for n in described if isinstance(n, str))
        if not names:
            return "OOD score: none recorded."
        return "OOD score: " + "; ".join(f"`{n}` ({described[n] or 'not recorded'})" for n in names) + "."

    def regime_text(self) -> str:
        """Each method's regime; says so when the table ranks methods of different regimes."""
        by_regime: dict[str, list[str]] = {}
        for method in self.methods:
            regimes = sorted(self.frame[self.frame.method == method].regime.dropna().unique())
            for r in regimes or ["?"]:
                by_regime.setdefault(r, []).append(method)
        text = "Regimes: " + "; ".join(f"{r}: {', '.join(ms)}" for r, ms in sorted(by_regime.items())) + "."
        adaptive = {r for r in by_regime if r != "none"}
        if len(adaptive) > 1:
            text += (
                " This table ranks methods of different regimes together (transductive: adapted on the "
                "unlabeled adapt set, then tested; online: predictions along one pass over the test stream; "
                "episodic: each test image adapted on alone)."
            )
        return text


def _grid(g: Group, metric: str) -> dict[str, dict[str, Cell]]:
    """Methods x (domains, avg) cells of one metric; avg = per-seed mean over domains, then over seeds."""
    grid: dict[str, dict[str, Cell]] = {}
    n = len(g.seeds)
    for method in g.methods:
        mg = g.frame[g.frame.method == method]
        table = _seed_domain_table(mg, metric, g.domains)
        row = {}
        for d in g.domains:
            vals = table[d].dropna().to_numpy() if d in table else np.empty(0)
            has_records = bool((mg.domain == d).any())
            state = "ok" if len(vals) else ("failed" if has_records else "missing")
            row[d] = Cell(*stats.mean_std(vals), n_done=len(vals), n_expected=n, state=state)
        avg = table.dropna().mean(axis=1).to_numpy()
        if len(avg):
            state = "ok"
        elif not len(mg):
            state = "missing"
        else:
            state = "failed" if (mg.status != "done").all() else "incomplete"
        row[AVG] = Cell(*stats.mean_std(avg), n_done=len(avg), n_expected=n, state=state)
        grid[method] = row
    mark_best(grid, g.columns, higher_is_better(metric))
    return grid


def _pairs(frame: pd.DataFrame, method: str, metric: str) -> pd.Series:
    """Finished, finite values of one method indexed by (domain, seed)."""
    mg = frame[(frame.method == method) & (frame.status == "done") & np.isfinite(frame[metric])]
    return mg.groupby(["domain", "seed"])[metric].mean()


def paired_differences(g: Group, method: str, metric: str) -> pd.Series:
    """``method`` minus the baseline over the (domain, seed) pairs both finished, indexed by (domain, seed),
    sorted: the differences every paired test, interval and difference figure of the group reads."""
    base = _pairs(g.frame, g.baseline, metric)
    vals = _pairs(g.frame, method, metric)
    common = vals.index.intersection(base.index).sort_values()
    return pd.Series(vals[common].to_numpy() - base[common].to_numpy(), index=common, dtype=np.float64)


def _tests(g: Group, metric: str, alpha: float) -> list[TestRow]:
    """Each method against the baseline over the (domain, seed) pairs both finished; Holm across methods."""
    if g.baseline is None:
        return []
    base = _pairs(g.frame, g.baseline, metric)
    results = []
    for method in g.methods:
        if method == g.baseline:
            continue
        vals = _pairs(g.frame, method, metric)
        common = vals.index.intersection(base.index).sort_values()
        results.append((method, stats.paired_tests(vals[common].to_numpy(), base[common].to_numpy())))
    hw = stats.holm([r.p_wilcoxon for _, r in results])
    ht = stats.holm([r.p_ttest for _, r in results])
    rows = []
    for (method, r), pw, pt in zip(results, hw, ht):
        mark = ""
        if math.isfinite(pw) and pw < alpha and r.mean_diff != 0:
            mark = MARK_BETTER if (r.mean_diff > 0) == higher_is_better(metric) else MARK_WORSE
        rows.append(TestRow(method, r, pw, pt, mark))
    return rows


DIFFERENCE_LEVEL = 0.95
"""Level of the paired t interval of the difference figure."""
DIFFERENCE_COLUMNS = ["method", "regime", "n", "mean", "ci_lo", "ci_hi", "p_wilcoxon", "p_holm", "mark"]


def method_regime(g: Group, method: str) -> str:
    """The regime of a row (its records' first; ``?`` when none is recorded)."""
    regimes = g.frame[g.frame.method == method].regime.dropna()
    return str(regimes.iloc[0]) if len(regimes) else "?"


def difference_frame(g: Group, metric: str) -> pd.DataFrame:
    """The data of the difference figure: per method, its mean difference to the baseline over the
    (domain, seed) pairs both finished (``n``), the 95% paired t interval of that mean
    (:func:`stats.paired_t_interval`), the paired Wilcoxon p-value, its Holm-adjusted value and the
    table's mark (the same :class:`TestRow` as the tables' daggers). Sorted best first (largest
    improvement, whichever the metric's direction), ties by name; methods without a pair last.
    Empty without a baseline."""
    rows = []
    tests = {t.method: t for t in g.tests.get(metric) or _tests(g, metric, DEFAULT_ALPHA)}
    for method in g.methods:
        if g.baseline is None or method == g.baseline:
            continue
        d = paired_differences(g, method, metric)
        lo, hi = stats.paired_t_interval(d.to_numpy(), DIFFERENCE_LEVEL)
        t = tests.get(method)
        rows.append(
            {
                "method": method,
                "regime": method_regime(g, method),
                "n": len(d),
                "mean": float(d.mean()) if len(d) else math.nan,
                "ci_lo": lo,
                "ci_hi": hi,
                "p_wilcoxon": t.result.p_wilcoxon if t else math.nan,
                "p_holm": t.holm_wilcoxon if t else math.nan,
                "mark": t.mark if t else "",
            }
        )
    frame = pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
    if frame.empty:
        return frame
    gain = frame["mean"] if higher_is_better(metric) else -frame["mean"]
    order = sorted(
        range(len(frame)),
        key=lambda i: (
            not math.isfinite(gain.iloc[i]),
            -gain.iloc[i] if math.isfinite(gain.iloc[i]) else 0.0,
            frame.method.iloc[i],
        ),
    )
    return frame.iloc[order].reset_index(drop=True)


def difference_grid(g: Group, metric: str) -> pd.DataFrame:
    """The data of the difference heatmap: methods (table order, baseline left out) x domains, each the
    mean over seeds of the method's difference to the baseline on that domain, and ``all``, the mean
    over every (domain, seed) pair (the difference figure's mean); nan where no pair finished."""
    columns = [*g.domains, "all"]
    rows = {}
    for method in g.methods:
        if g.baseline is None or method == g.baseline:
            continue
        d = paired_differences(g, method, metric)
        by_domain = d.groupby(level="domain").mean() if len(d) else pd.Series(dtype=np.float64)
        rows[method] = [float(by_domain.get(dom, math.nan)) for dom in g.domains] + [
            float(d.mean()) if len(d) else math.nan
        ]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns) if rows else pd.DataFrame(columns=columns)


def _ranking(g: Group, metric: str, alpha: float) -> Ranking | None:
    """Friedman ranks over the (domain, seed) blocks on which every method with a finished run finished."""
    done = g.frame[(g.frame.status == "done") & np.isfinite(g.frame[metric])]
    table = done.groupby(["domain", "seed", "method"])[metric].mean().unstack("method")
    methods = [m for m in g.methods if m in table.columns]
    blocks = table[methods].dropna() if methods else table
    if len(methods) < 2 or blocks.empty:
        return None
    result = stats.friedman(blocks.to_numpy(), higher_is_better(metric), alpha)
    return Ranking(methods, result, stats.cd_cliques(result.avg_ranks, result.cd))


def _bootstrap(g: Group, metrics: list[str], n_boot: int) -> None:
    """Set each cell's 95% percentile interval over ``n_boot`` resamples of the evaluated samples.

    Per method and domain one seeded generator draws the resamples; when all seeds were evaluated
    on the same samples (same labels) they share each resample. A domain cell's replicate is the
    mean over its finished seeds; the avg cell's is the mean over domains of the means over the
    seeds that finished every domain.
    """
    by_part: dict[str, list[str]] = {}
    for m in metrics:
        part, base = split_metric(m)
        if base in stats.BOOTSTRAP_METRICS:
            by_part.setdefault(part, []).append(m)
    for part, names in by_part.items():
        bases = [split_metric(n)[1] for n in names]
        for method in g.methods:
            mg = g.frame[(g.frame.method == method) & (g.frame.status == "done")]
            reps: dict[str, dict[str, dict[Any, np.ndarray]]] = {n: {} for n in names}
            for d in g.domains:
                runs = mg[mg.domain == d].drop_duplicates("seed").sort_values("seed")
                arrays = [_load_preds(r.dir, part, r.score) for r in runs.itertuples()]
                pairs = [
                    (s, a, k)
                    for s, a, k in zip(runs.seed, arrays, runs.num_known)
                    if a is not None and pd.notna(k) and k > 0
                ]
                if not pairs:
                    continue
                rng = np.random.default_rng(
                    [BOOTSTRAP_SEED, zlib.crc32(f"{g.stream_key}|{method}|{d}|{part}".encode())]
                )
                shared = all(np.array_equal(a["label"], pairs[0][1]["label"]) for _, a, _ in pairs)
                idx = stats.bootstrap_indices(len(pairs[0][1]["label"]), n_boot, rng) if shared else None
                for s, a, k in pairs:
                    i = idx if shared else stats.bootstrap_indices(len(a["label"]), n_boot, rng)
                    out = stats.bootstrap_metrics(bases, a["pred"], a["score"], a["label"], int(k), i)
                    for n, b in zip(names, bases):
                        reps[n].setdefault(d, {})[s] = out[b]
            for n in names:
                row = g.grids[n][method]
                for d, per_seed in reps[n].items():
                    row[d].ci = stats.percentile_interval(np.mean(list(per_seed.values()), axis=0))
                complete = [s for s in g.seeds if all(s in reps[n].get(d, {}) for d in g.domains)]
                if complete:
                    avg = np.mean([np.mean([reps[n][d][s] for s in complete], axis=0) for d in g.domains], axis=0)
                    row[AVG].ci = stats.percentile_interval(avg)


def _load_preds(run_dir: str | None, part: str, score: str | None) -> dict[str, np.ndarray] | None:
    """``pred``, ``score`` (of OOD score ``score``), ``label`` of one part (``test``, ``adapt``, ``online``)."""
    if not run_dir or not score:
        return None
    path = Path(run_dir) / PREDS
    try:
        with np.load(path) as z:
            return {"pred": z[f"{part}_pred"], "score": z[f"{part}_score_{score}"], "label": z[f"{part}_label"]}
    except (OSError, KeyError, ValueError):
        return None


def analyse(
    df: pd.DataFrame,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    baseline: str = DEFAULT_BASELINE,
    alpha: float = DEFAULT_ALPHA,
    bootstrap: int = 0,
    selection: Any = None,
) -> list[Group]:
    """Cells, paired tests, ranks (and bootstrap intervals when ``bootstrap > 0``) of every group."""
    stat_metrics = list(dict.fromkeys([*metrics, *SUMMARY_METRICS]))
    groups = []
    for key, frame in df.groupby(TABLE_KEY, sort=True, dropna=False):
        labels = sorted(frame.method.unique())
        names = dict(zip(frame.method, frame["name"]))
        base = baseline if baseline in labels else next((m for m in labels if names[m] == baseline), None)
        methods = ([base] if base else []) + [m for m in labels if m != base]
        domains, seeds = _axes(frame)
        g = Group(tuple(key), frame, methods, domains, seeds, base, selection=selection)
        for m in dict.fromkeys([*stat_metrics, *METRIC_NAMES]):
            g.grids[m] = _grid(g, m)
        for m in stat_metrics:
            g.tests[m] = _tests(g, m, alpha)
            for row in g.tests[m]:
                g.grids[m][row.method][AVG].mark = row.mark
        for m in metrics:
            g.ranks[m] = _ranking(g, m, alpha)
        if bootstrap > 0:
            _bootstrap(g, list(metrics), bootstrap)
        groups.append(g)
    return groups


def leaderboard(groups: list[Group]) -> pd.DataFrame:
    """One row per group x method, for scripts: the method's name, its departures, row label, regime,
    OOD score, selection rule, run counts and each metric's mean and std over seeds of the average
    over domains (the same ``avg`` cells as every table)."""
    rows = []
    for g in groups:
        for method in g.methods:
            mg = g.frame[g.frame.method == method]
            first = mg.iloc[0]
            present = set(zip(mg.domain, mg.seed))
            row = dict(zip(TABLE_KEY, g.key))
            row.update(
                method=first["name"],
                departures=format_departures(first["departures"]),
                label=method,
                regime=first["regime"],
                score=first["score"],
                selection=g.selection.rule if g.selection is not None else "fixed",
                n_seeds=g.grids[METRIC_NAMES[0]][method][AVG].n_done,
                n_domains=len(g.domains),
                n_runs=len(mg),
                n_failed=int((mg.status != "done").sum()),
                n_missing=sum((d, s) not in present for d in g.domains for s in g.seeds),
            )
            for m in METRIC_NAMES:
                cell = g.grids[m][method][AVG]
                row[f"{m}_mean"], row[f"{m}_std"] = cell.mean, cell.std
            rows.append(row)
    cols = [
        *TABLE_KEY,
        "method",
        "departures",
        "label",
        "regime",
        "score",
        "selection",
        "n_seeds",
        "n_domains",
        "n_runs",
        "n_failed",
        "n_missing",
    ]
    return pd.DataFrame(rows, columns=cols + [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")])
