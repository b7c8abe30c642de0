"""Stopping a sweep: signals, the stop line, and workers that never outlive their sweep.

The sweep's process (``run_bench.py``) turns its first SIGINT or SIGTERM into :class:`Interrupted`
(a ``KeyboardInterrupt``) in its main thread; later signals only ask the stop to hurry (workers
get SIGKILL instead of a grace period). Every launcher catches it, stops submitting, stops its
workers, makes sure no run it started has left a partial record (``runner.discard_partial``), and
raises :class:`SweepStopped`, which the command line prints as one line
(``stopped: N done, M not started; rerun the same command to resume``) and exits ``128 + signal``
(130 for SIGINT, 143 for SIGTERM).

Workers (``--launcher local``, and the jobs of ``--launcher slurm --slurm-cluster local``):

- start with SIGINT and SIGTERM blocked (the mask is inherited through fork and exec), so a
  signal that arrives before they are ready waits instead of killing them half-initialised;
- ``--launcher local`` workers move to their own process group, so a terminal's Ctrl-C reaches
  only the sweep, which then stops them itself (no traceback from every worker);
- on SIGTERM (or SIGINT sent to them directly) they raise :class:`Interrupted`, so temporary
  files are removed as the stack unwinds, and a timer ends them with ``os._exit`` after
  :data:`WORKER_GRACE` seconds should a long native call keep them from unwinding;
- never outlive the sweep: on Linux the kernel sends them SIGTERM when the sweep dies, even by
  SIGKILL (``prctl(PR_SET_PDEATHSIG)`` through ctypes, set after exec, then a check that the
  parent is still the one that started them, closing the race); elsewhere a daemon thread polls
  the parent's pid. Local submitit jobs are not children of the sweep (submitit puts a
  controller process between them), so they poll the sweep's pid instead.

PDEATHSIG rather than a watchdog pipe: it needs no thread and no extra file descriptor, works
while the worker is deep in native code, and fires on any death of the parent; its one caveat,
that it follows the *thread* that started the child, does not apply because workers are only
ever started from the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKER_GRACE = 5.0
"""Seconds a signalled worker has to unwind before it ends itself with ``os._exit``."""
PARENT_GRACE = WORKER_GRACE + 3.0
"""Seconds the sweep waits for signalled workers before it sends SIGKILL."""
PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT or SIGTERM) turned into an exception; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class SweepStopped(Exception):
    """A sweep stopped before its end: by a signal, or by a condition that would fail every later run.

    ``done`` runs have a record (of any status), ``not_started`` have none (runs interrupted
    mid-way left nothing and count here). ``status`` is the exit status, ``reason`` a message
    printed before the stop line (None for a signal).
    """

    def __init__(self, done: int, not_started: int, status: int, reason: str | None = None):
        super().__init__(reason or f"stopped by signal {status - 128}")
        self.done, self.not_started, self.status, self.reason = done, not_started, status, reason

    def line(self) -> str:
        return f"stopped: {self.done} done, {self.not_started} not started; rerun the same command to resume"


def exit_status(err: BaseException) -> int:
    """128 + the signal's number for :class:`Interrupted` (130 for a plain ``KeyboardInterrupt``)."""
    return 128 + getattr(err, "signum", int(signal.SIGINT))


class _Stopping:
    """What the sweep's signal handler knows: whether a stop is under way and whether to hurry it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hurry = threading.Event()
        self.defer = 0
        self.pending: int | None = None

    def handle(self, signum: int, frame) -> None:
        if self.signum is None and self.defer:
            self.pending = self.pending or signum  # raised when the critical section ends
        elif self.signum is None:
            self.signum = signum
            raise Interrupted(signum)
        else:
            self.hurry.set()  # a second signal: no more grace periods, and no second exception mid-cleanup


STOPPING: _Stopping | None = None
"""The stop state of the sweep in this process while :func:`stop_on_signals` is active."""


def hurry() -> bool:
    """True when a second stop signal asked the current stop to skip its grace periods."""
    return STOPPING is not None and STOPPING.hurry.is_set()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread.

    Outside the main thread (signal handlers cannot be set there) it does nothing. The previous
    handlers are restored on exit, so a test calling ``main()`` leaves its process as it was.
    """
    global STOPPING
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state, saved = _Stopping(), {}
    for sig in STOP_SIGNALS:
        saved[sig] = signal.signal(sig, state.handle)
    previous, STOPPING = STOPPING, state
    try:
        yield
    finally:
        STOPPING = previous
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A critical section of the sweep (starting a process and recording it): a stop signal that
    arrives meanwhile raises :class:`Interrupted` when it ends, not in the middle."""
    state = STOPPING
    if state is None:
        yield
        return
    state.defer += 1
    try:
        yield
    finally:
        state.defer -= 1
        if not state.defer and state.pending is not None and state.signum is None:
            state.signum, state.pending = state.pending, None
            raise Interrupted(state.signum)


@contextlib.contextmanager
def signals_blocked(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Block ``signals`` (default SIGINT and SIGTERM) in this thread; children started meanwhile inherit the mask.

    A signal that arrives meanwhile is delivered when the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_handler(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    timer = threading.Timer(WORKER_GRACE, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()
    raise Interrupted(signum)


def become_worker(own_group: bool, sigint: bool = True) -> None:
    """Set up a worker process that was started with the stop signals blocked, then unblock them.

    ``own_group`` moves it to a process group of its own; ``sigint`` also lets SIGINT stop it
    (otherwise SIGINT stays blocked: a local submitit job shares the terminal's process group).
    Call :func:`watch_parent` or :func:`watch_sweep` first.
    """
    if own_group:
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, _worker_handler)
    if sigint:
        signal.signal(signal.SIGINT, _worker_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS if sigint else (signal.SIGTERM,))


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _poll(gone, interval: float) -> None:
    while not gone():
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` (the process that started it) dies."""
    if _set_pdeathsig(signal.SIGTERM):
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_poll, args=(lambda: os.getppid() != parent, 0.5), daemon=True).start()


def watch_sweep(pid: int, interval: float = 0.5) -> None:
    """SIGTERM this process when the sweep ``pid`` (not its parent) is gone: polled in a daemon thread."""
    threading.Thread(target=_poll, args=(lambda: not _alive(pid), interval), daemon=True).start()


def kill_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (the process alone when it leads none)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def descendants(pid: int) -> list[int]:
    """The pids of every living descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found
