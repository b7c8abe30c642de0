"""Launchers: how a list of run specs gets executed. Every launcher writes the same records.

A launcher is built from the ``LAUNCHERS`` registry (``LAUNCHERS.build(dict(type="local",
workers=4))``) and called with the specs; it returns one record per spec, in spec order. Each
run goes through ``runner.execute`` wherever it happens (this process, a worker process, a
SLURM job), so records, resume and failure handling are the same whichever launcher is used.
A launcher never raises because one run failed: a run that could not even report back (a
crashed worker, a lost job) is returned as a failed record. It raises
:class:`~benchmark.run.interrupt.SweepStopped` when the sweep must stop: on SIGINT / SIGTERM
(after it stopped submitting, stopped its workers and discarded what their unfinished runs left;
see ``benchmark.run.interrupt``), or when a run's record says every later run would fail the same
way (``stop_sweep``: no space left on the device).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.core.paths import REPO_ROOT
from benchmark.core.records import is_complete
from benchmark.core.spec import RunSpec
from benchmark.registry import LAUNCHERS, load_plugins
from benchmark.run.interrupt import (
    PARENT_GRACE,
    SweepStopped,
    become_worker,
    descendants,
    exit_status,
    hurry,
    signals_blocked,
    signals_deferred,
    watch_sweep,
)
from benchmark.run.runner import discard_partial, execute
from benchmark.run.workers import _exit_text, _lost, _Worker


class LauncherError(ValueError):
    """A launcher that cannot work here (e.g. SLURM asked for without ``sbatch``): exit status 2."""


def _report(spec: RunSpec, rec: dict[str, Any]) -> None:
    if rec.get("status") not in ("done", "busy"):
        tqdm.write(f"FAILED {spec.label()}: {rec.get('error')}")


def _stopped(
    specs: list[RunSpec], records: list[dict[str, Any] | None], out: Path, status: int, reason: str | None = None
) -> SweepStopped:
    """The :class:`SweepStopped` of a sweep whose ``records`` (None: not collected) stop here.

    A run counts as done when it came back with a record (of any status but ``busy``), or when
    its complete record is on disk although it was not collected (it finished meanwhile).
    """
    done = sum(
        1
        for spec, rec in zip(specs, records)
        if (rec is not None and rec.get("status") != "busy")
        or (rec is None and is_complete(Path(out) / "runs" / spec.hash))
    )
    return SweepStopped(done, len(specs) - done, status, reason)


def _stop_reason(spec: RunSpec, rec: dict[str, Any]) -> str | None:
    """Why the sweep stops after ``rec`` (every later run would fail the same way), or None."""
    cause = rec.get("stop_sweep")
    if not cause:
        return None
    return f"{spec.label()}: {cause}; stopping the sweep, since every later run would fail the same way"


def round_robin_devices(device: str, n: int) -> list[str]:
    """The device of each of ``n`` runs: ``cuda`` is spread over every visible GPU in turn.

    An explicit ``cuda:N`` or ``cpu`` is kept for every run.
    """
    if device != "cuda":
        return [device] * n
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(n)] if count > 1 else [device] * n


@LAUNCHERS.register_module(name="inline")
class InlineLauncher:
    """Run every spec in this process, one after the other (the default; shares caches)."""

    def __init__(self, profile: bool = False, feature_cache: bool = True, **_: Any):
        self.options = {"profile": profile, "feature_cache": feature_cache}

    def __call__(self, specs: list[RunSpec], out: Path, data_root: str | None, device: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(specs)
        bar = tqdm(specs, desc="runs", unit="run", disable=None)
        try:
            for i, spec in enumerate(bar):
                bar.set_postfix_str(spec.label())
                rec = execute(spec, out, data_root=data_root, device=device, **self.options)
                _report(spec, rec)
                records[i] = rec
                reason = _stop_reason(spec, rec)
                if reason:
                    raise _stopped(specs, records, out, 1, reason)
        except KeyboardInterrupt as err:  # the run under way left nothing behind (``execute``)
            raise _stopped(specs, records, out, exit_status(err)) from None
        finally:
            bar.close()
        return records


@LAUNCHERS.register_module(name="local")
class LocalLauncher:
    """A pool of ``workers`` processes on this machine (spawned, so CUDA is safe in each).

    With ``--device cuda`` and several GPUs, runs are assigned to ``cuda:0``, ``cuda:1``, ...
    in turn. Torch threads are split between the workers so they do not oversubscribe the CPUs.
    A worker that dies loses the run it held (a failed record in memory) and is replaced. On a
    stop signal no further run is handed out, every worker gets SIGTERM (SIGKILL after
    ``PARENT_GRACE`` seconds, or at once on a second signal) and the runs they held leave nothing
    on disk. Workers never outlive the sweep (``benchmark.run.interrupt``).
    """

    def __init__(
        self,
        workers: int = 2,
        plugins: list[str] | None = None,
        profile: bool = False,
        feature_cache: bool = True,
        **_: Any,
    ):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.plugins = list(plugins or [])
        self.options = {"profile": profile, "feature_cache": feature_cache}

    def __call__(self, specs: list[RunSpec], out: Path, data_root: str | None, device: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(specs)
        if not specs:
            return []
        devices = round_robin_devices(device, len(specs))
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = multiprocessing.get_context("spawn")
        queue = deque(range(len(specs)))
        workers: list[_Worker] = []
        bar = tqdm(total=len(specs), desc="runs", unit="run", disable=None)

        def spawn() -> _Worker:
            with signals_deferred():  # a worker started is a worker the stop knows of
                workers.append(_Worker(ctx, self.plugins, threads))
            return workers[-1]

        def hand_out(w: _Worker) -> None:
            """Give ``w`` the next run (or tell it to finish); a worker gone meanwhile is replaced."""
            while queue:
                with signals_deferred():  # a run handed out is a run the stop knows of
                    i = queue.popleft()
                    if w.send((i, specs[i], out, data_root, devices[i], self.options)):
                        w.task = i
                        return
                    queue.appendleft(i)  # not started: it goes to a fresh worker
                    workers.remove(w)
                w = spawn()
            w.send(None)

        def collect(w: _Worker) -> None:
            """The record of ``w``'s run, or a lost run when ``w`` died without one."""
            i, msg = w.task, None
            try:
                if w.conn.poll():
                    msg = w.conn.recv()
            except (EOFError, OSError):
                msg = None
            w.task = None
            if msg is None:
                w.proc.join(1.0)
                rec = _lost(specs[i], f"its worker process died ({_exit_text(w.proc.exitcode)})")
                workers.remove(w)
            else:
                i, rec = msg
            records[i] = rec
            _report(specs[i], rec)
            bar.update()
            reason = _stop_reason(specs[i], rec)
            if reason:  # no further run is handed out
                raise _stopped(specs, records, out, 1, reason)
            if msg is not None:
                hand_out(w)
            elif queue:
                hand_out(spawn())

        try:
            for _ in range(min(self.workers, len(specs))):
                hand_out(spawn())
            while any(w.task is not None for w in workers):
                busy = [w for w in workers if w.task is not None]
                ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0))
                for w in busy:
                    if w.conn in ready or w.proc.sentinel in ready:
                        collect(w)
        except KeyboardInterrupt as err:
            self._stop(workers, specs, records, out)
            raise _stopped(specs, records, out, exit_status(err)) from None
        except SweepStopped:
            self._stop(workers, specs, records, out)
            raise
        finally:
            bar.close()
            self._finish(workers)
        return records

    @staticmethod
    def _stop(workers: list[_Worker], specs: list[RunSpec], records: list, out: Path) -> None:
        """Stop every worker now; runs that finished meanwhile are collected, the others leave nothing."""
        for w in workers:
            try:
                if w.task is not None and w.conn.poll():
                    i, records[i] = w.conn.recv()
                    w.task = None
            except (EOFError, OSError, ValueError):
                pass
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + PARENT_GRACE
        while any(w.alive() for w in workers) and time.monotonic() < deadline and not hurry():
            time.sleep(0.05)
        for w in workers:
            w.signal(signal.SIGKILL)
            w.proc.join()
        for w in workers:
            if w.task is not None:
                discard_partial(Path(out) / "runs" / specs[w.task].hash)

    @staticmethod
    def _finish(workers: list[_Worker]) -> None:
        """Let idle workers exit (they were told to); never leave one running."""
        deadline = time.monotonic() + PARENT_GRACE
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.signal(signal.SIGKILL)
            w.proc.join()
            w.conn.close()


