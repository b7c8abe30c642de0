"""Sweeps that survive: failure isolation, resume after SIGKILL, run locks, launchers, profile,
the paper's config (offline, CPU, the embedded benchmark)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.core.records import RESULT, is_complete, load_records
from benchmark.core.spec import RunSpec
from benchmark.run.runner import LOCK, execute, run_lock

REPO = Path(__file__).resolve().parent.parent
ONE = ["--datasets", "synthetic", "--domains", "sketch", "--methods", "zero_shot", "--seeds", "1", "2"]
SUMMARY = re.compile(r"(\d+) runs: (\d+) ran, (\d+) reused complete records, (\d+) failed")

NAN_PLUGIN = '''
import torch
from benchmark.registry import register_method
from methods.ueo import UEO


@register_method
class NanLoss(UEO):
    """Always meets a non-finite loss (test plugin)."""

    name = "nan_loss"

    def loss(self, batch):
        return super().loss(batch) * float("nan")
'''


def _summary(text: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(text)
    assert m, text[-2000:]
    return tuple(int(g) for g in m.groups())


def _metrics(out: Path) -> dict[tuple, str]:
    return {
        (r["spec"]["method"], r["spec"]["domain"], r["spec"]["seed"]): json.dumps(r["metrics"], sort_keys=True)
        for r in load_records(out)
    }


def test_failures_are_isolated_recorded_and_reported(tmp_path: Path, monkeypatch, capsys):
    """A data error on one domain and a NaN loss in one method: the rest runs, exit 1, all reported."""
    import benchmark.run.runner as runner

    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    real = runner._load_split

    def broken_on_sketch(dataset, domain, *args):
        if domain == "sketch":
            raise RuntimeError("unreadable image sketch/0001.png")
        return real(dataset, domain, *args)

    monkeypatch.setattr(runner, "_load_split", broken_on_sketch)
    out = tmp_path / "out"
    code = main(
        [
            "--plugins",
            str(plugin),
            "--datasets",
            "synthetic",
            "--domains",
            "photo",
            "sketch",
            "--methods",
            "zero_shot",
            "nan_loss",
            "--seeds",
            "1",
            "--cfg-options",
            "nan_loss.epochs=1",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert _summary(captured.out) == (4, 1, 0, 3)
    records = {(r["spec"]["method"], r["spec"]["domain"]): r for r in load_records(out)}
    assert records[("zero_shot", "photo")]["status"] == "done"
    assert "unreadable image" in records[("zero_shot", "sketch")]["error"]
    assert records[("nan_loss", "photo")]["error"].startswith("NonFiniteLoss")
    for key in [("zero_shot", "sketch"), ("nan_loss", "photo"), ("nan_loss", "sketch")]:
        assert records[key]["status"] == "failed" and "Traceback" in records[key]["traceback"]
        assert key[0] in captured.err and key[1] in captured.err


def test_resume_after_sigkill_recomputes_only_incomplete_runs(tmp_path: Path):
    """kill -9 part-way; the rerun executes exactly the runs without a complete record."""
    out = tmp_path / "out"
    argv = [
        "--datasets",
        "synthetic",
        "--methods",
        "zero_shot",
        "ueo",
        "--domains",
        "photo",
        "sketch",
        "--seeds",
        "1",
        "2",
        "--cfg-options",
        "ueo.epochs=1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_bench.py"), *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    runs = out / "runs"
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.is_dir() and any(is_complete(d) for d in runs.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete_before = sum(is_complete(d) for d in runs.iterdir())
    assert 1 <= complete_before < 8
    # a torn write by some other tool must read as incomplete, never as a record
    torn = next(d for d in runs.iterdir() if not is_complete(d))
    (torn / RESULT).write_text('{"status": "do')
    rerun = subprocess.run(
        [sys.executable, str(REPO / "run_bench.py"), *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    total, ran, reused, failed = _summary(rerun.stdout)
    assert (total, ran, reused, failed) == (8, 8 - complete_before, complete_before, 0)
    for d in runs.iterdir():
        assert json.loads((d / RESULT).read_text())["status"] == "done"
        with run_lock(d) as mine:  # the killed sweep left no lock held
            assert mine


HOLD = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
)


def test_a_run_locked_by_a_live_process_is_not_started_and_a_killed_holder_frees_it(tmp_path: Path):
    spec = RunSpec(
        method="zero_shot",
        dataset="synthetic",
        domain="sketch",
        setting="oda",
        protocol="ueo",
        seed=1,
        model="clipbench-tiny",
        pretrained="embedded",
    )
    run_dir = tmp_path / "runs" / spec.hash
    run_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        rec = execute(spec, tmp_path)
        assert rec["status"] == "busy" and rec["skipped"] and not (run_dir / RESULT).exists()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    with run_lock(run_dir) as mine:
        assert mine


def test_a_sweep_ending_with_a_run_busy_elsewhere_exits_1_and_names_it(tmp_path: Path, capsys):
    from benchmark.run.sweep import SweepRequest, build_sweep

    (spec,) = build_sweep(
        SweepRequest(
            methods=["zero_shot"],
            datasets=["synthetic"],
            seeds=[1],
            model="clipbench-tiny",
            pretrained="embedded",
            domains=["sketch"],
        )
    )
    run_dir = tmp_path / "runs" / spec.hash
    run_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        argv = ["--methods", "zero_shot", "--domains", "sketch", "--seeds", "1", "--out", str(tmp_path)]
        assert main(argv) == 1
        assert "busy: zero_shot synthetic/sketch/oda seed 1" in capsys.readouterr().err
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_two_sweeps_on_one_out_compute_each_run_once(tmp_path: Path):
    """Started together on the same --out: every record valid, no run computed by both."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(REPO / "run_bench.py"),
        "--datasets",
        "synthetic",
        "--methods",
        "zero_shot",
        "--domains",
        "photo",
        "sketch",
        "--seeds",
        "1",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    outputs = [o for o, _ in results]
    for p, (_, err) in zip(procs, results):  # exit 1 only for a run the other sweep was still computing
        assert p.returncode == 0 or (p.returncode == 1 and "busy:" in err), err[-2000:]
    tallies = [_summary(o) for o in outputs]
    assert sum(t[1] for t in tallies) == 4 and all(t[3] == 0 for t in tallies)
    records = load_records(out)
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    assert main(["--report-only", "--out", str(out)]) == 0  # the leaderboard counts every record on disk
    assert "Built from 4 run records" in (out / "leaderboard.md").read_text()


