"""Run generated code against its tests, without letting it hurt the machine that evaluates it.

A candidate program is untrusted: a model can write an infinite loop, a fork, a 30 GB list or an
`os.remove`. Each candidate runs like this, at the strongest isolation level the machine offers:

    evaluator --Popen--> launcher --exec--> bwrap (namespaces) ------------> python -I harness.py
                         (rlimits,   \\----> unshare (namespaces) -> init --> python -I harness.py
                          subreaper)  \\---> python -I harness.py               ("limits": neither)

- a fresh temporary directory, removed afterwards, is the only place it may write;
- resource limits (setrlimit): CPU seconds, address space, file size, open files, processes;
- a launcher process that is a child subreaper: when the program ends or the wall-clock timeout
  passes, it kills and reaps every descendant, even those that left the process group; the
  evaluator then kills the launcher's process group as a backstop (no orphans, no zombies);
- a minimal environment, stdin from /dev/null, no inherited file descriptors, output read
  through a pipe and capped (printing megabytes costs nothing but the time);
- "bwrap" (bubblewrap installed): a read-only view of the filesystem and /proc, a private /tmp
  and /run, a minimal /dev, no capabilities (even when root starts it), no network, its own PID
  namespace (nothing outside is visible or killable) and --die-with-parent;
- "unshare" (no bubblewrap, but user namespaces allowed: util-linux's `unshare` and Linux 5.12+):
  the same namespaces, and NAMESPACE_INIT (minilm/evaluation/sandbox_programs.py) makes the mounts: every
  mount read-only, fresh tmpfs on /tmp, /dev/shm and /run, a /dev with null, zero, full, random,
  urandom only, the directory writable; then it gives up every capability (a nested user
  namespace that locks those mounts), starts the harness and waits as the PID namespace's init;
- "limits" (neither works): the rlimits, the launcher, and a loud warning;
- in all, an audit hook (PEP 578) in the harness refuses writes outside the directory, signals
  to other processes, fork/exec/subprocess, sockets and ctypes: a guard against accidents, not a
  security boundary (a C entry point that raises no audit event gets past it). docs/sandbox.md
  says what each level and layer does and does not protect against.

Any level but "bwrap" warns once, naming the level that runs and how to get the strongest one.
The harness reports a verdict through a file in the directory; a program that dies, exits or
closes its output before the tests finish has no verdict and is reported "crashed".
"""
from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from minilm.evaluation.isolation import (ISOLATIONS, SANDBOX_PYTHON, available_isolations,  # noqa: F401
                                         bwrap_command, isolation_problem, resolve_isolation,
                                         unshare_command)
from minilm.evaluation.sandbox_programs import HARNESS, LAUNCHER

STATUSES = ("passed", "failed", "timeout", "crashed", "syntax_error")
OUTPUT_LIMIT = 8192  # bytes of the program's stdout/stderr kept in the result


@dataclass(frozen=True)
class Limits:
    """Resource limits of one candidate (each process it starts gets the same rlimits)."""
    memory_mb: int = 1024  # address space (RLIMIT_AS): a 30 GB allocation fails with MemoryError
    file_size_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 256  # RLIMIT_NOFILE
    max_processes: int = 64  # RLIMIT_NPROC above the user's current count; root is exempt (see docs)


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # one of STATUSES
    detail: str = ""  # the failing assertion, the exception, the signal, the limit hit
    output: str = ""  # the start of what the program printed (OUTPUT_LIMIT bytes at most)
    duration: float = 0.0  # wall-clock seconds, start of the process to its end
    isolation: str = ""  # one of ISOLATIONS

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ---------------------------------------------------------------- the programs that run
# LAUNCHER and HARNESS live in minilm/evaluation/sandbox_programs.py (source text run in the child);
# the isolation levels' commands in minilm/evaluation/isolation.py.



def _processes_of_this_user() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _rlimits(limits: Limits, timeout: float) -> dict[str, int]:
    cpu = math.ceil(timeout) + 1  # CPU seconds can only fall short of wall seconds per process
    rlimits = {"RLIMIT_CPU": cpu, "RLIMIT_AS": limits.memory_mb << 20,
               "RLIMIT_FSIZE": limits.file_size_mb << 20, "RLIMIT_NOFILE": limits.open_files,
               "RLIMIT_CORE": 0}
    if os.geteuid() != 0:  # RLIMIT_NPROC counts all of the user's processes and never binds root
        rlimits["RLIMIT_NPROC"] = _processes_of_this_user() + limits.max_processes
    return rlimits


def _command(workdir: str, isolation: str, limits: Limits, timeout: float) -> list[str]:
    harness = [SANDBOX_PYTHON, "-I", "-B", "harness.py"]
    commands = {"bwrap": bwrap_command, "unshare": unshare_command, "limits": lambda _, argv: argv}
    inner = commands[isolation](workdir, harness)
    config = {"rlimits": _rlimits(limits, timeout), "argv": inner}
    return [sys.executable, "-I", "-S", "-B", "-c", LAUNCHER, json.dumps(config)]


def _environment(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
            "LANG": "C.UTF-8"}


