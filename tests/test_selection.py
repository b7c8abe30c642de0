"""Hyper-parameter selection on hand-made records: every rule picks the expected point."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from benchmark.core.metrics import infomax_criterion
from benchmark.report.selection import SelectionError, select

LR = {"a": 1e-4, "b": 1e-3}
# hm_accpc_auroc of the msp_cos score per (point, domain), the same for both seeds
HM = {
    ("a", "photo"): 60.0,
    ("b", "photo"): 70.0,
    ("a", "sketch"): 55.0,
    ("b", "sketch"): 50.0,
    ("a", "fog"): 65.0,
    ("b", "fog"): 62.0,
}
LABEL_FREE = {("a", "photo"): 0.2, ("b", "photo"): 0.1, ("a", "sketch"): 0.1, ("b", "sketch"): 0.3}


def record(point: str, domain: str, seed: int, status: str = "done", dataset: str = "synthetic") -> dict:
    spec = {
        "method": "ueo",
        "dataset": dataset,
        "domain": domain,
        "setting": "oda",
        "protocol": "ueo",
        "seed": seed,
        "model": "clipbench-tiny",
        "pretrained": "embedded",
        "device": "cpu",
        "hparams": {"lr": LR[point], "epochs": 5},
    }
    departures = {"epochs": 5, **({"lr": LR[point]} if point == "b" else {})}
    rec = {
        "spec": spec,
        "status": status,
        "headline_score": "msp_cos",
        "regime": "transductive",
        "departures": departures,
        "validation_domains": ["fog"] if dataset == "synthetic" else [],
    }
    if status == "done":
        rec["metrics"] = {
            "test": {
                "acc": 50.0,
                "acc_pc": 50.0,
                "scores": {"msp_cos": {"hm_accpc_auroc": HM[(point, domain)], "auroc": 70.0}},
            }
        }
        rec["label_free"] = {"infomax": LABEL_FREE.get((point, domain), 0.0)}
    return rec


def stored(recs: list[dict]) -> list[tuple[Path, dict]]:
    """Records as the report reads them: with a folder each."""
    return [(Path(f"runs/{i:03d}"), r) for i, r in enumerate(recs)]


def records(**kw) -> list[tuple[Path, dict]]:
    return stored([record(p, d, s, **kw) for p in LR for d in ("photo", "sketch", "fog") for s in (1, 2)])


def picked(kept: list[tuple[Path, dict]]) -> dict[str, float]:
    return {r["spec"]["domain"]: r["spec"]["hparams"]["lr"] for _, r in kept}


def test_fixed_keeps_every_point_and_hides_the_validation_domain():
    kept, sel = select(records(), "fixed")
    assert len(kept) == 8 and {r["spec"]["domain"] for _, r in kept} == {"photo", "sketch"}
    assert sel.hidden_validation == 4 and not sel.picks


def test_validation_domain_picks_the_best_point_on_fog_for_every_target():
    kept, sel = select(records(), "validation_domain")
    assert picked(kept) == {"photo": 1e-4, "sketch": 1e-4} and len(kept) == 4
    (pick,) = sel.picks
    assert pick.domain == "*" and pick.value == 65.0 and pick.candidates == 2 and "fog" in pick.basis
    assert sel.labels == {}  # one point for all domains: its departures name it
    assert "validation domain" in sel.caption("synthetic")


def test_oracle_picks_per_domain_on_test_labels_and_says_it_is_an_upper_bound():
    kept, sel = select(records(), "oracle")
    assert picked(kept) == {"photo": 1e-3, "sketch": 1e-4}
    assert set(sel.labels.values()) == {"ueo [oracle]"} and set(sel.labels) == {str(d) for d, _ in kept}
    assert "ORACLE, an upper bound" in sel.caption("synthetic")


def test_unsupervised_picks_by_the_label_free_criterion_and_never_reads_labels():
    kept, _ = select(records(), "unsupervised")
    assert picked(kept) == {"photo": 1e-4, "sketch": 1e-3}
    blind = records()
    for _, r in blind:  # remove every labelled quantity: the pick must not change
        del r["metrics"]
    kept_blind, _ = select(blind, "unsupervised")
    assert picked(kept_blind) == picked(kept)
    with pytest.raises(SelectionError, match="no finished run has a finite hm_accpc_auroc"):
        select(copy.deepcopy(blind), "validation_domain")  # a labelled rule finds no values


def test_a_failed_point_is_skipped_and_reported():
    recs = records()
    recs[0] = (recs[0][0], record("a", "photo", 1, status="failed"))
    kept, sel = select(recs, "oracle")
    assert picked(kept) == {"photo": 1e-3, "sketch": 1e-4}  # only photo's judgement lost point a
    assert len(sel.skipped) == 1 and sel.skipped[0].startswith("ueo (epochs=5) in synthetic/oda (judged on photo")
    assert "lr=" not in sel.skipped[0] and "skipped" in sel.skipped[0]


def test_validation_domain_needs_its_runs_and_lodo_without_a_validation_domain():
    targets_only = [(d, r) for d, r in records() if r["spec"]["domain"] != "fog"]
    with pytest.raises(SelectionError, match="--selection validation_domain"):
        select(targets_only, "validation_domain")
    fog_only = [(d, r) for d, r in records() if r["spec"]["domain"] == "fog"]
    with pytest.raises(SelectionError, match="no run on a target domain"):
        select(fog_only, "validation_domain")
    other = stored([record(p, d, s, dataset="office_home") for p in LR for d in ("photo", "sketch") for s in (1, 2)])
    kept, sel = select(other, "validation_domain")
    # leave-one-domain-out: photo is judged on sketch (a: 55 > b: 50), sketch on photo (b: 70 > a: 60)
    assert picked(kept) == {"photo": 1e-4, "sketch": 1e-3}
    assert "leave-one-domain-out" in sel.caption("office_home")


def test_unknown_rule():
    with pytest.raises(SelectionError, match="rules: fixed, validation_domain, unsupervised, oracle"):
        select(records(), "best")


def test_infomax_criterion_by_hand():
    p = [[1.0, 0.0], [0.0, 1.0]]  # confident and diverse: H(mean) = ln 2, mean H = 0
    assert infomax_criterion(p) == pytest.approx(math.log(2))
    assert infomax_criterion([[0.5, 0.5], [0.5, 0.5]]) == pytest.approx(0.0)
    assert json.dumps(infomax_criterion([[0.9, 0.1]]))  # a finite number


def test_cli_grids_add_the_validation_domain_and_rules_are_checked(tmp_path, capsys):
    from benchmark.cli import main

    assert (
        main(
            [
                "--methods",
                "ueo",
                "--grids",
                "--selection",
                "validation_domain",
                "--seeds",
                "1",
                "--dry-run",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dry run: 20 runs" in out and "synthetic/fog" in out  # 4 grid points x (4 targets + fog)
    assert (
        main(
            [
                "--methods",
                "ueo",
                "--cfg-options",
                "ueo.lr=[1e-3,1e-2]",
                "ueo.epochs=1",
                "--seeds",
                "1",
                "--domains",
                "sketch",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["--report-only", "--selection", "oracle", "--out", str(tmp_path / "run")]) == 0
    md = (tmp_path / "run" / "leaderboard.md").read_text()
    rows = (tmp_path / "run" / "leaderboard.csv").read_text().splitlines()[1:]
    assert "ORACLE, an upper bound" in md and len(rows) == 1 and '"ueo (epochs=1, lr=' in rows[0]
    assert main(["--report-only", "--selection", "best", "--out", str(tmp_path / "run")]) == 2
    assert "rules: fixed, validation_domain, unsupervised, oracle" in capsys.readouterr().err
