"""Run records -> leaderboard, per-group tables, statistics, plots and a report page.

Tables come only from the records on disk, never from logs, so a sweep split across machines can
be reported later. A *group* is one protocol x data set x setting x backbone (model and weight
tag): tables never mix them. Within a group every method is expected on every domain and seed
that occurs in the group; a run that failed or is missing is shown as such, never dropped.

Outputs under ``out``: ``leaderboard.md`` / ``leaderboard.csv`` (one row per method x group),
``tables/<group>.{md,tex,csv}``, ``plots/*.{png,pdf}`` and ``report.md`` linking them. The
output is a pure function of the records (sorted, no timestamps), so it is byte-identical when
rebuilt from the same records. Every file is written atomically (temporary file + rename) and a
rebuild holds ``<out>/.report.lock``, so two sweeps sharing an ``--out`` never interleave.

Metrics that depend on the OOD score are shown under one score per report: each record's
headline score (its protocol's, ``msp_cos`` for ``ueo``) unless ``score`` names another; every
caption names it.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.report import stats
from benchmark.core.metrics import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, METRIC_NAMES
from benchmark.core.records import PREDS, atomic_write, load_records
from benchmark.report.reported import load_reported, match_reported, reported_files
from benchmark.report.tables import (MARK_BETTER, MARK_WORSE, Cell, csv_rows, fmt_num, fmt_p, latex_grid,
                              mark_best, markdown_ci_grid, markdown_grid)

DEFAULT_METRICS = ("acc_pc", "auroc", "hm_accpc_auroc")
SUMMARY_METRICS = ("acc", "acc_pc", "auroc", "fpr95", "oscr", "hm_accpc_auroc", "hos")
PARTS = (("test", ""), ("adapt", "adapt_"), ("adapt_online", "online_"))
ALL_METRICS = tuple(p + m for _, p in PARTS for m in METRIC_NAMES)
"""Every metric a record holds: test-set names, ``adapt_*`` (transductive) and ``online_*``."""
GROUP = ["protocol", "dataset", "setting", "method"]
TABLE_KEY = ["protocol", "dataset", "setting", "model", "pretrained"]
DEFAULT_BASELINE = "zero_shot"
DEFAULT_ALPHA = 0.05
BOOTSTRAP_SEED = 0
AVG = "avg"


def departures(method: str, hparams: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """The hyper-parameters of a run that depart from its method's recipe on ``dataset``.

    The recipe is the method's registered defaults updated by the data set's ``recipes`` (a
    paper's own recipe for that data set, e.g. UEO's 5 epochs on DomainNet), so those values are
    not departures; a data set's ``overrides`` (e.g. the embedded budget) and CLI overrides are.
    """
    from benchmark.data import get_spec
    from benchmark.registry import METHODS, import_methods
    from benchmark.run.sweep import recipe_hparams

    import_methods()
    if METHODS.module_dict.get(method) is None or not hparams:
        return {}
    try:
        get_spec(dataset)
        recipe = recipe_hparams(method, dataset)
    except (KeyError, ValueError, OSError):
        recipe = METHODS.module_dict[method].hparam_defaults()
    return {k: hparams[k] for k in sorted(hparams) if k in recipe and hparams[k] != recipe[k]}


def method_label(method: str, hparams: dict[str, Any], dataset: str | None = None) -> str:
    """The method name plus every departure from its recipe, e.g. ``ueo (epochs=10)``."""
    diffs = departures(method, hparams, dataset)
    text = ", ".join(f"{k}={format_value(v)}" for k, v in diffs.items())
    return f"{method} ({text})" if text else method


def format_value(value: Any) -> str:
    """A hyper-parameter value as it is written on the command line (lists without spaces)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


