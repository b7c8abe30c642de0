"""The report: a golden mini set of run records -> byte-identical tables; plots; published numbers; CLI.

Regenerate the expected files after an intended format change with
``CLIPBENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.report.build import ALL_METRICS, write_report
from benchmark.report.reported import REPORTED_COLUMNS, load_reported, reported_files

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = GOLDEN / "expected"
BOOTSTRAP = 200
UPDATE = os.environ.get("CLIPBENCH_UPDATE_GOLDEN") == "1"
ODA = "synthetic_oda_ueo_clipbench-tiny_embedded_cpu"
OPDA = "synthetic_opda_ueo_clipbench-tiny_embedded_cpu"


def _copy_runs(dst: Path, keep=lambda spec: True) -> Path:
    """Copy the golden records whose spec passes ``keep`` to ``dst/runs``."""
    for run in sorted((GOLDEN / "runs").iterdir()):
        spec = json.loads((run / "result.json").read_text())["spec"]
        if keep(spec):
            shutil.copytree(run, dst / "runs" / run.name)
    return dst


def _outputs(out: Path) -> list[Path]:
    """The text outputs of a report, relative to ``out``."""
    names = [Path("leaderboard.md"), Path("leaderboard.csv"), Path("report.md")]
    return names + sorted(p.relative_to(out) for p in (out / "tables").iterdir())


@pytest.fixture(scope="module")
def golden_out(tmp_path_factory) -> Path:
    out = _copy_runs(tmp_path_factory.mktemp("golden"))
    write_report(out, bootstrap=BOOTSTRAP, reported=[])
    return out


def _compare_with_golden(out: Path, expected_dir: Path) -> None:
    produced = _outputs(out)
    if UPDATE:
        shutil.rmtree(expected_dir, ignore_errors=True)
        for rel in produced:
            (expected_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, expected_dir / rel)
    expected = sorted(p.relative_to(expected_dir) for p in expected_dir.rglob("*") if p.is_file())
    assert sorted(produced) == expected
    for rel in expected:
        assert (out / rel).read_bytes() == (expected_dir / rel).read_bytes(), f"{rel} differs from the golden file"


def test_golden_report_is_byte_identical(golden_out: Path):
    _compare_with_golden(golden_out, EXPECTED)


def test_golden_report_with_validation_domain_selection(tmp_path: Path):
    """The grid's ueo points judged on the validation domain fog: one ueo row, fog in no table."""
    out = _copy_runs(tmp_path)
    write_report(out, reported=[], plots=False, selection="validation_domain")
    _compare_with_golden(out, GOLDEN / "expected_validation_domain")
    md = (out / "leaderboard.md").read_text()
    assert "Hyper-parameter selection `validation_domain`" in md and "| fog" not in md
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board[board.setting == "oda"].method.str.split(" ").str[0].unique()) == [
        "infomax",
        "tent",
        "ueo",
        "zero_shot",
    ]


def test_rebuild_is_deterministic(golden_out: Path, tmp_path: Path):
    again = _copy_runs(tmp_path)
    write_report(again, bootstrap=BOOTSTRAP, reported=[], plots=False)
    for rel in _outputs(again):
        if rel.name != "report.md":  # it links the plots, which this rebuild skipped
            assert (again / rel).read_bytes() == (golden_out / rel).read_bytes(), rel


def test_failed_and_missing_runs_are_shown_not_dropped(golden_out: Path):
    md = (golden_out / "leaderboard.md").read_text()
    assert "- infomax painting seed 3: failed: FloatingPointError: loss is NaN at epoch 2" in md
    assert "- tent sketch seed 3: missing (no record)" in md
    assert "(2/3)" in md and "synthetic / oda" in md and "synthetic / opda" in md
    csv = pd.read_csv(golden_out / "leaderboard.csv")
    assert list(csv.columns[:10]) == [
        "protocol",
        "dataset",
        "setting",
        "model",
        "pretrained",
        "device",
        "method",
        "departures",
        "label",
        "regime",
    ]
    infomax = csv[(csv.method == "infomax") & (csv.setting == "oda")].iloc[0]
    assert (infomax.n_failed, infomax.n_missing, infomax.n_seeds) == (1, 0, 2)
    tent = csv[(csv.method == "tent") & (csv.setting == "oda")].iloc[0]
    assert (tent.n_failed, tent.n_missing, tent.n_seeds) == (0, 1, 2)