@pytest.fixture(scope="module")
def inline_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inline")
    assert main([*ONE, "--out", str(out)]) == 0
    return out


def test_local_launcher_writes_the_inline_records(inline_out: Path, tmp_path: Path, capsys):
    assert main([*ONE, "--out", str(tmp_path), "--launcher", "local", "--workers", "2"]) == 0
    assert _summary(capsys.readouterr().out) == (2, 2, 0, 0)
    assert _metrics(tmp_path) == _metrics(inline_out)
    assert {r["hash"] for r in load_records(tmp_path)} == {r["hash"] for r in load_records(inline_out)}


def test_submitit_local_executor_writes_the_inline_records(inline_out: Path, tmp_path: Path, capsys):
    assert main([*ONE, "--out", str(tmp_path), "--launcher", "slurm", "--slurm-cluster", "local"]) == 0
    assert _summary(capsys.readouterr().out) == (2, 2, 0, 0)
    assert _metrics(tmp_path) == _metrics(inline_out)
    assert (tmp_path / "submitit").is_dir()


def test_profile_records_phases_and_throughput(tmp_path: Path):
    assert (
        main(
            [
                "--datasets",
                "synthetic",
                "--domains",
                "sketch",
                "--methods",
                "ueo",
                "--seeds",
                "1",
                "--cfg-options",
                "ueo.epochs=1",
                "--profile",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    (rec,) = load_records(tmp_path)
    prof = rec["profile"]
    assert {"data", "forward", "backward", "evaluate"} <= set(prof["seconds"])
    assert all(v > 0 for v in prof["seconds"].values())
    assert prof["images"]["adapt"] == rec["data"]["n_adapt"]
    assert prof["images_per_s"]["adapt"] > 0 and prof["images_per_s"]["evaluate"] > 0


def test_paper_config_dry_run_lists_every_run_and_touches_nothing(tmp_path: Path, capsys):
    """15 domains x 4 settings x 3 seeds x (7 methods on ViT-B-16 + 6 on RN50: MUST needs a ViT)."""
    out = tmp_path / "out"
    code = main(
        [
            "--config",
            str(REPO / "configs" / "ueo_paper.py"),
            "--dry-run",
            "--out",
            str(out),
            "--data-root",
            str(tmp_path / "no_data"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "dry run: 2340 runs" in text and "must on RN50" in text
    assert "RN50/must" not in text and "ViT-B-16/must 180" in text
    assert not out.exists()
    assert (
        main(
            [
                "--config",
                str(REPO / "configs" / "ueo_paper.py"),
                "--dry-run",
                "--out",
                str(out),
                "--seeds",
                "1",
                "--model",
                "ViT-B-16",
            ]
        )
        == 0
    )
    assert "dry run: 420 runs" in capsys.readouterr().out


def test_config_with_an_unknown_key_is_a_usage_error(tmp_path: Path, capsys):
    cfg = tmp_path / "bad.py"
    cfg.write_text("methods = ['zero_shot']\nepochz = 3\n")
    assert main(["--config", str(cfg), "--dry-run"]) == 2
    assert "epochz" in capsys.readouterr().err
    cfg.write_text("methods = ['zero_shot', 'nope']\n")
    assert main(["--config", str(cfg), "--dry-run"]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_report_that_cannot_be_built_exits_2_and_keeps_the_records(tmp_path: Path, capsys):
    """Only the validation domain run, with ``--selection validation_domain``: nothing to select
    for. The sweep's records stay, the error says why and how to rebuild, no traceback."""
    args = ["--datasets", "synthetic", "--domains", "fog", "--methods", "zero_shot", "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path), "--selection", "validation_domain"]) == 2
    err = capsys.readouterr().err
    assert "no run on a target domain" in err and "--report-only" in err and "Traceback" not in err
    assert [r["status"] for r in load_records(tmp_path)] == ["done"]