def split_metric(metric: str) -> tuple[str, str]:
    """``(part of preds.npz, base metric)``: ``adapt_auroc`` -> ``("adapt", "auroc")``, ``h_score`` -> test."""
    for part, prefix in (("adapt", "adapt_"), ("online", "online_")):
        if metric.startswith(prefix):
            return part, metric[len(prefix):]
    return "test", metric


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, ``adapt_`` / ``online_`` prefixes included (only ``fpr95`` is lower-is-better)."""
    return HIGHER_IS_BETTER[split_metric(metric)[1]]


def record_metrics(rec: dict[str, Any], part: str, score: str | None = None) -> dict[str, float]:
    """The flat metrics of one part of a record under one OOD score (default: the record's headline).

    Classification metrics are the same under every score; score metrics of a score the record
    lacks (e.g. a method's own score) are absent.
    """
    block = (rec.get("metrics") or {}).get(part) or {}
    out = {m: block.get(m) for m in CLASSIFICATION_METRICS}
    by_score = block.get("scores")
    name = score or rec.get("headline_score")
    if isinstance(by_score, dict):
        out.update((by_score.get(name) or {}) if name else {})
    elif name in (None, rec.get("score")):  # records of protocol version 1: one score, flat
        out.update(block)
    return out


def records_frame(records: list[dict[str, Any]], score: str | None = None) -> pd.DataFrame:
    """One row per record: the spec axes, method label and name, status, data facts, regime, score and metrics.

    ``score`` None takes each record's headline score (its protocol's).
    """
    rows = []
    for rec in records:
        spec = rec.get("spec", {})
        hparams = spec.get("hparams", {}) or {}
        row = {
            "protocol": spec.get("protocol"),
            "dataset": spec.get("dataset"),
            "setting": spec.get("setting"),
            "domain": spec.get("domain"),
            "seed": spec.get("seed"),
            "method": rec.get("_label") or method_label(spec.get("method", "?"), hparams, spec.get("dataset")),
            "name": spec.get("method", "?"),
            "model": spec.get("model"),
            "pretrained": spec.get("pretrained"),
            "status": rec.get("status", "unknown"),
            "error": rec.get("error"),
            "dir": rec.get("_dir"),
            "num_known": (rec.get("data") or {}).get("num_known"),
            "history": rec.get("history") or [],
            "regime": rec.get("regime") or hparams.get("regime") or "transductive",
            "score": score or rec.get("headline_score") or rec.get("score"),
        }
        for part, prefix in PARTS:
            values = record_metrics(rec, part, score)
            for m in METRIC_NAMES:
                v = values.get(m)
                row[prefix + m] = float("nan") if v is None else float(v)
        rows.append(row)
    cols = ["protocol", "dataset", "setting", "domain", "seed", "method", "name", "model", "pretrained", "status",
            "error", "dir", "num_known", "history", "regime", "score"]
    return pd.DataFrame(rows, columns=cols + list(ALL_METRICS))


def _axes(g: pd.DataFrame) -> tuple[list[str], list[Any]]:
    """The domains and seeds of a group, sorted."""
    return sorted(g.domain.dropna().unique()), sorted(g.seed.dropna().unique())


def _seed_domain_table(mg: pd.DataFrame, metric: str, domains: list[str]) -> pd.DataFrame:
    """Seeds x domains of one method's finished, finite values (mean over duplicate records)."""
    done = mg[(mg.status == "done") & np.isfinite(mg[metric])]
    return done.groupby(["seed", "domain"])[metric].mean().unstack("domain").reindex(columns=domains)


def leaderboard(df: pd.DataFrame, metrics: tuple[str, ...] = METRIC_NAMES) -> pd.DataFrame:
    """One row per protocol x data set x setting x method (x backbone): mean/std over seeds of domain averages.

    A seed contributes only when it finished every domain of the group (otherwise its average
    would be over other domains); ``n_failed`` and ``n_missing`` count failed and absent runs.
    """
    out = []
    for key, g in df.groupby(TABLE_KEY, sort=True, dropna=False):
        domains, seeds = _axes(g)
        for method, mg in g.groupby("method", sort=True):
            row = dict(zip(TABLE_KEY, key))
            row["method"] = method
            present = set(zip(mg.domain, mg.seed))
            n_missing = sum((d, s) not in present for d in domains for s in seeds)
            tables = {m: _seed_domain_table(mg, m, domains).dropna() for m in metrics}
            complete = tables[metrics[0]] if metrics else pd.DataFrame()
            row.update(n_seeds=len(complete), n_domains=len(domains), n_runs=len(mg),
                       n_failed=int((mg.status != "done").sum()), n_missing=n_missing)
            for m in metrics:
                mean, std = stats.mean_std(tables[m].mean(axis=1).to_numpy())
                row[f"{m}_mean"], row[f"{m}_std"] = mean, std
            out.append(row)
    cols = ["protocol", "dataset", "setting", "method", "model", "pretrained", "n_seeds", "n_domains", "n_runs",
            "n_failed", "n_missing"]
    return pd.DataFrame(out, columns=cols + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])


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

    key: tuple[str, str, str, str, str]
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
        protocol, dataset, setting, model, pretrained = self.key
        return f"{dataset} / {setting} (protocol {protocol}, {model} / {pretrained})"

    @property
    def slug(self) -> str:
        protocol, dataset, setting, model, pretrained = self.key
        tag = Path(str(pretrained)).stem if "/" in str(pretrained) else str(pretrained)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}_{setting}_{protocol}_{model}_{tag}").strip("-")

    @property
    def columns(self) -> list[str]:
        return [*self.domains, AVG]

    def seeds_text(self) -> str:
        return f"n = {len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''} ({', '.join(map(str, self.seeds))})"

    def score_text(self) -> str:
        """Which OOD score the score-dependent metrics use, in words."""
        from benchmark.adapt.scores import describe_score

        names = sorted(n for n in self.frame.score.dropna().unique())
        if not names:
            return "OOD score: none recorded."
        return "OOD score: " + "; ".join(f"`{n}` ({describe_score(n)})" for n in names) + "."

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
            text += (" This table ranks methods of different regimes together (transductive: adapted on the "
                     "unlabeled adapt set, then tested; online: predictions along one pass over the test stream; "
                     "episodic: each test image adapted on alone).")
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
                pairs = [(s, a, k) for s, a, k in zip(runs.seed, arrays, runs.num_known)
                         if a is not None and pd.notna(k) and k > 0]
                if not pairs:
                    continue
                rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(f"{g.slug}|{method}|{d}|{part}".encode())])
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


