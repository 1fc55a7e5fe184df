"""Worker processes that end with the run: seeds in parallel (``--jobs``) and the rbf experiment's ``workers``.

A run's worker processes end with it. A Ctrl-C at the terminal reaches every process of its group, but only the
parent acts on it: the workers ignore SIGINT from their first instruction (they are started with it blocked, as
CPython starts its resource tracker, so that not even their imports see it: a worker importing torch would print
a traceback). The parent then stops them with SIGTERM, on which a worker unwinds the task it runs (its cleanups,
such as removing a temporary file, run) and exits at once and silently. The request is raised in the task once:
a second SIGTERM (the executor signals the workers again as soon as one of them has ended) must not cut the
cleanups short. A request that lands in a finalizer (``__del__``, a weakref callback, a generator closed by the
garbage collector), where Python prints an exception and drops it, is asked again until it unwinds the task. A
worker whose parent died (SIGKILL, a crash) stops itself the same way: a thread waits on multiprocessing's parent
sentinel, a pipe that the operating system closes however the parent ends. Unlike Linux's PR_SET_PDEATHSIG (tied
to the thread that started the worker, and unset during the worker's first seconds), it works on every platform
and cannot miss a parent that died while the worker was starting.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

#: seconds a worker asked to stop (SIGTERM) has to unwind its task before it is killed
STOP_GRACE_S = 10.0
#: exit status of a worker stopped by its parent, or orphaned (128 + SIGTERM, as the shell reports a SIGTERM)
_EXIT_STOPPED = 128 + signal.SIGTERM
#: what the workers are started with blocked (where the platform can block signals)
_BLOCKED_AT_START = {signal.SIGINT}


class _WorkerStopped(BaseException):
    """Raised in a worker's task when its parent stops it: unwinds the task, then the worker exits."""


#: seconds between the requests that a worker sends itself after a finalizer dropped one
_ASK_AGAIN_S = 0.02

#: whether this worker process is inside a task (when its stop request must unwind it)
_task_running = False
#: whether a stop request is unwinding the task (further requests wait: they would interrupt its cleanups)
_stop_unwinding = False
#: how many stop requests have been raised in this worker's task (those a finalizer dropped included)
_stops_raised = 0
#: the number of the stop request that a finalizer dropped last, and the event that says one was dropped
_last_dropped = 0
_stop_dropped_event = threading.Event()


def _stop_worker(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: unwind the running task, or exit at once between tasks."""
    global _stop_unwinding, _stops_raised, _last_dropped
    if not _task_running:
        os._exit(_EXIT_STOPPED)
    if _stop_unwinding:
        return  # already unwinding: a second request would cut its cleanups short
    if frame is not None and frame.f_code is _stop_dropped.__code__:
        # in the hook below, reporting another finalizer's error: raised there, the request would be dropped too
        _last_dropped = _stops_raised
        _stop_dropped_event.set()  # asked again by the thread once the hook has returned
        return
    _stop_unwinding = True
    _stops_raised += 1
    raise _WorkerStopped


def _stop_dropped(unraisable: Any) -> None:
    """A worker's ``sys.unraisablehook``: a stop request raised in a finalizer, which cannot propagate it, is asked
    again (by a thread: a signal sent from here could be handled in here) rather than printed and lost."""
    global _stop_unwinding, _last_dropped
    if not isinstance(unraisable.exc_value, _WorkerStopped):
        sys.__unraisablehook__(unraisable)
        return
    _last_dropped = _stops_raised
    _stop_dropped_event.set()  # (an event that only these two functions use: no lock the main thread could hold)
    _stop_unwinding = False  # last: no instruction of this hook can see the request that it lets through


def _ask_again_when_dropped() -> None:
    """In a worker's thread: after a finalizer dropped a stop request, send the main thread requests until one more
    has been raised (it unwinds the task, or is dropped and asked again in turn)."""
    while True:
        _stop_dropped_event.wait()
        _stop_dropped_event.clear()
        dropped = _last_dropped
        while _task_running and _stops_raised == dropped:
            if not _signal_main_thread():
                os._exit(_EXIT_STOPPED)
            time.sleep(_ASK_AGAIN_S)


def _signal_main_thread() -> bool:
    """SIGTERM to this process' main thread, whose blocking calls the signal interrupts; False where signals cannot
    be sent to a thread."""
    if not hasattr(signal, "pthread_kill"):
        return False
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    return True


def _run_task(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a worker, which exits once a stop request has unwound it, whatever the task made of the
    request (code run by a finalizer or ``__set_name__`` turns it into another error or drops it)."""
    global _task_running
    try:
        _task_running = True
        return function(*args)
    finally:
        _task_running = False
        if _stops_raised:
            os._exit(_EXIT_STOPPED)


def _stop_when_orphaned() -> None:
    """In a worker's thread: wait until the parent process ends, then stop as the parent would have stopped it."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    if _signal_main_thread():
        time.sleep(STOP_GRACE_S)
    os._exit(_EXIT_STOPPED)  # a main thread stuck in native code, or a task that swallowed the request


def _initialize_worker(threads: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also discards a Ctrl-C pending since the worker started
    signal.signal(signal.SIGTERM, _stop_worker)
    sys.unraisablehook = _stop_dropped
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_AT_START)
    threading.Thread(target=_stop_when_orphaned, name="stop-when-orphaned", daemon=True).start()
    threading.Thread(target=_ask_again_when_dropped, name="ask-again-when-dropped", daemon=True).start()
    if threads is not None:
        torch.set_num_threads(threads)
    # workers draw no progress bars; a thread lock spares them tqdm's inter-process one, a semaphore that a stopped
    # worker would leave behind (and the resource tracker report as leaked)
    tqdm.set_lock(threading.RLock())


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned worker that starts with :data:`_BLOCKED_AT_START` blocked (a signal mask survives exec)."""

    def start(self) -> None:
        if not hasattr(signal, "pthread_sigmask"):
            super().start()
            return
        # blocked, not ignored: a Ctrl-C meanwhile stays pending for this process, which handles it once unblocked
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_AT_START)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _WorkerContext(multiprocessing.context.SpawnContext):
    """The spawn start method with :class:`_WorkerProcess`es, each recorded, so that they can be stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[_WorkerProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> _WorkerProcess:  # the name pools call
        process = _WorkerProcess(*args, **kwargs)
        self.processes.append(process)
        return process


class WorkerPool:
    """Independent tasks in worker processes that end with this process.

    Workers are spawned (a fresh interpreter each: safe beside threads and torch's state). An error, Ctrl-C or
    SIGTERM in the ``with`` block stops them at once: the tasks not started are cancelled and the running ones
    unwound (their cleanups run), with no traceback from any worker; and a worker whose parent died stops itself.

    Args:
        workers: the number of worker processes.
        threads: torch CPU threads in each worker (None: torch's default).
    """

    def __init__(self, workers: int, *, threads: int | None = None) -> None:
        self._context = _WorkerContext()
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=self._context, initializer=_initialize_worker, initargs=(threads,)
        )

    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future:
        """Start ``function(*args)`` in a worker (``function`` and ``args`` must pickle); returns its future."""
        return self._executor.submit(_run_task, function, *args)

    def stop(self) -> None:
        """Cancel the tasks not started, ask the workers to stop, and kill those that have not within
        :data:`STOP_GRACE_S` seconds; returns when every worker has ended."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        workers = [process for process in self._context.processes if process.is_alive()]
        for process in workers:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *details: object) -> None:
        if error_type is None:
            self._executor.shutdown(wait=True)
        else:  # an error or an interrupt: the other tasks' results are of no use
            self.stop()
