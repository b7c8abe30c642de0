"""The local launcher's worker processes: each serves runs from a pipe, in its own process group,
and dies with the sweep (``benchmark.run.interrupt``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Any

from benchmark.core.spec import RunSpec
from benchmark.registry import load_plugins
from benchmark.run.interrupt import (
    become_worker,
    exit_status,
    kill_group,
    signals_blocked,
    watch_parent,
)
from benchmark.run.runner import execute


def _lost(spec: RunSpec, err: BaseException | str) -> dict[str, Any]:
    """A failed record for a run whose process never reported (kept in memory for the summary)."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    tb = "" if isinstance(err, str) else "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {
        "spec": spec.as_dict(),
        "hash": spec.hash,
        "status": "failed",
        "skipped": False,
        "error": f"run did not report back: {text}",
        "traceback": tb,
    }


def _worker_main(conn, plugins: list[str], threads: int, parent: int) -> None:
    """A ``--launcher local`` worker: runs the specs the sweep sends until it sends None or goes away.

    Started with the stop signals blocked; it moves to its own process group and watches its
    parent (``benchmark.run.interrupt``). Stopped by SIGTERM, it exits quietly: the run under way
    has removed its partial files as ``execute`` unwound. It leaves by ``os._exit`` (after
    flushing its output): its records are on disk and sent, and the interpreter's teardown of
    torch and friends takes seconds on a busy machine.
    """
    status = 0
    try:
        watch_parent(parent)
        become_worker(own_group=True, sigint=True)
        _serve(conn, plugins, threads)
    except KeyboardInterrupt as err:
        status = exit_status(err)
    except BaseException:  # a bug: say where (its run is reported lost by the sweep)
        traceback.print_exc()
        status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _serve(conn, plugins: list[str], threads: int) -> None:
    init_error = None
    try:  # share the CPU cores fairly; register plugin methods
        import torch
        from tqdm import tqdm

        torch.set_num_threads(threads)
        # A thread lock for the progress bars: tqdm's default one holds a multiprocessing
        # semaphore, which the worker's os._exit leaves for the resource tracker to warn about.
        tqdm.set_lock(threading.RLock())
        load_plugins(plugins)
    except Exception as err:  # reported with every run it is sent, never a silent hang
        init_error = f"{type(err).__name__}: {err}"
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the sweep is gone
            return
        if task is None:
            return
        i, spec, out, data_root, device, options = task
        if init_error is not None:
            rec = _lost(spec, f"the worker could not start: {init_error}")
        else:
            try:
                rec = execute(spec, out, data_root=data_root, device=device, **options)
            except Exception as err:
                rec = _lost(spec, err)
        conn.send((i, rec))


class _Worker:
    """One worker process of the local pool, its end of the pipe, and the run it holds (index or None)."""

    def __init__(self, ctx, plugins: list[str], threads: int):
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(theirs, plugins, threads, os.getpid()), name="clipbench-worker"
        )
        with signals_blocked():  # the child inherits the mask: no signal reaches it before it is ready
            self.proc.start()
        theirs.close()
        self.task: int | None = None

    def send(self, task) -> bool:
        try:
            self.conn.send(task)
            return True
        except (OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.proc.is_alive()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group; SIGTERM becomes SIGKILL while it is still starting.

        A worker leads its own group once ``become_worker`` ran; before that it is importing, has
        written nothing, and would see SIGTERM only after its imports.
        """
        if not self.alive():
            return
        try:
            ready = os.getpgid(self.proc.pid) == self.proc.pid
        except OSError:
            return
        kill_group(self.proc.pid, sig if ready else signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"
