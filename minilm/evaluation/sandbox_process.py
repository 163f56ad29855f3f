"""One sandbox's processes, seen from the evaluator: start them, talk to them, leave none behind.

    SandboxProcess(workdir, isolation, limits, timeout, job)   starts the launcher (sandbox_programs.py)
      .wait(deadline, stop)   feeds the job to the harness's stdin and drains its output until
                              the launcher exits (True), the deadline passes or `stop` is set
      .finish(stopped)        nothing of the sandbox runs any more; sets .duration, .verdict
                              (what came on the verdict pipe) and .output (what it printed)

Three pipes connect the evaluator and the harness: the job (the harness's stdin, which it reads
to the end and replaces with /dev/null), the output (stdout and stderr, of which OUTPUT_LIMIT
bytes are kept) and the verdict (an extra descriptor). Nothing is read from a file the program
could have replaced: a FIFO named like a verdict file once blocked the evaluator for good.
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
import threading
import time
from typing import Optional

from minilm.evaluation.isolation import SANDBOX_PYTHON, bwrap_command, unshare_command
from minilm.evaluation.sandbox_programs import LAUNCHER

OUTPUT_LIMIT = 8192  # bytes of the program's stdout/stderr kept in the result
VERDICT_LIMIT = 1 << 16  # the harness's longest verdict is well under a pipe's 64 KiB


def _processes_of_this_user() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def rlimits(limits, timeout: float) -> dict[str, int]:
    cpu = math.ceil(timeout) + 1  # CPU seconds can only fall short of wall seconds per process
    values = {"RLIMIT_CPU": cpu, "RLIMIT_AS": limits.memory_mb << 20,
              "RLIMIT_FSIZE": limits.file_size_mb << 20, "RLIMIT_NOFILE": limits.open_files,
              "RLIMIT_CORE": 0}
    if os.geteuid() != 0:  # RLIMIT_NPROC counts all of the user's processes and never binds root
        values["RLIMIT_NPROC"] = _processes_of_this_user() + limits.max_processes
    return values


def _command(workdir: str, isolation: str, limits, timeout: float) -> list[str]:
    # the folder in the harness's command line marks its processes, forked ones too (kill_marked)
    harness = [SANDBOX_PYTHON, "-I", "-B", os.path.join(workdir, "harness.py")]
    commands = {"bwrap": bwrap_command, "unshare": unshare_command, "limits": lambda _, argv: argv}
    config = {"rlimits": rlimits(limits, timeout), "argv": commands[isolation](workdir, harness),
              "parent": os.getpid(), "workdir": workdir, "deadline": math.ceil(timeout) + 2}
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


def _marked(workdir: bytes) -> list[int]:
    """Pids of the processes whose command line or environment (HOME, TMPDIR) names the folder."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            for name in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{entry}/{name}", "rb") as f:
                        if workdir in f.read():
                            found.append(int(entry))
                            break
                except OSError:
                    pass
    return found


def kill_marked(workdir: str, rounds: int = 20):
    """SIGKILL what of the sandbox outlived its launcher: a program at the "limits" level can kill
    the launcher, and a process that left the launcher's group (setsid) is then nobody's to kill."""
    for _ in range(rounds):  # again, until a pass finds none: a process may fork while we look
        pids = _marked(os.fsencode(workdir))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def remove_folder(workdir: str):
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


class _JobWriter:
    """Feeds the job to the harness's stdin as the pipe takes it, then closes the pipe (EOF)."""

    def __init__(self, pipe: int, job: bytes):
        self.pipe, self.left = pipe, memoryview(job)
        os.set_blocking(pipe, False)

    @property
    def open(self) -> bool:
        return self.pipe is not None

    def write(self) -> None:
        try:
            self.left = self.left[os.write(self.pipe, self.left):]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the sandbox ended before it read the job
            self.left = self.left[:0]
        if not self.left:
            self.close()

    def close(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None


class SandboxProcess:
    """The launcher and what runs below it, for one candidate in `workdir`."""

    def __init__(self, workdir: str, isolation: str, limits, timeout: float, job: dict):
        job_read, job_write = os.pipe()
        self.verdict_pipe, verdict_write = os.pipe()
        try:
            self.proc = subprocess.Popen(
                _command(workdir, isolation, limits, timeout), cwd=workdir,
                env=_environment(workdir), stdin=job_read, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, pass_fds=(verdict_write,), start_new_session=True)
        except BaseException:
            for fd in (job_write, self.verdict_pipe):
                os.close(fd)
            raise
        finally:  # the children hold these ends now
            os.close(job_read)
            os.close(verdict_write)
        self.workdir, self.started = workdir, time.monotonic()
        self.reader = _OutputReader(self.proc.stdout.fileno())
        self.writer = _JobWriter(job_write, json.dumps({**job, "verdict_fd": verdict_write}).encode())

    def exited(self) -> bool:
        """Whether the launcher has exited; it is left unreaped, so that its process group id
        cannot be reused before finish() kills the group."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def wait(self, deadline: float, stop: Optional[threading.Event] = None) -> bool:
        """Feed the job and read output until the launcher exits (True), the monotonic `deadline`
        passes or `stop` is set (False). Without pidfds (Linux < 5.3) it polls every 10 ms."""
        selector = selectors.DefaultSelector()
        selector.register(self.reader.pipe, selectors.EVENT_READ, "output")
        if self.writer.open:
            selector.register(self.writer.pipe, selectors.EVENT_WRITE, "job")
        try:
            pidfd = os.pidfd_open(self.proc.pid)
            selector.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pidfd = None
        try:
            while not self.exited():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                poll = remaining
                if pidfd is None:
                    poll = 0.01  # look for the exit every 10 ms
                elif stop is not None:
                    poll = 0.1  # look at `stop` every 100 ms
                for key, _ in selector.select(min(remaining, poll)):
                    if key.data == "output":
                        self.reader.read()
                        if not self.reader.open:
                            selector.unregister(self.reader.pipe)
                    elif key.data == "job":
                        selector.unregister(self.writer.pipe)
                        self.writer.write()
                        if self.writer.open:
                            selector.register(self.writer.pipe, selectors.EVENT_WRITE, "job")
            return True
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)

    def finish(self, stopped: bool) -> None:
        """Make sure nothing of the sandbox runs, then read what it left. `stopped`: the launcher
        did not exit by itself, and is told to kill what runs below it (SIGTERM)."""
        self.duration = time.monotonic() - self.started
        try:
            if stopped:
                self.proc.send_signal(signal.SIGTERM)
                self.wait(time.monotonic() + 2.0)
        finally:
            self.writer.close()
            _kill_group(self.proc.pid)  # backstop: whatever is left of the group
            self.proc.wait()  # reap the leader, then make sure its group is gone too
            _kill_group(self.proc.pid, wait=1.0)
            if self.proc.returncode < 0:  # the launcher was killed: its clean-up never ran
                kill_marked(self.workdir)
            self.reader.read(max_reads=256)  # what was written just before the end (16 MiB at most)
            self.proc.stdout.close()
            self.output = self.reader.text()
            self.verdict = self._read_verdict_pipe()

    def _read_verdict_pipe(self) -> bytes:
        os.set_blocking(self.verdict_pipe, False)
        try:
            return os.read(self.verdict_pipe, VERDICT_LIMIT)
        except BlockingIOError:
            return b""
        finally:
            os.close(self.verdict_pipe)
