"""End to end through ``run_bench.py``'s ``main`` on the embedded benchmark (offline, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.metrics import METRIC_NAMES, open_set_metrics
from benchmark.core.records import load_records, scan_records

FAST = ["--datasets", "synthetic", "--domains", "photo", "sketch", "--seeds", "1"]


def _run(tmp_path: Path, *extra: str) -> int:
    return main([*FAST, "--out", str(tmp_path), *extra])


@pytest.fixture(scope="module")
def zero_shot_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zs")
    assert main([*FAST, "--methods", "zero_shot", "--out", str(out)]) == 0
    return out


def test_writes_records_and_leaderboard(zero_shot_out: Path):
    records = load_records(zero_shot_out)
    assert len(records) == 2 and all(r["status"] == "done" for r in records)
    rec = records[0]
    for key in (
        "dataset",
        "domain",
        "setting",
        "protocol",
        "num_known",
        "adapt_classes",
        "test_classes",
        "n_adapt",
        "n_test",
    ):
        assert key in rec["data"], key
    assert rec["data"]["protocol"] == "ueo" and rec["data"]["setting"] == "oda"
    assert set(rec["metrics"]) == {"test", "adapt"}
    assert {"acc", "acc_pc"} <= set(rec["metrics"]["test"])
    assert set(METRIC_NAMES) - {"acc", "acc_pc"} <= set(rec["metrics"]["test"]["scores"]["msp_cos"])
    assert rec["headline_score"] == "msp_cos" and rec["regime"] == "none"
    assert rec["spec"]["hparams"]["precision"] == "fp32" and rec["precision"] == "fp32"  # official, on a CPU
    assert rec["spec"]["device"] == "cpu" and rec["device"] == "cpu"
    assert rec["spec"]["model"] == "clipbench-tiny" and rec["spec"]["pretrained"] == "embedded"
    assert "torch" in rec["environment"]["versions"] and rec["timings"]["total"] > 0
    assert rec["label"] == "zero_shot" and rec["departures"] == {}
    run_dir, _ = scan_records(zero_shot_out)[0][0]
    assert run_dir.name == rec["hash"] and (run_dir / "preds.npz").is_file() and (run_dir / "run.log").is_file()
    md = (zero_shot_out / "leaderboard.md").read_text()
    assert "zero_shot" in md and "synthetic / oda" in md
    csv = (zero_shot_out / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("protocol,dataset,setting,model,pretrained,device,method,departures,label,regime")
    assert len(csv) == 2


def test_metrics_recompute_from_preds(zero_shot_out: Path):
    """Every score's metrics from preds.npz alone; the H-score's threshold is Otsu's on the adapt scores."""
    from benchmark.core.metrics import otsu_threshold

    for run_dir, rec in scan_records(zero_shot_out)[0]:
        with np.load(run_dir / "preds.npz") as z:
            for score in rec["scores"]:
                threshold = otsu_threshold(z[f"adapt_score_{score}"])
                assert rec["rejection"]["thresholds"][score] == pytest.approx(threshold)
                for part in ("test", "adapt"):
                    m = open_set_metrics(
                        z[f"{part}_pred"],
                        z[f"{part}_label"],
                        z[f"{part}_score_{score}"],
                        rec["data"]["num_known"],
                        threshold,
                    )
                    stored = {**rec["metrics"][part], **rec["metrics"][part]["scores"][score]}
                    for k in METRIC_NAMES:
                        assert m[k] == pytest.approx(stored[k], nan_ok=True), (part, score, k)


def test_second_invocation_recomputes_nothing(zero_shot_out: Path, capsys):
    stamps = {d: (d / "result.json").stat().st_mtime_ns for d, _ in scan_records(zero_shot_out)[0]}
    assert main([*FAST, "--methods", "zero_shot", "--out", str(zero_shot_out)]) == 0
    assert "0 ran, 2 reused" in capsys.readouterr().out
    assert stamps == {d: (d / "result.json").stat().st_mtime_ns for d, _ in scan_records(zero_shot_out)[0]}


def test_same_seed_same_metrics(tmp_path: Path):
    metrics = []
    for sub in ("a", "b"):
        assert _run(tmp_path / sub, "--methods", "ueo", "--domains", "sketch", "--cfg-options", "ueo.epochs=1") == 0
        (rec,) = load_records(tmp_path / sub)
        metrics.append(json.dumps(rec["metrics"], sort_keys=True))
    assert metrics[0] == metrics[1]


def test_report_only_rebuilds_tables(zero_shot_out: Path, capsys):
    (zero_shot_out / "leaderboard.md").unlink()
    assert main(["--report-only", "--out", str(zero_shot_out)]) == 0
    assert (zero_shot_out / "leaderboard.md").is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--methods", "nope"], "zero_shot"),
        (["--datasets", "nope"], "office_home"),
        (["--cfg-options", "nope.lr=1"], "nope.lr"),
        (["--cfg-options", "ueo.nope=1"], "ueo.nope"),
        (["--cfg-options", "ueo.epochs=abc"], "ueo.epochs"),
        (["--domains", "Art"], "Art"),
        (["--settings", "oda", "--protocol", "classic", "--datasets", "domainnet", "--data-root", "/tmp"], "classic"),
        (["--pretrained", "/no/such/weights.pt"], "/no/such/weights.pt"),
    ],
)
def test_bad_arguments_exit_2_with_a_named_reason(tmp_path: Path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_data_root_names_path_and_layout(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("CLIPBENCH_DATA", raising=False)
    missing = tmp_path / "no_data"
    assert main(["--datasets", "office_home", "--data-root", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Art" in err and "Expected layout" in err


def test_list_shows_registries(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "zero_shot" in out and "office_home" in out and "inline" in out
