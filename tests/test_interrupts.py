"""Interrupting a run that has worker processes (``--jobs``, rbf's ``workers``) ends it as cleanly as a run in one
process: one line, exit status 130, no traceback from any process, no worker left running, nothing half-written;
and workers do not outlive a parent that was killed. The runs are real ``splitgrow`` processes, signalled from here
(Linux: the processes are found in /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitgrow.experiments.workers import WorkerPool

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finds processes in /proc (Linux)")

INTERRUPTED = "splitgrow: interrupted; finished seeds are in their folders, --resume continues"

#: seeds that run far longer than any test waits (every run here is interrupted), in as little memory as can be
ENDLESS_RBF = [
    "num_samples=20",
    "max_neurons=2",
    "iterations_per_step=100000000",
    "probe_neurons=2",
    "probe_count=1",
    "probe_iterations=0",
    "angle_steps=1",
    "curve_neurons=[2]",
    "record_every=10000000",
]

#: ``--jobs``: two seeds, each in a worker; rbf's ``workers``: one seed, its scratch network in a worker at once
RUNS = {
    "jobs": ["--jobs", "2", "--seeds", "2", "--set", "methods=[splitting]"],
    "workers": ["--set", "workers=2", "--set", "methods=[splitting,scratch]"],
}
WORKERS_AT_START = {"jobs": 2, "workers": 1}

#: generous bounds for a loaded 2-core machine; the tests wait for events, never for a time
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 60.0
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)
#: CPU seconds after which a starting worker is importing torch's Python modules (see _importing_torch)
IMPORTING_TORCH_CPU_S = 2.5


def _status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status ({} once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and waiting to be reaped, does not)."""
    return _status(pid).get("State", "Z").split()[0] != "Z"