def analyse(df: pd.DataFrame, metrics: tuple[str, ...] = DEFAULT_METRICS, baseline: str = DEFAULT_BASELINE,
            alpha: float = DEFAULT_ALPHA, bootstrap: int = 0, selection: Any = None) -> list[Group]:
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
        for m in stat_metrics:
            g.grids[m] = _grid(g, m)
            g.tests[m] = _tests(g, m, alpha)
            for row in g.tests[m]:
                g.grids[m][row.method][AVG].mark = row.mark
        for m in metrics:
            g.ranks[m] = _ranking(g, m, alpha)
        if bootstrap > 0:
            _bootstrap(g, list(metrics), bootstrap)
        groups.append(g)
    return groups


def _caption(g: Group, metric: str, baseline: str | None, alpha: float) -> str:
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    n_dom = f"{len(g.domains)} domain{'s' if len(g.domains) != 1 else ''}"
    text = (f"{g.title}: {metric} (%), mean ± sample std over {g.seeds_text()}; avg: mean over the "
            f"{n_dom} within each seed, then over seeds. Bold: best per column ({direction}). "
            f"{g.score_text()} {g.regime_text()}")
    if g.selection is not None:
        text += " " + g.selection.caption(g.key[1])
    if baseline:
        text += (f" {MARK_BETTER}/{MARK_WORSE} on avg: significantly better/worse than {baseline} (paired Wilcoxon "
                 f"over (domain, seed), Holm across methods, p < {alpha:g}).")
    return text


def _per_metric_markdown(g: Group, metrics: tuple[str, ...], alpha: float, bootstrap: int) -> list[str]:
    lines = []
    for m in metrics:
        lines += [f"### {m} per domain", "", _caption(g, m, g.baseline, alpha), "",
                  markdown_grid(g.grids[m], g.columns), ""]
        if bootstrap > 0:
            lines += [f"Bootstrap 95% percentile intervals of `{m}` ({bootstrap} resamples of the test samples, "
                      f"seed {BOOTSTRAP_SEED}):", ""]
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
    return tabulate(rows, headers=["method", *SUMMARY_METRICS, "seeds", "failed", "missing"], tablefmt="github",
                    disable_numparse=True)


