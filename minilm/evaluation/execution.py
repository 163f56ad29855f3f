"""Run generated code against its tests, without letting it hurt the machine that evaluates it,
and without letting it report "passed" unless its tests held.

A candidate program is untrusted: a model can write an infinite loop, a fork, a 30 GB list or an
`os.remove`, and a model trained on our verdicts learns whatever earns "passed". Each candidate
runs like this, at the strongest isolation level the machine offers (isolation.py):

    evaluator --Popen--> launcher --exec--> bwrap (namespaces) ------------> python -I harness.py
                         (rlimits,   \\----> unshare (namespaces) -> init --> python -I harness.py
                          subreaper)  \\---> python -I harness.py               ("limits": neither)

- a fresh temporary directory, removed afterwards (also when the run is interrupted, and by the
  launcher when the evaluator dies), is the only place it may write;
- resource limits (setrlimit): CPU seconds, address space, file size, open files, processes;
- a launcher that is a child subreaper: when the program ends, the wall-clock timeout passes or
  the evaluator dies, it kills and reaps every descendant, even those that left the process
  group; the evaluator then kills the launcher's process group as a backstop, and every process
  that names the folder if the launcher itself was killed (sandbox_process.py);
- a minimal environment, the job on stdin (then /dev/null), no other inherited descriptor but
  the verdict pipe, output read through a pipe and capped (printing megabytes costs nothing);
- "bwrap" and "unshare": namespaces (no network, no other process visible, a read-only
  filesystem, no capabilities); "limits" (neither works): the rlimits, the launcher and a warning;
- the harness (harness.py) runs the program and then each test in one namespace. Only it can
  report "passed": with a secret the program cannot read, written to the verdict pipe only after
  every test returned. Its audit hooks keep the secret out of reach and, with guard=True, refuse
  writes outside the folder, signals to other processes, new processes and sockets: a guard
  against accidents, not a security boundary.

docs/sandbox.md says what each level and layer does and does not protect against, and what a
determined program can still do to the verdict.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from minilm.evaluation.harness import HARNESS
from minilm.evaluation.isolation import (ISOLATIONS, available_isolations, isolation_problem,
                                         resolve_isolation)
from minilm.evaluation.sandbox_process import OUTPUT_LIMIT, SandboxProcess, remove_folder

__all__ = ["ExecutionResult", "ISOLATIONS", "Limits", "NO_TESTS", "OUTPUT_LIMIT", "STATUSES",
           "Stopped", "available_isolations", "isolation_problem", "resolve_isolation",
           "run_program", "run_programs"]

STATUSES = ("passed", "failed", "timeout", "crashed", "syntax_error")
NO_TESTS = "no tests to run: a program passes only by passing its tests"
# RLIMIT_CPU's signal, and the launcher's own deadline (should the evaluator hang)
TIME_LIMIT_SIGNALS = {signal.SIGXCPU: "CPU", signal.SIGALRM: "wall-clock"}


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


class Stopped(Exception):
    """A run given up because run_programs is stopping (Ctrl-C, or another run's error)."""


def _read_verdict(data: bytes, secret: bytes) -> Optional[dict]:
    """The harness's verdict: the secret alone means "passed"; any other status comes as JSON,
    which anyone holding the pipe could have written, so "passed" in JSON counts for nothing."""
    if data.startswith(secret):
        return {"status": "passed", "detail": ""}
    try:
        verdict = json.loads(data)
        if verdict["status"] in STATUSES and verdict["status"] != "passed":
            return {"status": verdict["status"], "detail": str(verdict.get("detail", ""))}
    except (ValueError, TypeError, KeyError):
        pass
    return None


def _classify(timed_out: bool, verdict: Optional[dict], returncode: int, timeout: float):
    if verdict is not None:  # the harness finished: its verdict stands even at the deadline
        return verdict["status"], verdict["detail"]
    if timed_out:
        return "timeout", f"still running after the {timeout:g} s wall-clock limit"
    if returncode < 0 or returncode > 128:  # a signal: -N for the launcher, 128 + N below it
        number = -returncode if returncode < 0 else returncode - 128
        if number in TIME_LIMIT_SIGNALS:
            return "timeout", f"exceeded the {TIME_LIMIT_SIGNALS[number]} time limit"
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


def _run(source: str, tests: Union[str, Sequence[str]], timeout: float, isolation: str,
         limits: Limits, guard: bool, stop: Optional[threading.Event]) -> ExecutionResult:
    """run_program, which gives up (Stopped) as soon as `stop` is set."""
    if not isinstance(source, str):
        raise TypeError(f"source is a {type(source).__name__}; give the program as a string")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    tests = _check_tests(tests)
    isolation = resolve_isolation(isolation)
    secret = secrets.token_hex(16)  # a fresh one per run: a verdict cannot be replayed
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="minilm-exec-"))
    try:
        for name, text in (("candidate.py", source), ("harness.py", HARNESS)):
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(text)
        sandbox = SandboxProcess(workdir, isolation, limits, timeout,
                                 {"tests": tests, "guard": guard, "secret": secret})
        exited = False
        try:
            exited = sandbox.wait(sandbox.started + timeout, stop)
        finally:
            sandbox.finish(stopped=not exited)
        if stop is not None and stop.is_set():
            raise Stopped("run_programs is stopping")
        verdict = _read_verdict(sandbox.verdict, secret.encode())
        status, detail = _classify(not exited, verdict, sandbox.proc.returncode, timeout)
    finally:
        remove_folder(workdir)
    if status == "passed" and not any(text.strip() for text in tests):
        status, detail = "failed", NO_TESTS
    return ExecutionResult(status, detail, sandbox.output, sandbox.duration, isolation)


def run_program(source: str, tests: Union[str, Sequence[str]] = (), timeout: float = 3.0, *,
                isolation: str = "auto", limits: Limits = Limits(), guard: bool = True) -> ExecutionResult:
    """Run `source`, then each test statement (e.g. "assert add(1, 2) == 3"), in a sandbox.

    timeout is wall-clock seconds for the whole process. Without a test (none, or only blank ones)
    a program cannot pass: what would be "passed" is "failed" (NO_TESTS). guard=False leaves out
    the audit hook that guards against accidents, leaving the OS-level isolation (the tests use
    it to show that layer alone); the hooks that protect the verdict stay.
    """
    return _run(source, tests, timeout, isolation, limits, guard, stop=None)


def run_programs(jobs: Iterable[tuple[str, Union[str, Sequence[str]]]], timeout: float = 3.0, *,
                 workers: Optional[int] = None, isolation: str = "auto", limits: Limits = Limits(),
                 guard: bool = True) -> list[ExecutionResult]:
    """run_program on each (source, tests), `workers` at a time; results in the order of jobs.

    On an exception here (Ctrl-C) or in a run, the queued runs are dropped and the running ones
    stop within a tenth of a second, each removing its folder, before the exception goes on."""
    jobs = list(jobs)
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run, source, tests, timeout, isolation, limits, guard, stop)
                   for source, tests in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