def test_average_column_averages_domains_within_each_seed_first(golden_out: Path):
    recs = [json.loads((r / "result.json").read_text()) for r in (GOLDEN / "runs").iterdir()]
    per_seed: dict[int, list[float]] = {}
    for r in recs:
        s = r["spec"]
        if s["method"] == "infomax" and s["setting"] == "oda" and r["status"] == "done":
            per_seed.setdefault(s["seed"], []).append(r["metrics"]["test"]["scores"]["msp_cos"]["hm_accpc_auroc"])
    seed_avgs = [np.mean(v) for v in per_seed.values() if len(v) == 3]  # seed 3 lacks painting
    assert len(seed_avgs) == 2
    csv = pd.read_csv(golden_out / "leaderboard.csv")
    row = csv[(csv.method == "infomax") & (csv.setting == "oda")].iloc[0]
    assert row.hm_accpc_auroc_mean == pytest.approx(np.mean(seed_avgs), abs=1e-4)
    assert row.hm_accpc_auroc_std == pytest.approx(np.std(seed_avgs, ddof=1), abs=1e-4)
    cells = pd.read_csv(golden_out / "tables" / f"{ODA}.csv")
    cell = cells[(cells.method == "infomax") & (cells.metric == "hm_accpc_auroc") & (cells.column == "avg")].iloc[0]
    assert cell["mean"] == pytest.approx(np.mean(seed_avgs), abs=1e-4) and (cell.n_done, cell.n_expected) == (2, 3)
    assert cells.groupby(["metric", "column"]).best.sum().min() >= 1  # every column has a bold best


def test_plots_are_valid_images(golden_out: Path):
    plots = golden_out / "plots"
    for slug in (ODA, OPDA):
        stems = [f"diff_{slug}_{m}" for m in ("acc_pc", "auroc", "hm_accpc_auroc")]
        for stem in (
            *stems,
            f"heatmap_{slug}",
            f"bars_{slug}",
            f"cd_{slug}_hm_accpc_auroc",
            f"tradeoff_{slug}",
            f"curves_{slug}",
        ):
            with Image.open(plots / f"{stem}.png") as im:
                im.verify()
                assert im.format == "PNG" and im.size[0] > 100
            pdf = (plots / f"{stem}.pdf").read_bytes()
            assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
    report = (golden_out / "report.md").read_text()
    assert f"![cd](plots/cd_{ODA}_hm_accpc_auroc.png)" in report and f"tables/{ODA}.tex" in report
    assert report.index(f"plots/diff_{ODA}_acc_pc.png") < report.index(f"plots/bars_{ODA}.png")  # the headline first
    assert report.count("How to read:") == len(list(plots.glob("*.png")))  # one sentence per figure


def test_published_numbers_shown_next_to_measured_with_gap(tmp_path: Path):
    out = _copy_runs(tmp_path / "out", lambda s: s["setting"] == "opda")
    pub = tmp_path / "reported.csv"
    rows = [
        ["ueo", "synthetic", "ueo", "opda", "avg", "clipbench-tiny", "embedded", "hm_accpc_auroc", "80.0", "fixture A"],
        ["ueo", "synthetic", "ueo", "opda", "photo", "clipbench-tiny", "", "auroc", "90.0", "fixture B"],
        ["ueo", "synthetic", "ueo", "opda", "avg", "ViT-B-16", "openai", "hm_accpc_auroc", "70.0", "fixture C"],
        ["ueo", "synthetic", "ueo", "oda", "avg", "clipbench-tiny", "embedded", "hm_accpc_auroc", "70.0", "fixture D"],
    ]
    pd.DataFrame(rows, columns=REPORTED_COLUMNS).to_csv(pub, index=False)
    write_report(out, reported=[pub], plots=False)
    md = (out / "leaderboard.md").read_text()
    section = md[md.index("### Published numbers") :]
    assert "fixture A" in section and "fixture B" in section
    assert "fixture C" not in md and "fixture D" not in md  # other backbone, other setting
    cells = pd.read_csv(out / "tables" / f"{OPDA}.csv")
    measured = cells[(cells.method == "ueo") & (cells.metric == "hm_accpc_auroc") & (cells.column == "avg")].iloc[0][
        "mean"
    ]
    assert f"{measured - 80.0:+.1f}" in section


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.drop(columns="source"), "missing columns source"),
        (lambda df: df.assign(value="eighty"), "non-numeric"),
        (lambda df: df.assign(metric="accuracy"), "unknown metric"),
        (lambda df: df.assign(source=""), "source"),
    ],
)
def test_bad_published_numbers_file_names_file_and_problem(tmp_path: Path, edit, message):
    row = ["ueo", "office_home", "ueo", "oda", "avg", "ViT-B-16", "openai", "hm_accpc_auroc", "80.0", "x"]
    path = tmp_path / "reported.csv"
    edit(pd.DataFrame([row], columns=REPORTED_COLUMNS)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message) as err:
        load_reported([path])
    assert str(path) in str(err.value)