def _tests_markdown(g: Group, metrics: list[str], alpha: float) -> list[str]:
    if g.baseline is None:
        return ["No baseline run in this group: no paired tests.", ""]
    rows = []
    for m in metrics:
        for t in g.tests[m]:
            r = t.result
            rows.append([t.method, m, r.n, fmt_num(r.mean_diff), fmt_p(r.p_wilcoxon), fmt_p(t.holm_wilcoxon),
                         fmt_p(r.p_ttest), fmt_p(t.holm_ttest), t.mark])
    if not rows:
        return [f"Only the baseline `{g.baseline}` ran: no paired tests.", ""]
    return [f"Each method minus `{g.baseline}` over the (domain, seed) pairs both finished: mean difference in "
            f"points, two-sided p-values of the paired Wilcoxon signed-rank test and the paired t-test, and their "
            f"Holm-adjusted values across the methods of this table (per metric and test); for fpr95 a negative "
            f"difference is an improvement. Marked: Holm-adjusted "
            f"Wilcoxon p < {alpha:g}. n/a: too few pairs, all differences zero, or zero variance.", "",
            tabulate(rows, headers=["method", "metric", "pairs", "mean diff", "Wilcoxon p", "Holm", "t-test p", "Holm",
                                    "sig."], tablefmt="github", disable_numparse=True), ""]


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
    lines = ["Average rank (1 = best; ties share the mean rank) over the (domain, seed) blocks on which every "
             "ranked method finished.", "",
             tabulate(rows, headers=["method", *metrics], tablefmt="github", disable_numparse=True), ""]
    for m in metrics:
        r = ranked.get(m)
        if r is None:
            lines.append(f"- {m}: n/a (fewer than two methods share a finished block)")
            continue
        f = r.result
        friedman = (f"Friedman chi2 = {fmt_num(f.statistic)}, p = {fmt_p(f.pvalue)}" if len(r.methods) >= 3
                    else "Friedman n/a (needs 3 or more methods)")
        lines.append(f"- {m}: N = {f.n_blocks} blocks, k = {len(r.methods)} methods; {friedman}; "
                     f"Nemenyi CD (alpha = {alpha:g}) = {fmt_num(f.cd)}")
    return lines + [""]


def _reported_markdown(g: Group, reported: pd.DataFrame) -> list[str]:
    protocol, dataset, setting, model, pretrained = g.key
    rows = []
    for r in match_reported(reported, protocol, dataset, setting, model, pretrained).itertuples():
        if r.method not in g.methods or (r.domain != AVG and r.domain not in g.domains):
            continue
        grid = g.grids.get(r.metric) or _grid(g, r.metric)
        cell = grid[r.method][r.domain]
        gap = cell.mean - r.value if cell.ok else math.nan
        rows.append([r.method, r.domain, r.metric, f"{r.value:.1f}", cell.value() + cell.suffix(),
                     f"{gap:+.1f}" if math.isfinite(gap) else "n/a", r.source])
    if not rows:
        return []
    return ["Published numbers for the same data set, protocol, setting and backbone; gap = measured - published.",
            "", tabulate(rows, headers=["method", "domain", "metric", "published", "measured", "gap", "source"],
                         tablefmt="github", disable_numparse=True), ""]


def _problems_markdown(g: Group) -> list[str]:
    lines = []
    bad = g.frame[g.frame.status != "done"].sort_values(["method", "domain", "seed"], kind="mergesort")
    for r in bad.itertuples():
        reason = r.error.splitlines()[0] if isinstance(r.error, str) and r.error else "no error recorded"
        lines.append(f"- {r.method} {r.domain} seed {r.seed}: {r.status}: {reason}")
    for method in g.methods:
        mg = g.frame[g.frame.method == method]
        present = set(zip(mg.domain, mg.seed))
        lines += [f"- {method} {d} seed {s}: missing (no record)" for d in g.domains for s in g.seeds
                  if (d, s) not in present]
    return (["Failed and missing runs:", "", *lines, ""]) if lines else []