def slurm_problem(cluster: str | None) -> str | None:
    """Why ``--launcher slurm`` cannot submit here (no ``sbatch`` on PATH), or None."""
    if (cluster or "slurm") == "slurm" and shutil.which("sbatch") is None:
        return (
            "--launcher slurm submits through SLURM's sbatch, which is not on PATH; run on a SLURM login node, "
            "use --launcher local, or --slurm-cluster local to try submitit's local executor"
        )
    return None


def _run_one(
    spec: RunSpec,
    out: Path,
    data_root: str | None,
    device: str,
    options: dict[str, Any],
    plugins: list[str] = (),
    sweep: int | None = None,
) -> dict[str, Any]:
    """Execute one spec in a submitit job (module level, so it pickles by reference).

    ``sweep``: the pid of the sweep that submitted it, given for submitit's local executor only:
    the job then stops on SIGTERM like a local worker and ends itself when the sweep is gone.
    """
    if sweep is not None:
        watch_sweep(sweep)
        become_worker(own_group=False, sigint=False)
    if plugins:
        load_plugins(list(plugins))
    return execute(spec, out, data_root=data_root, device=device, **options)


@LAUNCHERS.register_module(name="slurm")
@LAUNCHERS.register_module(name="submitit")
class SlurmLauncher:
    """One SLURM array job over the specs, through submitit (``executor.map_array``); alias ``submitit``.

    ``cluster`` is ``"slurm"`` (the default; ``sbatch`` must be on PATH, else :class:`LauncherError`:
    a sweep never falls back to running locally unasked) or ``"local"`` (submitit's
    ``LocalExecutor``: each run in its own local process; used by the tests). Job logs and pickles
    go to ``<out>/submitit``. Each array task runs ``execute``, so a resubmitted sweep reuses every
    complete record. A stop signal cancels every job not yet finished (``scancel`` of the array;
    local jobs get SIGTERM).
    """

    def __init__(
        self,
        partition: str | None = None,
        time: int = 240,
        gpus_per_job: int = 1,
        cpus_per_task: int = 8,
        mem_gb: int | None = None,
        array_parallelism: int = 64,
        cluster: str | None = None,
        plugins: list[str] | None = None,
        profile: bool = False,
        feature_cache: bool = True,
        **_: Any,
    ):
        self.partition = partition
        self.time = time
        self.gpus_per_job = gpus_per_job
        self.cpus_per_task = cpus_per_task
        self.mem_gb = mem_gb
        self.array_parallelism = array_parallelism
        self.cluster = cluster or "slurm"
        if self.cluster not in ("slurm", "local"):
            raise LauncherError(f"unknown submitit cluster {cluster!r}; use slurm or local")
        self.plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in (plugins or [])]
        self.options = {"profile": profile, "feature_cache": feature_cache}

    def executor(self, folder: Path):
        """The configured submitit executor (jobs can import this repository)."""
        import submitit

        problem = slurm_problem(self.cluster)
        if problem:
            raise LauncherError(problem)
        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params: dict[str, Any] = {
            "timeout_min": self.time,
            "name": "clipbench",
            "slurm_array_parallelism": self.array_parallelism,
        }
        if ex.cluster == "slurm":
            params.update(
                gpus_per_node=self.gpus_per_job,
                cpus_per_task=self.cpus_per_task,
                slurm_setup=[f"export PYTHONPATH={REPO_ROOT}:$PYTHONPATH"],
            )
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.mem_gb:
                params["mem_gb"] = self.mem_gb
        ex.update_parameters(**params)
        return ex

    def __call__(self, specs: list[RunSpec], out: Path, data_root: str | None, device: str) -> list[dict[str, Any]]:
        if not specs:
            return []
        ex = self.executor(Path(out) / "submitit")
        n = len(specs)
        sweep = os.getpid() if ex.cluster != "slurm" else None
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), saved) if p)
        records: list[dict[str, Any] | None] = [None] * n
        jobs: list = []
        try:
            # A stop signal waits for the submission to end (cut short, it would leave jobs nobody cancels);
            # children inherit SIGINT blocked: a terminal's Ctrl-C reaches the sweep alone, which stops local
            # jobs by SIGTERM (their controller forwards it). Local jobs inherit the environment at submission,
            # so they can import the repo.
            try:
                with signals_deferred(), signals_blocked((signal.SIGINT,)):
                    jobs = ex.map_array(
                        _run_one,
                        specs,
                        [Path(out).resolve()] * n,
                        [data_root] * n,
                        [device] * n,
                        [self.options] * n,
                        [self.plugins] * n,
                        [sweep] * n,
                    )
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
            job_id = jobs[0].job_id.split("_")[0]
            print(f"submitted {n} runs as {ex.cluster} job {job_id}; logs in {Path(out) / 'submitit'}", file=sys.stderr)
            for i, (spec, job) in enumerate(tqdm(list(zip(specs, jobs)), desc="runs", unit="run", disable=None)):
                try:
                    rec = job.result()
                except Exception as err:  # a lost or crashed job fails its run only
                    rec = _lost(spec, err)
                _report(spec, rec)
                records[i] = rec
                reason = _stop_reason(spec, rec)
                if reason:
                    raise _stopped(specs, records, out, 1, reason)
        except KeyboardInterrupt as err:
            self._cancel(jobs, records, specs, out)
            raise _stopped(specs, records, out, exit_status(err)) from None
        except SweepStopped:
            self._cancel(jobs, records, specs, out)
            raise
        return records

    @staticmethod
    def _signal_trees(procs: list, sig: int) -> None:
        """Send ``sig`` to every living local controller and to its job processes (jobs first)."""
        for proc in procs:
            if proc.poll() is None:
                for pid in [*descendants(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)

    def _cancel(self, jobs: list, records: list, specs: list[RunSpec], out: Path) -> None:
        """Cancel every job whose record was not collected, then discard what their runs left."""
        pending = [job for job, rec in zip(jobs, records) if rec is None]
        if self.cluster == "slurm":
            array = {job.job_id.split("_")[0] for job in pending}
            if array:
                subprocess.run(["scancel", *sorted(array)], capture_output=True, timeout=60, check=False)
        else:  # local: SIGTERM to each controller and its job (a job still starting up ignores it: SIGKILL later)
            procs = [p for p in (getattr(job, "_process", None) for job in pending) if p is not None]
            self._signal_trees(procs, signal.SIGTERM)
            deadline = time.monotonic() + PARENT_GRACE
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline and not hurry():
                time.sleep(0.05)
            self._signal_trees(procs, signal.SIGKILL)
            for proc in procs:
                proc.wait()
        for spec, rec in zip(specs, records):
            if rec is None:
                discard_partial(Path(out) / "runs" / spec.hash)