def _workers(parent: int) -> list[int]:
    """The multiprocessing workers that ``parent`` started (the resource tracker aside)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _status(int(entry.name)).get("PPid") == str(parent):
            try:
                if b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` has used (user and system); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _importing_torch(workers: list[int]) -> bool:
    """Whether every worker is well into its start-up, in the Python modules of torch (a worker spends about
    3.5 CPU seconds starting, and half a second before it reaches them)."""
    return all(_cpu_seconds(pid) >= IMPORTING_TORCH_CPU_S for pid in workers)


def _running_tasks(workers: list[int]) -> bool:
    """Whether every worker is past its start-up, ready for or running its task (it handles SIGTERM by then)."""
    return all(int(_status(pid).get("SigCgt", "0"), 16) & SIGTERM_BIT for pid in workers)


class _Run:
    """A ``splitgrow run rbf`` in a session of its own (as a terminal's job), its stderr in a file."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        tmp_path.mkdir()
        self.out = tmp_path / "out"
        self.stderr_path = tmp_path / "stderr.txt"
        command = [sys.executable, "-m", "splitgrow", "run", "rbf", "--out", str(self.out), "-q", *RUNS[kind]]
        for setting in ENDLESS_RBF:
            command += ["--set", setting]
        with self.stderr_path.open("w") as stderr:  # a file: workers that outlive the parent would hold a pipe open
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        self.workers: list[int] = []
        self.expected_workers = WORKERS_AT_START[kind]

    def wait_for_workers(self) -> list[int]:
        """The workers' PIDs, once they have all been started."""
        started = _wait_until(lambda: len(_workers(self.process.pid)) >= self.expected_workers, START_TIMEOUT_S)
        assert started and self.process.poll() is None, self.stderr()
        self.workers = _workers(self.process.pid)
        return self.workers

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {EXIT_TIMEOUT_S:.0f} s of the signal:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        """Kill whatever of this run still runs, whatever the test found."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_run(tmp_path):
    runs = []

    def start(kind: str) -> _Run:
        runs.append(_Run(tmp_path / kind, kind))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def assert_interrupted_cleanly(run: _Run) -> None:
    stderr = run.stderr()
    assert run.process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr  # (a resource tracker's leak warning)
    assert [line for line in stderr.splitlines() if line.startswith("splitgrow:")] == [INTERRUPTED], stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED
    assert not [pid for pid in run.workers if _alive(pid)], "workers outlived the run"
    files = list(run.out.rglob("*")) if run.out.exists() else []
    assert not [path for path in files if path.name.endswith(".tmp")], files
    assert not [path for path in files if path.name.startswith("seed-") and not (path / "results.json").is_file()]


def test_ctrl_c_while_workers_start_ends_every_process_quietly(start_run):
    # Ctrl-C at a terminal signals the whole job; the workers are importing torch, where a traceback came from.
    # (rbf's own workers share the pool: the test that kills their parent starts them.)
    run = start_run("jobs")
    workers = run.wait_for_workers()
    _wait_until(lambda: _importing_torch(workers), START_TIMEOUT_S)
    os.killpg(run.process.pid, signal.SIGINT)
    run.wait()
    assert_interrupted_cleanly(run)


def test_sigterm_to_the_parent_stops_its_running_workers(start_run):
    # `kill PID` signals the parent alone: it must stop its workers rather than wait for their seeds to end
    run = start_run("jobs")
    workers = run.wait_for_workers()
    assert _wait_until(lambda: _running_tasks(workers), START_TIMEOUT_S), run.stderr()
    run.process.send_signal(signal.SIGTERM)
    run.wait()
    assert_interrupted_cleanly(run)


def test_workers_do_not_outlive_a_killed_parent(start_run):
    run = start_run("workers")
    workers = run.wait_for_workers()
    assert _wait_until(lambda: _running_tasks(workers), START_TIMEOUT_S), run.stderr()
    run.process.kill()
    run.process.wait()
    ended = _wait_until(lambda: not any(_alive(pid) for pid in workers), EXIT_TIMEOUT_S)
    assert ended, f"workers {[pid for pid in workers if _alive(pid)]} still run after their parent was killed"


def _write_until_stopped(folder: str, cleanup_s: float = 0.0) -> None:
    """A task that, like a checkpoint write, must clean up when it is stopped part-way (in ``cleanup_s`` seconds)."""
    partial = Path(folder) / "partial.tmp"
    partial.touch()
    try:
        while True:
            time.sleep(0.01)
    finally:
        time.sleep(cleanup_s)
        partial.rename(Path(folder) / "cleaned-up")


class _Lingering:
    """An object whose finalizer takes a while, as a progress bar's or a generator's may."""

    def __del__(self) -> None:
        time.sleep(0.001)


def _write_in_finalizers_until_stopped(folder: str) -> None:
    """:func:`_write_until_stopped`, with the main thread in finalizers most of the time (where Python drops an
    exception raised by a signal handler)."""
    partial = Path(folder) / "partial.tmp"
    partial.touch()
    try:
        while True:
            _Lingering()
            time.sleep(0.0001)
    finally:
        partial.rename(Path(folder) / "cleaned-up")


def _quick() -> int:
    return 1


def test_a_stopped_task_unwinds_before_its_worker_ends(tmp_path):
    with pytest.raises(KeyboardInterrupt), WorkerPool(1) as pool:
        future = pool.submit(_write_until_stopped, str(tmp_path))
        assert _wait_until(lambda: (tmp_path / "partial.tmp").exists() or future.done(), START_TIMEOUT_S)
        raise KeyboardInterrupt  # as Ctrl-C in the parent does
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cleaned-up"]


def test_a_second_stop_request_does_not_cut_a_cleanup_short(tmp_path):
    # The other worker, between tasks, exits at once on the stop; the executor then signals the remaining workers
    # again, while this task runs its cleanup.
    with pytest.raises(KeyboardInterrupt), WorkerPool(2) as pool:
        pool.submit(_write_until_stopped, str(tmp_path), 0.5)
        assert pool.submit(_quick).result(timeout=START_TIMEOUT_S) == 1  # (in the other worker: this one is busy)
        assert _wait_until(lambda: (tmp_path / "partial.tmp").exists(), START_TIMEOUT_S)
        raise KeyboardInterrupt
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cleaned-up"]


def test_a_stop_request_that_a_finalizer_drops_is_asked_again(tmp_path, capfd):
    # Python prints an exception raised in a finalizer and goes on: the stop must reach the task all the same
    with pytest.raises(KeyboardInterrupt), WorkerPool(1) as pool:
        future = pool.submit(_write_in_finalizers_until_stopped, str(tmp_path))
        assert _wait_until(lambda: (tmp_path / "partial.tmp").exists() or future.done(), START_TIMEOUT_S)
        raise KeyboardInterrupt
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cleaned-up"]  # unwound, not killed after a grace
    assert "Traceback" not in capfd.readouterr().err