def leaderboard_markdown(groups: list[Group], df: pd.DataFrame, metrics: tuple[str, ...] = DEFAULT_METRICS,
                         baseline: str = DEFAULT_BASELINE, alpha: float = DEFAULT_ALPHA, bootstrap: int = 0,
                         reported: pd.DataFrame | None = None) -> str:
    """The Markdown leaderboard: conventions, then per group a summary, per-domain tables and statistics."""
    n_done = int((df.status == "done").sum())
    n_missing = sum(len(g.methods) * len(g.domains) * len(g.seeds) - len(set(zip(g.frame.method, g.frame.domain,
                                                                                g.frame.seed))) for g in groups)
    lines = ["# Leaderboard", "",
             f"Built from {len(df)} run records ({n_done} done, {len(df) - n_done} failed; {n_missing} expected runs "
             f"missing). Metrics in percent on the test set (all classes; known = the first K); fpr95: lower is "
             f"better, all others higher.", "",
             "- Cells: mean ± sample standard deviation (ddof = 1) over seeds; n is in each caption. `avg` and the "
             "summary: mean over the domains within each seed, then mean ± std over the seeds that finished every "
             "domain.",
             "- **Bold**: best of its column (on the printed value). `(d/n)`: only d of the n seeds finished. "
             "`failed`: every run of the cell failed; `missing`: no record; `incomplete`: no seed finished every "
             "domain.",
             f"- {MARK_BETTER} / {MARK_WORSE}: significantly better / worse than the baseline `{baseline}` (paired "
             f"Wilcoxon signed-rank test over (domain, seed) pairs, Holm-corrected across methods, p < {alpha:g}).",
             ""]
    for g in groups:
        lines += [f"## {g.title}", "",
                  f"Summary: {len(g.domains)} domains ({', '.join(g.domains)}), {g.seeds_text()}. Each metric: "
                  f"mean ± std over seeds of the average over domains.", "", _summary_markdown(g), ""]
        lines += _selection_markdown(g)
        lines += _per_metric_markdown(g, metrics, alpha, bootstrap)
        lines += [f"### Significance against {g.baseline or baseline}", ""]
        lines += _tests_markdown(g, list(g.tests), alpha)
        lines += ["### Average ranks", ""] + _ranks_markdown(g, metrics, alpha)
        pub = _reported_markdown(g, reported) if reported is not None else []
        if pub:
            lines += ["### Published numbers", "", *pub]
        lines += _problems_markdown(g)
    return "\n".join(lines).rstrip("\n") + "\n"


def _selection_markdown(g: Group) -> list[str]:
    """The points a selection rule kept for this group, with their values, and the points it skipped."""
    from benchmark.report.selection import describe_pick

    sel = g.selection
    if sel is None or sel.rule == "fixed":
        return []
    rows = [[p.method, p.domain, describe_pick(p), fmt_num(p.value, 3), p.candidates, p.basis]
            for p in sel.picks if tuple(p.group[:5]) == tuple(g.key)]
    lines = ["### Hyper-parameter selection", "", sel.caption(g.key[1]), ""]
    if rows:
        lines += [tabulate(rows, headers=["method", "domain", "selected (departures)", "value", "points", "judged on"],
                           tablefmt="github", disable_numparse=True), ""]
    skipped = [s for s in sel.skipped if f" in {g.key[1]}/{g.key[2]}:" in s]
    if skipped:
        lines += ["Skipped:", "", *[f"- {s}" for s in skipped], ""]
    return lines


def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


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
        md = [f"# {g.title}", ""]
        tex = []
        rows = []
        for m in metrics:
            md += [f"## {m}", "", _caption(g, m, g.baseline, alpha), "", markdown_grid(g.grids[m], g.columns), ""]
            tex += [latex_grid(g.grids[m], g.columns, _caption(g, m, g.baseline, alpha), f"tab:{g.slug}-{m}"), ""]
            rows += [dict(zip(TABLE_KEY, g.key), metric=m, **r) for r in csv_rows(g.grids[m], g.columns)]
        files = [tdir / f"{g.slug}.md", tdir / f"{g.slug}.tex", tdir / f"{g.slug}.csv"]
        atomic_write(files[0], "\n".join(md).rstrip("\n") + "\n")
        atomic_write(files[1], "\n".join(tex).rstrip("\n") + "\n")
        atomic_write(files[2], _csv_text(pd.DataFrame(rows)))
        paths[g.slug] = files
    return paths


def write_plots(groups: list[Group], out: Path, metrics: tuple[str, ...]) -> dict[str, list[Path]]:
    """Bars, a critical-difference diagram, the accuracy/AUROC trade-off and training curves per group.

    Figures of an earlier report that this one does not rewrite are removed by ``write_report``
    once ``report.md`` no longer links them (:func:`remove_stale`).
    """
    from benchmark.report import plots

    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Path]] = {}
    primary = "hm_accpc_auroc" if "hm_accpc_auroc" in metrics else metrics[0]
    for g in groups:
        files = plots.grouped_bars({m: g.grids[m] for m in metrics}, g.columns, g.title, pdir / f"bars_{g.slug}")
        r = g.ranks.get(primary)
        if r is not None:
            files += plots.cd_diagram(r.methods, r.result.avg_ranks, r.result.cd, r.cliques,
                                      f"{g.title}: average rank of {primary} (N = {r.result.n_blocks})",
                                      pdir / f"cd_{g.slug}_{primary}")
        acc, au = g.grids["acc_pc"], g.grids["auroc"]
        points = [(m, d, acc[m][d], au[m][d]) for m in g.methods for d in g.domains]
        files += plots.tradeoff(points, g.methods, g.title, pdir / f"tradeoff_{g.slug}")
        done = g.frame[g.frame.status == "done"]
        histories = {m: [h for h in done[done.method == m].history if h] for m in g.methods}
        histories = {m: h for m, h in histories.items() if h}
        if histories:
            files += plots.curves(histories, g.methods, g.title, pdir / f"curves_{g.slug}")
        made[g.slug] = files
    return made