def test_shipped_published_numbers_are_valid_and_sourced():
    df = load_reported(reported_files())
    assert list(df.columns) == list(REPORTED_COLUMNS)
    assert all(src.startswith("http") for src in df.source)


def test_degenerate_groups_report_na_without_crashing(tmp_path: Path):
    only_base = _copy_runs(tmp_path / "a", lambda s: s["method"] == "zero_shot" and s["setting"] == "oda")
    write_report(only_base)
    md = (only_base / "leaderboard.md").read_text()
    assert "Only the baseline `zero_shot` ran" in md and "no ranks" in md
    plots = only_base / "plots"
    assert (plots / f"bars_{ODA}.png").is_file() and not (plots / f"cd_{ODA}_hm_accpc_auroc.png").exists()
    no_base = _copy_runs(
        tmp_path / "b", lambda s: s["method"] in ("ueo", "tent") and s["setting"] == "oda" and not s["hparams"]
    )
    write_report(no_base, plots=False)
    md = (no_base / "leaderboard.md").read_text()
    assert "No baseline run in this group" in md and "Friedman n/a (needs 3 or more methods)" in md


def test_any_recorded_metric_on_request(tmp_path: Path):
    out = _copy_runs(tmp_path, lambda s: s["setting"] == "opda")
    write_report(out, metrics=("adapt_acc_pc", "fpr95"), bootstrap=20, plots=False)
    md = (out / "leaderboard.md").read_text()
    assert "### adapt_acc_pc per domain" in md and "### fpr95 per domain" in md
    assert "n/a: the bootstrap covers" in md  # fpr95 is not resampled
    with pytest.raises(ValueError, match="nope"):
        write_report(out, metrics=("nope",))
    assert "nope" not in ALL_METRICS


def test_cli_report_options(tmp_path: Path, capsys):
    out = _copy_runs(tmp_path, lambda s: s["setting"] == "opda")
    assert (
        main(
            [
                "--report-only",
                "--out",
                str(out),
                "--metrics",
                "acc",
                "hm_accpc_auroc",
                "--baseline",
                "ueo",
                "--bootstrap",
                "20",
                "--alpha",
                "0.1",
            ]
        )
        == 0
    )
    md = (out / "leaderboard.md").read_text()
    assert "### acc per domain" in md and "Significance against ueo" in md and "p < 0.1" in md
    assert "Bootstrap 95% percentile intervals of `acc` (20 resamples" in md
    assert math.isfinite(pd.read_csv(out / "tables" / f"{OPDA}.csv").ci_lo.iloc[0])
    capsys.readouterr()
    assert main(["--report-only", "--out", str(out), "--bootstrap", "-1"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
    assert main(["--report-only", "--out", str(out), "--metrics", "nope"]) == 2
    assert main(["--report-only", "--out", str(tmp_path / "empty")]) == 2


def test_headline_score_is_named_and_another_is_shown_on_request(golden_out: Path, tmp_path: Path, capsys):
    md = (golden_out / "leaderboard.md").read_text()
    assert "OOD score: `msp_cos` (max softmax of the raw cosines, temperature 1)" in md
    assert "Regimes: none: zero_shot; transductive: " in md
    headline = pd.read_csv(golden_out / "leaderboard.csv")
    out = _copy_runs(tmp_path)
    assert main(["--report-only", "--out", str(out), "--score", "msp"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "OOD score: `msp` (max softmax of 100 x cosine)" in md and "`msp_cos`" not in md
    other = pd.read_csv(out / "leaderboard.csv")
    assert other.acc_pc_mean.tolist() == pytest.approx(headline.acc_pc_mean.tolist(), nan_ok=True)
    assert other.auroc_mean.tolist() != pytest.approx(headline.auroc_mean.tolist(), nan_ok=True)
    capsys.readouterr()
    assert main(["--report-only", "--out", str(out), "--score", "nope"]) == 2
    assert "recorded scores: msp, msp_cos" in capsys.readouterr().err


def _rebuild(out: str) -> None:
    write_report(Path(out), plots=True)


def test_concurrent_rebuilds_leave_complete_parseable_files(tmp_path: Path):
    """Two processes rebuild the report of one --out at once, twice over: every file parses whole."""
    import multiprocessing

    out = _copy_runs(tmp_path)
    ctx = multiprocessing.get_context("fork")
    for _ in range(2):
        procs = [ctx.Process(target=_rebuild, args=(str(out),)) for _ in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
    reference = _copy_runs(tmp_path / "ref")
    write_report(reference, plots=True)
    for rel in _outputs(reference):
        assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert len(pd.read_csv(out / "leaderboard.csv")) == len(pd.read_csv(reference / "leaderboard.csv"))
    for png in (out / "plots").glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    assert not list(out.rglob("*.tmp"))
