"""Records that cannot lie: stops by signal for every launcher, no orphan workers, no partial records,
SLURM never silently local, image lists confined to their root, one-line errors for an unusable
``--out`` or a broken plugin, a full disk, and report rebuilds that never link a removed file."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.core.records import PREDS, RESULT, is_complete, load_records
from benchmark.run.interrupt import descendants

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
SUMMARY = re.compile(r"(\d+) runs: (\d+) ran, (\d+) reused complete records, (\d+) failed")
STOPPED = re.compile(r"^stopped: (\d+) done, (\d+) not started; rerun the same command to resume$", re.MULTILINE)
ONE = ["--datasets", "synthetic", "--domains", "sketch", "--methods", "zero_shot", "--seeds", "1", "2"]
LINUX = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _living(pids) -> list[int]:
    """The pids that still run (zombies, already dead, count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def _wait_gone(pids, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while _living(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _living(pids)


def _assert_no_partial_records(out: Path, failed: bool = False) -> None:
    """Every run folder holds a complete record or nothing of one (no predictions, no temp file, and no
    result.json; with ``failed``, a result.json of a failed run is allowed)."""
    runs = out / "runs"
    assert not list(runs.rglob("*.tmp")) if runs.is_dir() else True
    for d in runs.iterdir() if runs.is_dir() else []:
        if not is_complete(d):
            assert not (d / PREDS).exists(), sorted(p.name for p in d.iterdir())
            if (d / RESULT).exists():
                assert failed and json.loads((d / RESULT).read_text())["status"] == "failed"


def _stop_line(err: str) -> tuple[int, int]:
    lines = STOPPED.findall(err)
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return tuple(int(v) for v in lines[0])


# ---------------------------------------------------------------- 1. interrupts


@LINUX
def test_sigint_stops_a_local_sweep_at_once_and_the_rerun_resumes(tmp_path: Path):
    """Ctrl-C on ``--launcher local --workers 2``: exit 130 within seconds, one line, no worker left,
    no partial record; the same command then finishes and reuses every finished run."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(REPO / "run_bench.py"),
        "--launcher",
        "local",
        "--workers",
        "2",
        "--methods",
        "zero_shot",
        "tent",
        "--domains",
        "photo",
        "sketch",
        "--seeds",
        "1",
        "2",
        "3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 600
    runs = out / "runs"
    while time.monotonic() < deadline and proc.poll() is None:
        workers.update(descendants(proc.pid))
        if runs.is_dir() and any(is_complete(d) for d in runs.iterdir()):
            break
        time.sleep(0.05)
    workers.update(descendants(proc.pid))
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    assert _living(workers), "no worker process was seen"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err[-3000:]
    assert took < 30, f"took {took:.1f} s to stop"
    assert _wait_gone(workers) == []
    done, not_started = _stop_line(err)
    complete = sum(is_complete(d) for d in runs.iterdir())
    assert done == complete >= 1 and done + not_started == 12
    _assert_no_partial_records(out)

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = SUMMARY.search(rerun.stdout)
    assert m and tuple(int(g) for g in m.groups()) == (12, 12 - complete, complete, 0)


def _signal_when(condition, sig: int, seen: set[int] | None = None) -> threading.Thread:
    """Send ``sig`` to this process once ``condition()`` holds (collecting our descendants meanwhile)."""

    def run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not condition():
            if seen is not None:
                seen.update(descendants(os.getpid()))
            time.sleep(0.01)
        if seen is not None:
            seen.update(descendants(os.getpid()))
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_stops_an_inline_sweep_mid_run_leaving_nothing_half_written(tmp_path: Path, capsys):
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    runs = out / "runs"
    thread = _signal_when(lambda: runs.is_dir() and any(runs.iterdir()), signal.SIGTERM)
    code = main([*ONE, "--out", str(out)])
    thread.join()
    err = capsys.readouterr().err
    assert code == 143, err[-3000:]
    done, not_started = _stop_line(err)
    assert done + not_started == 2 and not_started >= 1
    _assert_no_partial_records(out)
    assert signal.getsignal(signal.SIGTERM) is handler  # main() put the handlers back


@LINUX
def test_an_interrupt_while_writing_the_record_leaves_neither_file(tmp_path: Path, monkeypatch, capsys):
    """Interrupted inside the write of result.json: preds.npz is taken back, the temp file removed."""
    from benchmark.core import records
    from benchmark.run.interrupt import Interrupted

    real = records.os.fsync

    def interrupted_fsync(fd):
        real(fd)
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{RESULT}."):
            raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(records.os, "fsync", interrupted_fsync)
    out = tmp_path / "out"
    assert main([*ONE, "--out", str(out)]) == 130
    assert _stop_line(capsys.readouterr().err) == (0, 2)
    (run,) = list((out / "runs").iterdir())
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


@LINUX
def test_submitit_local_jobs_are_stopped_by_sigterm(tmp_path: Path, capsys):
    out = tmp_path / "out"
    before = set(descendants(os.getpid()))
    seen: set[int] = set()
    thread = _signal_when(lambda: len(set(descendants(os.getpid())) - before) >= 4, signal.SIGTERM, seen)
    code = main([*ONE, "--out", str(out), "--launcher", "slurm", "--slurm-cluster", "local"])
    thread.join()
    err = capsys.readouterr().err
    assert code == 143, err[-3000:]
    done, not_started = _stop_line(err)
    assert done + not_started == 2
    assert _wait_gone(seen - before) == []
    _assert_no_partial_records(out)


WATCHED = """
import sys, time
from benchmark.run.interrupt import become_worker, watch_parent
watch_parent(int(sys.argv[1]))
become_worker(own_group=True)
print("ready", flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    sys.exit(3)
"""
PARENT = """
import os, subprocess, sys, time
from benchmark.run.interrupt import signals_blocked
with signals_blocked():
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(120)
"""


@LINUX
def test_a_worker_dies_with_its_parent_even_when_the_parent_is_sigkilled():
    """The mechanism of every local worker: PR_SET_PDEATHSIG, own process group, SIGINT-proof start."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WATCHED], env=env, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert os.getpgid(child) == child != os.getpgid(parent.pid)  # a terminal's Ctrl-C does not reach it
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone([child]) == []
    finally:
        parent.kill()
        parent.wait()


# ---------------------------------------------------------------- 2. no silent local SLURM


@pytest.mark.parametrize("launcher", ["slurm", "submitit"])
def test_slurm_without_sbatch_is_a_usage_error_not_a_local_run(tmp_path: Path, monkeypatch, capsys, launcher):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert main([*ONE, "--out", str(out), "--launcher", launcher]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch" in err and "--slurm-cluster local" in err
    assert not (out / "runs").exists() and not (out / "submitit").exists()
    assert main([*ONE, "--out", str(out), "--launcher", launcher, "--dry-run"]) == 0  # planning needs no SLURM


# ---------------------------------------------------------------- 3. image lists stay inside their root

DOMAINNET = ["aircraft_carrier", "zebra", "bush"]


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _domainnet(tmp_path: Path, extra: list[str]) -> tuple[Path, Path]:
    """A fake DomainNet clipart domain whose test list ends with ``extra`` entries (label 0)."""
    from benchmark.data import get_spec

    spec = get_spec("domainnet")
    root = tmp_path / "data" / "domainnet"
    for split in ("train", "test"):
        lines = []
        for k, name in enumerate(DOMAINNET):
            rel = f"clipart/{name}/clipart_{split}_{k}.jpg"
            _jpeg(root / rel, k)
            lines.append(f"{rel} {spec.classes.index(name)}")
        if split == "test":
            lines += [f"{e} 0" for e in extra]
        (root / f"clipart_{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "data", root / "clipart_test.txt"


@pytest.mark.parametrize("entry", ["../../outside/x.jpg", "clipart/../../../outside/x.jpg", "ABSOLUTE"])
def test_a_list_entry_outside_the_root_is_an_error_naming_list_line_and_path(tmp_path: Path, entry: str, capsys):
    from benchmark.data import DataError, load_split
    from benchmark.data.__main__ import main as data_main

    outside = tmp_path / "outside" / "x.jpg"
    _jpeg(outside, 7)  # it exists: only the rule keeps it out
    entry = str(outside) if entry == "ABSOLUTE" else entry
    data_root, listing = _domainnet(tmp_path, ["clipart/zebra/clipart_test_1.jpg", entry])
    with pytest.raises(DataError) as info:
        load_split("domainnet", domain="clipart", setting="oda", data_root=data_root, resolution=16)
    message = str(info.value)
    assert f"{listing}:5:" in message and repr(entry) in message and "outside" in message
    assert data_main(["verify", "domainnet", "--data-root", str(data_root), "--domains", "clipart"]) == 1
    out = capsys.readouterr().out
    assert "[invalid list]" in out and f"{listing}:5:" in out and entry in out and "problems found" in out


def test_list_entries_inside_the_root_still_load(tmp_path: Path):
    from benchmark.data import load_split

    data_root, _ = _domainnet(tmp_path, ["clipart/zebra/../bush/clipart_test_2.jpg"])
    split = load_split("domainnet", domain="clipart", setting="oda", data_root=data_root, resolution=16)
    assert len(split.test) == len(DOMAINNET) + 1


# ---------------------------------------------------------------- 4. one line and exit 2, or a clean stop


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run_bench.py: error:") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["file", "under_a_file", "too_long", "read_only"])
def test_an_unusable_out_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys, kind: str):
    if kind == "file":
        out = tmp_path / "taken"
        out.write_text("not a folder")
        expect = "not a folder"
    elif kind == "under_a_file":
        (tmp_path / "taken").write_text("not a folder")
        out = tmp_path / "taken" / "out"
        expect = "Not a directory"
    elif kind == "too_long":
        out = tmp_path / ("x" * 300)
        expect = "File name too long"
    else:
        out = tmp_path / "locked"
        out.mkdir()
        out.chmod(0o555)
        expect = "Permission denied"
        if os.geteuid() == 0:  # root writes anywhere: play the refusal a user would get
            import tempfile

            def refuse(*args, dir=None, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main([*ONE, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "--out" in err and expect in err


BROKEN = """import os

raise RuntimeError("boom at import")
"""
TAKES = """from benchmark import register_method
from methods.zero_shot import ZeroShot


@register_method
class Taker(ZeroShot):
    \"\"\"Registers a name already taken (test plugin).\"\"\"

    name = "{name}"
"""


@pytest.fixture
def clean_registry():
    from benchmark.registry import METHODS

    before = set(METHODS.module_dict)
    modules = set(sys.modules)
    yield
    for name in set(METHODS.module_dict) - before:
        METHODS.module_dict.pop(name)
    for name in set(sys.modules) - modules:
        if name.startswith("clipbench_plugin_"):
            sys.modules.pop(name)


def test_a_plugin_that_fails_at_import_is_one_line_naming_file_error_and_line(tmp_path: Path, capsys, clean_registry):
    bad = tmp_path / "broken_plugin.py"
    bad.write_text(BROKEN)
    assert main(["--plugins", str(bad), *ONE, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "RuntimeError: boom at import" in err and "line 3" in err
    bad.write_text("def broken(:\n")
    assert main(["--plugins", str(bad), *ONE, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "SyntaxError" in err and "line 1" in err


def test_a_plugin_taking_a_registered_name_names_both(tmp_path: Path, capsys, clean_registry):
    taker = tmp_path / "taker_plugin.py"
    taker.write_text(TAKES.format(name="ueo"))
    assert main(["--plugins", str(taker), *ONE, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert str(taker) in err and "'ueo'" in err and str(REPO / "methods" / "ueo.py") in err
    first, second = tmp_path / "a" / "first_plugin.py", tmp_path / "b" / "second_plugin.py"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(TAKES.format(name="twice_registered"))
    assert main(["--plugins", str(first), str(second), *ONE, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert str(first) in err and str(second) in err and "'twice_registered'" in err


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_the_run_and_stops_the_sweep(tmp_path: Path, monkeypatch, capsys):
    from benchmark.run import artifacts

    monkeypatch.setattr(artifacts, "write_npz", _no_space)
    out = tmp_path / "out"
    assert main([*ONE, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert _stop_line(err) == (1, 1)
    assert "No space left on device" in err and "stopping the sweep" in err
    (rec,) = load_records(out)  # the first run's record says why; the second never started
    assert rec["status"] == "failed" and "[Errno 28]" in rec["error"] and rec["spec"]["seed"] == 1
    assert not (out / "runs" / rec["hash"] / PREDS).exists()
    _assert_no_partial_records(out, failed=True)


def test_a_full_disk_that_refuses_even_the_record_still_reports_and_stops(tmp_path: Path, monkeypatch, capsys):
    from benchmark.core import records

    real = records.os.fsync

    def full(fd):
        real(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records.os, "fsync", full)  # every atomic write fails, after its temp file is made
    out = tmp_path / "out"
    assert main([*ONE, "--out", str(out), "--no-feature-cache"]) == 1
    captured = capsys.readouterr()
    assert _stop_line(captured.err) == (1, 1)
    assert "No space left on device" in captured.err and "FAILED" in captured.out
    assert load_records(out) == []
    _assert_no_partial_records(out)


# ---------------------------------------------------------------- 5. report rebuilds


def _links(out: Path) -> list[Path]:
    return [out / link for link in re.findall(r"\]\(([^)]+)\)", (out / "report.md").read_text())]


def test_an_interrupted_report_rebuild_never_links_a_removed_file(tmp_path: Path, monkeypatch):
    import shutil

    from benchmark.report import plots
    from benchmark.report.build import write_report

    out = tmp_path / "out"
    shutil.copytree(GOLDEN / "runs", out / "runs")
    write_report(out, reported=[])
    links = _links(out)
    assert any(p.suffix == ".png" for p in links) and all(p.is_file() for p in links)
    stale = [out / "plots" / "bars_gone_group.png", out / "tables" / "gone_group.md"]
    for p in stale:
        p.write_text("from an earlier report")

    real, calls = plots.save, []

    def interrupted_save(fig, stem):
        calls.append(stem)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fig, stem)

    monkeypatch.setattr(plots, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        write_report(out, reported=[])
    assert all(p.is_file() for p in _links(out))
    monkeypatch.setattr(plots, "save", real)
    write_report(out, reported=[])
    assert all(p.is_file() for p in _links(out))
    assert not any(p.exists() for p in stale)
    assert not list(out.rglob("*.tmp"))
    assert {p.name for p in _links(out)} <= {p.name for p in out.rglob("*") if p.is_file()}