def remove_stale(folder: Path, suffixes: tuple[str, ...], written: dict[str, list[Path]]) -> None:
    """Remove the files of an earlier report in ``folder`` that this one did not write (after ``report.md``)."""
    keep = {p for files in written.values() for p in files}
    for old in sorted(folder.glob("*")):
        if old.suffix in suffixes and old not in keep:
            old.unlink(missing_ok=True)


def report_markdown(groups: list[Group], out: Path, tables: dict[str, list[Path]], figures: dict[str, list[Path]],
                    metrics: tuple[str, ...], baseline: str) -> str:
    """``report.md``: links to the leaderboard, tables and figures, and each group's best methods."""
    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    lines = ["# Report", "",
             "Built from the run records under `runs/`; rebuild with `python run_bench.py --report-only --out DIR`.",
             "", "- [Leaderboard](leaderboard.md): all tables, significance tests, ranks, failed and missing runs",
             "- [leaderboard.csv](leaderboard.csv): one row per method x data set x setting (mean and std over seeds)",
             ""]
    captions = {"bars": "Mean ± std over seeds per domain and average",
                "cd": "Critical-difference diagram (Nemenyi): methods joined by a bar do not differ significantly",
                "tradeoff": "Known-class accuracy against AUROC per method and domain",
                "curves": "Training curves (mean ± std over runs) per epoch"}
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
            pdf = png.with_suffix(".pdf")
            lines += [f"{captions.get(kind, kind)} ([PDF]({rel(pdf)})):", "", f"![{kind}]({rel(png)})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(out: Path, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
                 baseline: str = DEFAULT_BASELINE, alpha: float = DEFAULT_ALPHA, bootstrap: int = 0,
                 plots: bool = True, reported: list[Path] | None = None, score: str | None = None,
                 selection: str = "fixed", selection_metric: str = "hm_accpc_auroc") -> pd.DataFrame:
    """Rebuild the leaderboard, tables, plots and report page under ``out`` from its records.

    ``metrics``: per-domain tables, ranks and plots (any of :data:`ALL_METRICS`); ``baseline``: the
    method the paired tests compare against; ``bootstrap``: number of resamples of the test samples
    for 95% intervals (0 = off); ``reported``: published-number files (default: every
    ``datasets/*/reported.csv``); ``score``: the OOD score of the score-dependent metrics (default:
    each record's headline score); ``selection``: the rule that picks one hyper-parameter point per
    method (``benchmark.report.selection``) by ``selection_metric``. Returns the leaderboard frame.
    """
    out = Path(out)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(ALL_METRICS)}")
    records = load_records(out)
    if not records:
        raise FileNotFoundError(f"no run records under {out / 'runs'}; run a sweep first")
    if score is not None:
        available = sorted({n for r in records for n in r.get("scores") or []})
        if score not in available:
            raise ValueError(f"no record has the OOD score {score!r}; recorded scores: {', '.join(available) or 'none'}")
    from benchmark.report.selection import select

    records, chosen = select(records, selection, selection_metric, score)
    if not records:
        raise FileNotFoundError(f"no run records of a target domain under {out / 'runs'}")
    df = records_frame(records, score)
    sources = reported_files() if reported is None else list(reported)
    published = load_reported(sources)
    groups = analyse(df, metrics, baseline, alpha, bootstrap, chosen)
    board = leaderboard(df)
    with report_lock(out):
        atomic_write(out / "leaderboard.csv", _csv_text(board))
        atomic_write(out / "leaderboard.md", leaderboard_markdown(groups, df, metrics, baseline, alpha, bootstrap,
                                                                  published))
        tables = write_tables(groups, out, metrics, alpha)
        figures = write_plots(groups, out, metrics) if plots else {}
        # report.md last, stale files after it: an interrupted rebuild never leaves a link to a removed file
        atomic_write(out / "report.md", report_markdown(groups, out, tables, figures, metrics, baseline))
        remove_stale(out / "tables", (".md", ".tex", ".csv"), tables)
        if plots:
            remove_stale(out / "plots", (".png", ".pdf"), figures)
    return board
