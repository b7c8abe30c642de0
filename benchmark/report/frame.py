"""Run records -> one DataFrame row per record: the vocabulary of result parts and metrics.

Reads records only (``benchmark.core.records.scan_records``): a record states its own label,
departures, regime, device and scores, so nothing here consults the code of today's methods or
data sets, and the report is a function of the records alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.metrics import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, METRIC_NAMES
from benchmark.core.schema import PARTS

DEFAULT_METRICS = ("acc_pc", "auroc", "hm_accpc_auroc")
SUMMARY_METRICS = ("acc", "acc_pc", "auroc", "fpr95", "oscr", "hm_accpc_auroc", "hos")
PREFIX = {"test": "", "adapt": "adapt_", "online": "online_"}
"""Column prefix of each result part's metrics (``adapt_auroc``, ``online_acc``)."""
ALL_METRICS = tuple(PREFIX[p] + m for p in PARTS for m in METRIC_NAMES)
"""Every metric a record holds: test-set names, ``adapt_*`` (transductive) and ``online_*``."""
TABLE_KEY = ["protocol", "dataset", "setting", "model", "pretrained", "device"]
"""What a table never mixes: protocol x data set x setting x backbone (model, weights) x device kind."""
COLUMNS = [
    "protocol",
    "dataset",
    "setting",
    "domain",
    "seed",
    "method",
    "name",
    "departures",
    "model",
    "pretrained",
    "device",
    "precision",
    "status",
    "error",
    "dir",
    "num_known",
    "history",
    "regime",
    "score",
    "score_description",
]


def split_metric(metric: str) -> tuple[str, str]:
    """``(result part, base metric)``: ``adapt_auroc`` -> ``("adapt", "auroc")``, ``auroc`` -> ``("test", "auroc")``."""
    for part, prefix in PREFIX.items():
        if prefix and metric.startswith(prefix):
            return part, metric[len(prefix) :]
    return "test", metric


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, ``adapt_`` / ``online_`` prefixes included (only ``fpr95`` is lower-is-better)."""
    return HIGHER_IS_BETTER[split_metric(metric)[1]]


def record_metrics(rec: dict[str, Any], part: str, score: str | None = None) -> dict[str, float]:
    """The flat metrics of one part of a record under one OOD score (default: the record's headline).

    Classification metrics are the same under every score; score metrics of a score the record
    lacks (e.g. another method's own score) are absent.
    """
    block = (rec.get("metrics") or {}).get(part) or {}
    out = {m: block.get(m) for m in CLASSIFICATION_METRICS}
    name = score or rec.get("headline_score")
    out.update(((block.get("scores") or {}).get(name) or {}) if name else {})
    return out


def records_frame(
    records: list[tuple[Path, dict[str, Any]]], score: str | None = None, labels: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per record: the spec axes, row label and method name, status, data facts, regime,
    score and every metric. ``score`` None takes each record's headline score; ``labels`` replaces
    the label of the records in those folders (a selection whose picks differ between domains)."""
    rows = []
    for run_dir, rec in records:
        spec = rec["spec"]
        name = score or rec.get("headline_score")
        row = {
            "protocol": spec["protocol"],
            "dataset": spec["dataset"],
            "setting": spec["setting"],
            "domain": spec["domain"],
            "seed": spec["seed"],
            "method": (labels or {}).get(str(run_dir)) or rec.get("label") or spec["method"],
            "name": spec["method"],
            "departures": rec.get("departures") or {},
            "model": spec["model"],
            "pretrained": spec["pretrained"],
            "device": spec["device"],
            "precision": rec.get("precision") or spec["hparams"].get("precision"),
            "status": rec["status"],
            "error": rec.get("error"),
            "dir": str(run_dir),
            "num_known": (rec.get("data") or {}).get("num_known"),
            "history": rec.get("history") or [],
            "regime": rec.get("regime") or spec["hparams"].get("regime"),
            "score": name,
            "score_description": (rec.get("scores") or {}).get(name),
        }
        for part, prefix in PREFIX.items():
            values = record_metrics(rec, part, score)
            for m in METRIC_NAMES:
                v = values.get(m)
                row[prefix + m] = math.nan if v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS + list(ALL_METRICS))


def _axes(g: pd.DataFrame) -> tuple[list[str], list[Any]]:
    """The domains and seeds of a group, sorted."""
    return sorted(g.domain.dropna().unique()), sorted(g.seed.dropna().unique())


def _seed_domain_table(mg: pd.DataFrame, metric: str, domains: list[str]) -> pd.DataFrame:
    """Seeds x domains of one method's finished, finite values (mean over duplicate records)."""
    done = mg[(mg.status == "done") & np.isfinite(mg[metric])]
    return done.groupby(["seed", "domain"])[metric].mean().unstack("domain").reindex(columns=domains)
