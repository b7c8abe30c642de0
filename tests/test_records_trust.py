"""Records that cannot lie: a record is reused only while it is valid and its data unchanged; a broken,
stale or foreign record is named, left out of the tables and recomputed by the next sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.core.records import PREDS, RESULT, scan_records
from benchmark.data.fingerprint import data_fingerprint, forget
from tests.test_data_loading import make_folders

FAST = ["--datasets", "synthetic", "--domains", "photo", "--seeds", "1", "--methods", "zero_shot"]


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    assert main([*FAST, "--out", str(out)]) == 0
    return out


def _copy(src: Path, dst: Path) -> tuple[Path, Path]:
    """A copy of an --out holding one record; returns the copy and its run folder."""
    shutil.copytree(src / "runs", dst / "runs")
    (run,) = [d for d in (dst / "runs").iterdir() if d.is_dir()]
    return dst, run


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda run: (run / RESULT).write_text("[]"), "not a JSON object"),
        (lambda run: (run / RESULT).write_text("{}"), "record schema None"),
        (lambda run: (run / RESULT).write_text('{"status": "done"}'), "record schema None"),
        (lambda run: (run / RESULT).write_text('{"status": "do'), "unreadable"),
        (lambda run: (run / PREDS).write_bytes((run / PREDS).read_bytes()[:100]), "does not match the checksum"),
        (lambda run: (run / PREDS).unlink(), "preds.npz: missing"),
    ],
)
def test_a_broken_record_is_named_left_out_and_recomputed(one_run, tmp_path, capsys, damage, problem):
    out, run = _copy(one_run, tmp_path / "out")
    damage(run)
    capsys.readouterr()
    assert main(["--report-only", "--out", str(out)]) == 2  # the only record is unusable: no table
    err = capsys.readouterr().err
    assert str(run) in err and problem in err
    assert main([*FAST, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 runs: 1 ran, 0 reused" in captured.out and "replaced a stale or broken record" in captured.out
    assert f"recomputed: {run}" in captured.err and problem in captured.err
    stored, problems = scan_records(out)
    assert len(stored) == 1 and problems == []


def test_a_record_of_another_protocol_version_is_excluded_and_named(one_run, tmp_path, capsys):
    out, run = _copy(one_run, tmp_path / "out")
    old = tmp_path / "out" / "runs" / "0000000000000000"
    shutil.copytree(run, old)
    rec = json.loads((old / RESULT).read_text())
    rec["spec"]["protocol_version"] = 1
    (old / RESULT).write_text(json.dumps(rec))
    assert main(["--report-only", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "protocol version 1" in err and str(old) in err
    md = (out / "leaderboard.md").read_text()
    assert "Built from 1 run records" in md and "## Records left out" in md and str(old) in md


def test_a_duplicate_of_a_record_in_another_folder_is_named_not_averaged(one_run, tmp_path, capsys):
    out, run = _copy(one_run, tmp_path / "out")
    shutil.copytree(run, tmp_path / "out" / "runs" / "copy-of-a-run")
    assert main(["--report-only", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "copy-of-a-run" in err and "not to its folder's name" in err
    assert "Built from 1 run records" in (out / "leaderboard.md").read_text()


def test_records_are_recomputed_when_their_data_changes(one_run, tmp_path, capsys, monkeypatch):
    import benchmark.run.runner as runner

    out, _ = _copy(one_run, tmp_path / "out")
    assert main([*FAST, "--out", str(out)]) == 0
    assert "1 runs: 0 ran, 1 reused" in capsys.readouterr().out
    monkeypatch.setattr(runner, "data_fingerprint", lambda *a: "files:changed")
    assert main([*FAST, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 runs: 1 ran, 0 reused" in captured.out and "its data changed since it ran" in captured.err
    (rec,) = [r for _, r in scan_records(out)[0]]
    assert rec["data"]["fingerprint"] == "files:changed"


def test_the_fingerprint_follows_the_files_on_disk(tmp_path):
    classes = {"Alarm_Clock": 2, "Backpack": 2}
    make_folders(tmp_path / "office_home" / "Art", classes)
    forget()
    before = data_fingerprint("office_home", "Art", tmp_path)
    forget()
    assert data_fingerprint("office_home", "Art", tmp_path) == before
    make_folders(tmp_path / "office_home" / "Art", {"Backpack": 3}, seed=7)  # one more image, one rewritten
    forget()
    assert data_fingerprint("office_home", "Art", tmp_path) != before
    assert before.startswith("files:") and data_fingerprint("synthetic", "photo", None).startswith("generated:")