def _kill_group(pgid: int, wait: float = 0.0):
    """SIGKILL every process in the group; with wait > 0, repeat until the group is empty.

    Killed processes exit asynchronously; a group stays non-empty until the last one is reaped.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _remove(workdir: str):
    def make_writable_and_retry(function, path, _):
        # a candidate may chmod 000 its own files; as a non-root user rmtree then needs this
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path):
            os.chmod(path, 0o700)
        function(path)
    shutil.rmtree(workdir, onerror=make_writable_and_retry)


class _OutputReader:
    """Keeps the first OUTPUT_LIMIT bytes the program writes to its pipe and counts the rest."""

    def __init__(self, pipe: int):
        self.pipe, self.kept, self.total, self.open = pipe, bytearray(), 0, True
        os.set_blocking(pipe, False)

    def read(self, max_reads: int = 1) -> None:
        for _ in range(max_reads):
            try:
                chunk = os.read(self.pipe, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:  # every writer closed its end
                self.open = False
                return
            self.total += len(chunk)
            self.kept += chunk[:max(0, OUTPUT_LIMIT - len(self.kept))]

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if self.total > len(self.kept):
            text += f"\n[... {self.total - len(self.kept)} more bytes of output dropped]"
        return text


def _wait(proc: subprocess.Popen, reader: _OutputReader, timeout: float) -> bool:
    """Read output until the process exits (True) or the deadline passes (False).

    The process is left unreaped, so its process group id cannot be reused before _kill_group.
    """
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(reader.pipe, selectors.EVENT_READ, "pipe")
    try:
        pidfd = os.pidfd_open(proc.pid)
        selector.register(pidfd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):  # pre-5.3 kernels: poll for the exit instead
        pidfd = None
    try:
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = remaining if pidfd is not None else min(remaining, 0.01)
            for key, _ in selector.select(wait):
                if key.data == "pipe":
                    reader.read()
                    if not reader.open:
                        selector.unregister(reader.pipe)
        return True
    finally:
        selector.close()
        if pidfd is not None:
            os.close(pidfd)


def _read_verdict(workdir: str) -> Optional[dict]:
    try:
        with open(os.path.join(workdir, "verdict.json"), "rb") as f:
            verdict = json.loads(f.read(1 << 16))
        return verdict if verdict.get("status") in STATUSES else None
    except (OSError, ValueError, AttributeError):
        return None


def _classify(timed_out: bool, verdict: Optional[dict], returncode: int, timeout: float):
    if verdict is not None:  # the harness finished: its verdict stands even at the deadline
        return verdict["status"], verdict["detail"]
    if timed_out:
        return "timeout", f"still running after the {timeout:g} s wall-clock limit"
    if returncode < 0 or returncode > 128:  # a signal: -N for the launcher, 128 + N below it
        number = -returncode if returncode < 0 else returncode - 128
        if number == signal.SIGXCPU:
            return "timeout", "exceeded the CPU time limit"
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return "crashed", f"killed by {name}"
    return "crashed", f"exited with code {returncode} before the tests finished"


def _check_tests(tests: Union[str, Sequence[str]]) -> list[str]:
    tests = [tests] if isinstance(tests, str) else list(tests)
    for i, text in enumerate(tests):
        if not isinstance(text, str):
            raise TypeError(f"test {i} is a {type(text).__name__}; give each test as a string of Python")
        try:
            compile(text, f"test_{i}", "exec")
        except SyntaxError as error:
            raise ValueError(f"test {i} is not valid Python ({error.msg}): {text[:80]!r}") from None
    return tests


def run_program(source: str, tests: Union[str, Sequence[str]] = (), timeout: float = 3.0, *,
                isolation: str = "auto", limits: Limits = Limits(), guard: bool = True) -> ExecutionResult:
    """Run `source`, then each test statement (e.g. "assert add(1, 2) == 3"), in a sandbox.

    timeout is wall-clock seconds for the whole process. guard=False leaves out the in-process
    audit hook, leaving only the OS-level isolation (the tests use it to show that layer alone).
    """
    if not isinstance(source, str):
        raise TypeError(f"source is a {type(source).__name__}; give the program as a string")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    tests = _check_tests(tests)
    isolation = resolve_isolation(isolation)
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="minilm-exec-"))
    try:
        for name, text in (("candidate.py", source), ("harness.py", HARNESS),
                           ("job.json", json.dumps({"tests": tests, "guard": guard}))):
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(text)
        start = time.monotonic()
        proc = subprocess.Popen(_command(workdir, isolation, limits, timeout), cwd=workdir,
                                env=_environment(workdir), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
        reader = _OutputReader(proc.stdout.fileno())
        try:
            timed_out = not _wait(proc, reader, timeout)
            duration = time.monotonic() - start
            if timed_out:  # the launcher kills and reaps what runs below it
                proc.send_signal(signal.SIGTERM)
                _wait(proc, reader, 2.0)
        finally:
            _kill_group(proc.pid)  # backstop: whatever is left of the group
            proc.wait()  # reap the leader, then make sure its group is gone too
            _kill_group(proc.pid, wait=1.0)
            reader.read(max_reads=256)  # what was written just before the end (16 MiB at most)
            proc.stdout.close()
        status, detail = _classify(timed_out, _read_verdict(workdir), proc.returncode, timeout)
    finally:
        _remove(workdir)
    return ExecutionResult(status, detail, reader.text(), duration, isolation)


def run_programs(jobs: Iterable[tuple[str, Union[str, Sequence[str]]]], timeout: float = 3.0, *,
                 workers: Optional[int] = None, **options) -> list[ExecutionResult]:
    """run_program on each (source, tests), `workers` at a time; results in the order of jobs."""
    jobs = list(jobs)
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_program(job[0], job[1], timeout, **options), jobs))
