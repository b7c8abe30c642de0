"""Hyper-parameter selection: a post-hoc step over run records, never a rerun.

A sweep may list a grid for any hyper-parameter (``--cfg-options ueo.lr=[1e-4,1e-3]``); every
point is an ordinary run record. The report then keeps, per method and group (protocol x data
set x setting x backbone), the point a named rule picks, and every caption names the rule:

- ``fixed``: no selection: every point is its own row (the recipe as given, or as overridden);
- ``validation_domain``: the point with the best mean selection metric over the seeds of the
  data set's labelled validation domains (``validation_domains`` in its spec; the embedded
  benchmark's ``fog``), which are never targets. A data set without one is selected per target
  domain by leave-one-domain-out: the best mean over its other target domains;
- ``unsupervised``: per target domain, the point with the largest label-free InfoMax criterion
  ``H(mean_i p_i) - mean_i H(p_i)`` of the method's own predictions on the data it adapted on
  (the adapt set; for online and episodic runs the test stream), computed at run time without
  labels (the IM validator of Musgrave, Belongie & Lim, "Three new validators and a large-scale
  benchmark ranking for unsupervised domain adaptation", 2022);
- ``oracle``: per target domain, the point with the best mean selection metric on the target's
  own test labels: an upper bound, never a result, and flagged as such in every caption.

Points whose runs failed are skipped and reported; ties go to the first point in a stable
order (sorted by their hyper-parameters). Validation domains never appear in the tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.hparams import format_departures
from benchmark.core.metrics import LABEL_FREE
from benchmark.report.frame import higher_is_better, record_metrics
from benchmark.report.stats import TIE_DECIMALS

RULES = ("fixed", "validation_domain", "unsupervised", "oracle")
DEFAULT_RULE = "fixed"
DEFAULT_METRIC = "hm_accpc_auroc"

DESCRIPTIONS = {
    "fixed": "no selection: every hyper-parameter point is its own row",
    "validation_domain": "best mean {metric} on the labelled validation domain(s), never a target",
    "validation_domain_lodo": "best mean {metric} on the other target domains (leave-one-domain-out: "
    "the data set has no validation domain)",
    "unsupervised": "per target domain, largest label-free InfoMax criterion H(mean p) - mean H(p) on the "
    "method's own predictions for the data it adapted on",
    "oracle": "ORACLE, an upper bound and not a result: per target domain, best mean {metric} on the "
    "target's own test labels",
}


class SelectionError(ValueError):
    """A rule that cannot be applied to the records (unknown, or missing the runs it needs)."""


@dataclass
class Pick:
    """The point a rule kept for one method of one group (``domain`` ``*``: for every target domain)."""

    group: tuple
    method: str
    domain: str
    hparams: dict[str, Any]
    value: float
    candidates: int
    basis: str
    departures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    """What a rule did: its picks, the failed points it skipped, the validation records it hid, and
    the row label of the kept records of a method whose picks differ between domains (by folder)."""

    rule: str
    metric: str
    picks: list[Pick] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    hidden_validation: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    lodo: set[str] = field(default_factory=set)
    """Data sets without a validation domain, selected by leave-one-domain-out."""

    def caption(self, dataset: str | None = None) -> str:
        """One sentence for table captions."""
        key = "validation_domain_lodo" if self.rule == "validation_domain" and dataset in self.lodo else self.rule
        text = DESCRIPTIONS[key].format(metric=self.metric)
        return f"Hyper-parameter selection `{self.rule}`: {text}."


Stored = tuple[Path, dict]
"""A record and its folder."""


def _group(rec: dict) -> tuple:
    """(protocol, data set, setting, model, weights, device kind, method): where a rule picks one point."""
    s = rec["spec"]
    return (s["protocol"], s["dataset"], s["setting"], s["model"], s["pretrained"], s["device"], s["method"])


def _point(rec: dict) -> str:
    return json.dumps(rec["spec"]["hparams"], sort_keys=True)


def _value(rec: dict, metric: str, score: str | None) -> float:
    """The selection value of one done record: the label-free criterion, or a test metric."""
    if metric == LABEL_FREE:
        v = (rec.get("label_free") or {}).get(LABEL_FREE)
    else:
        v = record_metrics(rec, "test", score).get(metric)
    return float(v) if v is not None else float("nan")


def _best(
    candidates: dict[str, list[dict]],
    metric: str,
    score: str | None,
    higher: bool,
    skipped: list[str] | None = None,
    where: str = "",
) -> tuple[str, float] | None:
    """The point with the best mean value over its finished records (None when none has a finite value).

    A point with a failed run among its records is skipped (and named in ``skipped``) while
    another point has none.
    """
    failed = {p for p, rs in candidates.items() if any(r["status"] != "done" for r in rs)}
    if failed and len(failed) < len(candidates):
        for p in sorted(failed):
            if skipped is not None:
                rec = candidates[p][0]
                skipped.append(
                    f"{rec['spec']['method']} ({format_departures(rec.get('departures') or {}) or 'recipe'}) "
                    f"{where}: a run failed, so the point is skipped"
                )
        candidates = {p: rs for p, rs in candidates.items() if p not in failed}
    best = None
    for point in sorted(candidates):
        values = [_value(r, metric, score) for r in candidates[point] if r["status"] == "done"]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            continue
        mean = float(np.mean(values))
        # means equal to TIE_DECIMALS decimals tie (last-bit noise must not decide), and ties go to the first point
        if best is None or (
            round(mean, TIE_DECIMALS) > round(best[1], TIE_DECIMALS)
            if higher
            else round(mean, TIE_DECIMALS) < round(best[1], TIE_DECIMALS)
        ):
            best = (point, mean)
    return best


def select(
    records: list[Stored], rule: str = DEFAULT_RULE, metric: str = DEFAULT_METRIC, score: str | None = None
) -> tuple[list[Stored], Selection]:
    """The records a rule keeps (validation domains dropped) and what it picked.

    Kept records of a method whose picks differ between domains are labelled
    ``<method> [<rule>]`` (``Selection.labels``); otherwise they keep their own label. The
    records themselves are never modified.
    """
    if rule not in RULES:
        raise SelectionError(f"unknown selection rule {rule!r}; rules: {', '.join(RULES)}")
    sel = Selection(rule, metric)
    targets: list[Stored] = []
    by_group: dict[tuple, dict[str, list[Stored]]] = {}
    validation: dict[str, tuple[str, ...]] = {}
    for stored in records:
        rec = stored[1]
        dataset = rec["spec"]["dataset"]
        validation[dataset] = tuple(rec.get("validation_domains") or ())
        part = "val" if rec["spec"]["domain"] in validation[dataset] else "target"
        if part == "val":
            sel.hidden_validation += 1
        else:
            targets.append(stored)
        by_group.setdefault(_group(rec), {"val": [], "target": []})[part].append(stored)
    sel.lodo = {d for d, v in validation.items() if not v}
    if rule == "fixed":
        return targets, sel
    higher = True if rule == "unsupervised" else higher_is_better(metric)
    crit = LABEL_FREE if rule == "unsupervised" else metric
    kept: list[Stored] = []
    for group, parts in sorted(by_group.items(), key=lambda kv: json.dumps(kv[0], default=str)):
        method, dataset = group[-1], group[1]
        target_recs = [r for _, r in parts["target"]]
        eligible = sorted({_point(r) for r in target_recs})
        example = {_point(r): r.get("departures") or {} for r in target_recs}
        done = lambda rs, eligible=eligible: [r for r in rs if _point(r) in eligible]  # noqa: E731
        where = f"in {dataset}/{group[2]}"
        domains = sorted({r["spec"]["domain"] for r in target_recs})
        picks: dict[str, str] = {}
        vdoms = validation.get(dataset, ())
        if len(eligible) == 1:
            picks = {d: eligible[0] for d in domains}
            sel.picks.append(
                Pick(group, method, "*", json.loads(eligible[0]), float("nan"), 1, "single point", example[eligible[0]])
            )
        elif rule == "validation_domain" and vdoms:
            val_recs = [r for _, r in parts["val"]]
            cands = {p: [r for r in done(val_recs) if _point(r) == p] for p in eligible}
            if not any(cands.values()):
                hint = (
                    "it has no run on a target domain to select for: run the target domains too (--domains)"
                    if not domains
                    else "rerun the sweep with --selection validation_domain (it adds them)"
                )
                raise SelectionError(
                    f"selection validation_domain needs runs of {method} on the validation domain(s) "
                    f"{', '.join(vdoms)} of {dataset} besides its targets: {hint}"
                )
            best = _require(_best(cands, crit, score, higher, sel.skipped, where), group, crit, "its validation runs")
            picks = {d: best[0] for d in domains}
            sel.picks.append(
                Pick(
                    group,
                    method,
                    "*",
                    json.loads(best[0]),
                    best[1],
                    len(eligible),
                    f"validation domain(s) {', '.join(vdoms)}",
                    example[best[0]],
                )
            )
        else:
            for d in domains:
                if rule == "validation_domain":  # leave-one-domain-out
                    pool = [r for r in done(target_recs) if r["spec"]["domain"] != d]
                    basis = f"target domains other than {d}"
                else:
                    pool = [r for r in done(target_recs) if r["spec"]["domain"] == d]
                    basis = f"{d} ({'label-free' if rule == 'unsupervised' else 'test labels'})"
                pool_by_point = {p: [r for r in pool if _point(r) == p] for p in eligible}
                best = _require(
                    _best(pool_by_point, crit, score, higher, sel.skipped, f"{where} (judged on {basis})"),
                    group,
                    crit,
                    basis,
                )
                picks[d] = best[0]
                sel.picks.append(
                    Pick(group, method, d, json.loads(best[0]), best[1], len(eligible), basis, example[best[0]])
                )
        chosen = [(d, r) for d, r in parts["target"] if picks.get(r["spec"]["domain"]) == _point(r)]
        if len(set(picks.values())) > 1:
            sel.labels.update({str(d): f"{method} [{rule}]" for d, _ in chosen})
        kept += chosen
    return kept, sel


def _require(best: tuple[str, float] | None, group: tuple, crit: str, basis: str) -> tuple[str, float]:
    """``best``, or a ``SelectionError`` saying that no point had a value to judge it by."""
    if best is None:
        raise SelectionError(
            f"cannot select a point of {group[-1]} in {group[1]}/{group[2]}: no finished run has "
            f"a finite {crit} on {basis}"
        )
    return best


def describe_pick(pick: Pick) -> str:
    """A pick's point as its departures from the recipe (``recipe`` when none)."""
    return format_departures(pick.departures) or "recipe"
