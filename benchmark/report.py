"""Run records -> leaderboard tables (``leaderboard.md``, ``leaderboard.csv``).

Tables come only from the records on disk, never from logs, so a sweep split across machines
can be reported later. Each leaderboard cell is the mean and the sample standard deviation
(ddof = 1) over seeds of the per-seed average over domains; failed runs are counted and shown.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchmark.metrics import METRIC_NAMES
from benchmark.records import load_records

TABLE_METRICS = ("acc", "acc_pc", "auroc", "fpr95", "oscr", "h_score")
DOMAIN_METRICS = ("acc_pc", "auroc", "h_score")
GROUP = ["protocol", "dataset", "setting", "method"]


def method_label(method: str, hparams: dict[str, Any]) -> str:
    """The method name plus every hyper-parameter that departs from its registered defaults.

    Departures from a paper's recipe (a data set's budget, a CLI override) stay visible in every
    table row, e.g. ``ueo (epochs=10)``.
    """
    from benchmark.registry import METHODS, import_methods

    import_methods()
    cls = METHODS.module_dict.get(method)
    if cls is None or not hparams:
        return method
    defaults = cls.hparam_defaults()
    diffs = [f"{k}={hparams[k]}" for k in sorted(hparams) if k in defaults and hparams[k] != defaults[k]]
    return f"{method} ({', '.join(diffs)})" if diffs else method


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record: the spec axes, the status and the test/adapt metrics."""
    rows = []
    for rec in records:
        spec = rec.get("spec", {})
        row = {
            "protocol": spec.get("protocol"),
            "dataset": spec.get("dataset"),
            "setting": spec.get("setting"),
            "domain": spec.get("domain"),
            "seed": spec.get("seed"),
            "method": method_label(spec.get("method", "?"), spec.get("hparams", {})),
            "status": rec.get("status", "unknown"),
            "error": rec.get("error"),
        }
        for part, prefix in (("test", ""), ("adapt", "adapt_"), ("adapt_online", "online_")):
            for m in METRIC_NAMES:
                v = rec.get("metrics", {}).get(part, {}).get(m)
                row[prefix + m] = float("nan") if v is None else float(v)
        rows.append(row)
    cols = ["protocol", "dataset", "setting", "domain", "seed", "method", "status", "error"]
    return pd.DataFrame(rows, columns=cols + [p + m for p in ("", "adapt_", "online_") for m in METRIC_NAMES])


def leaderboard(df: pd.DataFrame, metrics: tuple[str, ...] = METRIC_NAMES) -> pd.DataFrame:
    """One row per protocol x data set x setting x method: mean/std over seeds of domain averages.

    A seed contributes only when all of its domains finished (otherwise its average would be over
    a different set of domains); ``n_failed`` counts failed runs of the row.
    """
    out = []
    for key, g in df.groupby(GROUP, sort=True, dropna=False):
        done = g[g.status == "done"]
        n_domains = g.domain.nunique()
        per_seed = done.groupby("seed")
        complete = [s for s, sg in per_seed if sg.domain.nunique() == n_domains]
        seed_avgs = done[done.seed.isin(complete)].groupby("seed")[list(metrics)].mean()
        row = dict(zip(GROUP, key))
        row.update(n_seeds=len(complete), n_domains=n_domains, n_runs=len(g), n_failed=int((g.status != "done").sum()))
        for m in metrics:
            row[f"{m}_mean"] = seed_avgs[m].mean() if len(seed_avgs) else float("nan")
            row[f"{m}_std"] = seed_avgs[m].std(ddof=1) if len(seed_avgs) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def _cell(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def _domain_table(g: pd.DataFrame, metric: str) -> str:
    """Methods x domains table of one metric (mean ± std over seeds) plus the average column."""
    done = g[g.status == "done"]
    domains = sorted(g.domain.unique())
    rows = []
    for method, mg in g.groupby("method", sort=True):
        md = done[done.method == method]
        row = [method]
        for d in domains:
            vals = md[md.domain == d][metric]
            row.append(_cell(vals.mean(), vals.std(ddof=1)) if len(vals) else "failed")
        seeds = [s for s, sg in md.groupby("seed") if sg.domain.nunique() == len(domains)]
        avg = md[md.seed.isin(seeds)].groupby("seed")[metric].mean()
        row.append(_cell(avg.mean(), avg.std(ddof=1)) if len(avg) else "n/a")
        rows.append(row)
    return tabulate(rows, headers=["method", *domains, "avg"], tablefmt="github", disable_numparse=True)


def leaderboard_markdown(df: pd.DataFrame) -> str:
    """The Markdown leaderboard: per protocol x data set x setting, a summary and per-domain tables."""
    board = leaderboard(df)
    lines = ["# Leaderboard", "",
             f"Built from {len(df)} run records ({int((df.status == 'done').sum())} done, "
             f"{int((df.status != 'done').sum())} failed). Metrics in percent on the test set (all classes; "
             "known = the first K). Each cell: mean ± sample std over seeds of the average over domains; "
             "fpr95: lower is better, all others higher.", ""]
    for (protocol, dataset, setting), g in df.groupby(["protocol", "dataset", "setting"], sort=True):
        b = board[(board.protocol == protocol) & (board.dataset == dataset) & (board.setting == setting)]
        n_seeds = sorted(set(b.n_seeds))
        lines += [f"## {dataset} / {setting} (protocol {protocol})", "",
                  f"Mean ± std over n = {', '.join(map(str, n_seeds))} seeds of the average over "
                  f"{int(b.n_domains.max())} domains.", ""]
        rows = [[r.method, *[_cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in TABLE_METRICS], r.n_seeds, r.n_failed]
                for _, r in b.iterrows()]
        lines += [tabulate(rows, headers=["method", *TABLE_METRICS, "seeds", "failed"], tablefmt="github",
                           disable_numparse=True), ""]
        for m in DOMAIN_METRICS:
            lines += [f"Per domain: `{m}`", "", _domain_table(g, m), ""]
        failed = g[g.status != "done"]
        if len(failed):
            lines += ["Failed runs:", ""]
            lines += [f"- {r.method} {r.domain} seed {r.seed}: {r.error}" for r in failed.itertuples()]
            lines.append("")
    return "\n".join(lines)


def write_report(out: Path) -> pd.DataFrame:
    """Rebuild ``leaderboard.md`` and ``leaderboard.csv`` under ``out`` from its records."""
    out = Path(out)
    df = records_frame(load_records(out))
    if df.empty:
        raise FileNotFoundError(f"no run records under {out / 'runs'}; run a sweep first")
    board = leaderboard(df)
    board.to_csv(out / "leaderboard.csv", index=False, float_format="%.4f")
    (out / "leaderboard.md").write_text(leaderboard_markdown(df))
    return board
