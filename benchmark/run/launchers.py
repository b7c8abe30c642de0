"""Launchers: how a list of run specs gets executed. Every launcher writes the same records.

A launcher is built from the ``LAUNCHERS`` registry (``LAUNCHERS.build(dict(type="local",
workers=4))``) and called with the specs; it returns one record per spec, in spec order. Each
run goes through ``runner.execute`` wherever it happens (this process, a worker process, a
SLURM job), so records, resume and failure handling are the same whichever launcher is used.
A launcher never raises because one run failed: a run that could not even report back (a
crashed worker, a lost job) is returned as a failed record.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.core.paths import REPO_ROOT
from benchmark.registry import LAUNCHERS, load_plugins
from benchmark.core.spec import RunSpec
from benchmark.run.runner import execute



def _lost(spec: RunSpec, err: BaseException | str) -> dict[str, Any]:
    """A failed record for a run whose process never reported (kept in memory for the summary)."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    tb = "" if isinstance(err, str) else "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"spec": spec.as_dict(), "hash": spec.hash, "status": "failed", "skipped": False,
            "error": f"run did not report back: {text}", "traceback": tb}


def _report(spec: RunSpec, rec: dict[str, Any]) -> None:
    if rec.get("status") not in ("done", "busy"):
        tqdm.write(f"FAILED {spec.label()}: {rec.get('error')}")


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
        records = []
        bar = tqdm(specs, desc="runs", unit="run", disable=None)
        for spec in bar:
            bar.set_postfix_str(spec.label())
            rec = execute(spec, out, data_root=data_root, device=device, **self.options)
            _report(spec, rec)
            records.append(rec)
        return records


def _worker_init(plugins: list[str], threads: int) -> None:
    """Per worker process: register plugin methods and share the CPU cores fairly."""
    import torch

    torch.set_num_threads(threads)
    load_plugins(plugins)


def _run_one(spec: RunSpec, out: Path, data_root: str | None, device: str, options: dict[str, Any],
             plugins: list[str] = ()) -> dict[str, Any]:
    """Execute one spec in a fresh process (module level, so it pickles by reference)."""
    if plugins:
        load_plugins(list(plugins))
    return execute(spec, out, data_root=data_root, device=device, **options)


@LAUNCHERS.register_module(name="local")
class LocalLauncher:
    """A pool of ``workers`` processes on this machine (spawned, so CUDA is safe in each).

    With ``--device cuda`` and several GPUs, runs are assigned to ``cuda:0``, ``cuda:1``, ...
    in turn. Torch threads are split between the workers so they do not oversubscribe the CPUs.
    """

    def __init__(self, workers: int = 2, plugins: list[str] | None = None, profile: bool = False,
                 feature_cache: bool = True, **_: Any):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.plugins = list(plugins or [])
        self.options = {"profile": profile, "feature_cache": feature_cache}

    def __call__(self, specs: list[RunSpec], out: Path, data_root: str | None, device: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(specs)
        devices = round_robin_devices(device, len(specs))
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(self.plugins, threads)) as pool:
            futures = {pool.submit(_run_one, spec, out, data_root, dev, self.options): i
                       for i, (spec, dev) in enumerate(zip(specs, devices))}
            for fut in tqdm(as_completed(futures), total=len(futures), desc="runs", unit="run", disable=None):
                i = futures[fut]
                try:
                    records[i] = fut.result()
                except Exception as err:  # a crashed worker loses its run, not the sweep
                    records[i] = _lost(specs[i], err)
                _report(specs[i], records[i])
        return records


@LAUNCHERS.register_module(name="slurm")
@LAUNCHERS.register_module(name="submitit")
class SlurmLauncher:
    """One SLURM array job over the specs, through submitit (``executor.map_array``); alias ``submitit``.

    ``cluster`` is ``None`` (auto: SLURM when ``sbatch`` is there), ``"slurm"``, or ``"local"``
    (submitit's ``LocalExecutor``: each run in its own local process; used by the tests).
    Job logs and pickles go to ``<out>/submitit``. Each array task runs ``execute``, so a
    resubmitted sweep reuses every complete record.
    """

    def __init__(self, partition: str | None = None, time: int = 240, gpus_per_job: int = 1,
                 cpus_per_task: int = 8, mem_gb: int | None = None, array_parallelism: int = 64,
                 cluster: str | None = None, plugins: list[str] | None = None, profile: bool = False,
                 feature_cache: bool = True, **_: Any):
        self.partition = partition
        self.time = time
        self.gpus_per_job = gpus_per_job
        self.cpus_per_task = cpus_per_task
        self.mem_gb = mem_gb
        self.array_parallelism = array_parallelism
        self.cluster = cluster
        self.plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in (plugins or [])]
        self.options = {"profile": profile, "feature_cache": feature_cache}

    def executor(self, folder: Path):
        """The configured submitit executor (jobs can import this repository)."""
        import submitit

        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.time, "name": "clipbench",
                                  "slurm_array_parallelism": self.array_parallelism}
        if ex.cluster == "slurm":
            params.update(gpus_per_node=self.gpus_per_job, cpus_per_task=self.cpus_per_task,
                          slurm_setup=[f"export PYTHONPATH={REPO_ROOT}:$PYTHONPATH"])
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
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), saved) if p)
        try:  # local jobs inherit the environment at submission, so they can import the repo
            jobs = ex.map_array(_run_one, specs, [Path(out).resolve()] * n, [data_root] * n, [device] * n,
                                [self.options] * n, [self.plugins] * n)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        job_id = jobs[0].job_id.split("_")[0]
        print(f"submitted {n} runs as {ex.cluster} job {job_id}; logs in {Path(out) / 'submitit'}", file=sys.stderr)
        records = []
        for spec, job in tqdm(list(zip(specs, jobs)), desc="runs", unit="run", disable=None):
            try:
                rec = job.result()
            except Exception as err:  # a lost or crashed job fails its run only
                rec = _lost(spec, err)
            _report(spec, rec)
            records.append(rec)
        return records
