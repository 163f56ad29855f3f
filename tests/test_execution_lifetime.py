"""Nothing of a sandbox outlives its run: not when the evaluator is killed, not when the run is
interrupted, not when the program kills the launcher that would have cleaned up after it."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from minilm.evaluation.execution import run_program
from minilm.evaluation.sandbox_process import SandboxProcess
from sandbox_helpers import ADD, ADD_TESTS, NAMESPACED, enter_marker_dir, processes_in, run_unaudited

pytestmark = pytest.mark.usefixtures("private_tempdir")

REPO = str(Path(__file__).resolve().parents[1])
SLEEPER = "import time\ntime.sleep(4248)\n"
# What "at once" may take on a loaded 2-core machine (bwrap teardown, interpreter exits): far
# below the sleeper's 4248 s, which an escaped or orphaned sandbox would run to.
PROMPTLY = 30


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def harnesses_under(root: Path) -> list[int]:
    """Pids of the harnesses (python -I -B <folder>/harness.py) whose folder is under root."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        harness = argv[3] if argv[1:3] == [b"-I", b"-B"] else b""
        if harness.startswith(bytes(root)) and harness.endswith(b"/harness.py"):
            found.append(int(entry))
    return found


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def start_evaluator(root: Path, code: str) -> subprocess.Popen:
    """A Python process that runs `code` with this checkout's minilm, its sandboxes under root."""
    env = {**os.environ, "PYTHONPATH": REPO, "TMPDIR": str(root)}
    # Ctrl-C as in a terminal: a shell without job control (nohup ... &, CI) starts its background
    # commands with SIGINT ignored, and the evaluator would inherit that
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_sandbox_dies_with_its_evaluator(isolation, tmp_path):
    # kill -9 of the evaluating process left the launcher, unshare and the harness running with
    # PPID 1: a program that sleeps never reaches its CPU limit
    root = tmp_path / "evaluator"
    root.mkdir()
    evaluator = start_evaluator(root, "from minilm.evaluation.execution import run_program\n"
                                      f"run_program({SLEEPER!r}, ['assert True'], timeout=60, "
                                      f"isolation={isolation!r})\n")
    try:
        assert wait_until(lambda: harnesses_under(root), 30), evaluator.stderr.read1().decode()
        evaluator.kill()
        evaluator.wait()
        assert wait_until(lambda: not processes_in(str(root)), PROMPTLY), "sandbox processes outlived it"
        assert wait_until(lambda: not list(root.iterdir()), PROMPTLY), "the sandbox's folder was left"
    finally:
        evaluator.kill()
        evaluator.wait()
        for pid in processes_in(str(root)):
            os.kill(pid, signal.SIGKILL)


def test_an_evaluator_and_launcher_both_killed_leave_only_the_folder(tmp_path):
    # docs/sandbox.md owns up to this: the launcher's child dies with it, but nobody is left to
    # remove the folder
    root = tmp_path / "evaluator"
    root.mkdir()
    evaluator = start_evaluator(root, "from minilm.evaluation.execution import run_program\n"
                                      f"run_program({SLEEPER!r}, ['assert True'], timeout=60)\n")
    try:
        assert wait_until(lambda: harnesses_under(root), 30), evaluator.stderr.read1().decode()
        launchers = [pid for pid in processes_in(str(root)) if parent_of(pid) == evaluator.pid]
        assert len(launchers) == 1
        for pid in (evaluator.pid, launchers[0]):
            os.kill(pid, signal.SIGKILL)
        evaluator.wait()
        assert wait_until(lambda: not processes_in(str(root)), PROMPTLY), "sandbox processes outlived it"
        assert [p.name[:12] for p in root.iterdir()] == ["minilm-exec-"]
    finally:
        evaluator.kill()
        evaluator.wait()
        for pid in processes_in(str(root)):
            os.kill(pid, signal.SIGKILL)


def test_a_daemon_that_kills_the_launcher_is_killed_too(isolation):
    # at the "limits" level the launcher is the program's parent: a daemon in a session of its
    # own (out of the launcher's process group), then the launcher killed, used to survive
    marker = f"daemon-{uuid.uuid4().hex}"
    source = (enter_marker_dir(marker) + "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
              "time.sleep(0.2)\nos.kill(os.getppid(), 9)\n" + ADD)
    result = run_program(source, ADD_TESTS, timeout=5, isolation=isolation, guard=False)
    assert result.status in ("passed", "crashed")  # the harness may die with the launcher
    assert processes_in(marker) == []


def test_a_daemon_started_around_the_audit_hook_that_kills_the_launcher_is_killed(isolation):
    # the same with the guard on: a process started by a C entry point the hook does not see
    marker = f"daemon-{uuid.uuid4().hex}"
    daemon = ("import os, time\n"
              "harness = os.getppid()\n"
              "launcher = int(open(f'/proc/{harness}/stat').read().rsplit(')', 1)[1].split()[1])\n"
              "os.setsid()\n"
              "if os.fork() == 0:\n    time.sleep(0.2)\n    os.kill(launcher, 9)\n    time.sleep(60)\n")
    source = enter_marker_dir(marker) + run_unaudited(daemon) + "time.sleep(2)\n" + ADD
    result = run_program(source, ADD_TESTS, timeout=5, isolation=isolation)
    assert result.status in ("passed", "crashed")
    assert processes_in(marker) == []


def processes_named(marker: str) -> list[int]:
    """Pids of the processes with marker among their arguments."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


def test_a_daemon_that_also_drops_the_folders_marks_outlives_a_killed_launcher(isolation):
    # what docs/sandbox.md owns up to at the "limits" level: the evaluator finds what outlived a
    # killed launcher by the folder's name in command lines and environments; a process started
    # around the hook that execs itself without them, elsewhere, is not found
    marker = f"daemon-{uuid.uuid4().hex}"
    daemon = ("import os, sys, time\n"
              "launcher = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])\n"
              "os.setsid()\nos.chdir('/')\n"
              "if os.fork() == 0:\n"
              "    os.execve(sys.executable, [sys.executable, '-c', 'import os, sys, time\\n'\n"
              "              f'time.sleep(0.2)\\nos.kill({launcher}, 9)\\ntime.sleep(30)', "
              f"{marker!r}], {{}})\n")
    result = run_program(run_unaudited(daemon) + "import time\ntime.sleep(2)\n" + ADD, ADD_TESTS,
                         timeout=5, isolation=isolation)
    survivors = processes_named(marker)
    try:
        assert result.status in ("passed", "crashed")
        assert bool(survivors) == (isolation not in NAMESPACED)  # a PID namespace leaves none
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


def test_the_launcher_stops_the_program_at_its_own_deadline_if_the_evaluator_hangs(tmp_path):
    # the launcher's alarm (timeout + 2 s, rounded up) is a wall-clock limit inside the sandbox
    root = tmp_path / "evaluator"
    root.mkdir()
    evaluator = start_evaluator(root, "from minilm.evaluation.execution import run_program\n"
                                      f"print(run_program({SLEEPER!r}, ['assert True'], timeout=1).status)\n")
    try:
        assert wait_until(lambda: harnesses_under(root), 30), evaluator.stderr.read1().decode()
        evaluator.send_signal(signal.SIGSTOP)  # a hung evaluator: it never stops the sandbox
        assert wait_until(lambda: not harnesses_under(root), PROMPTLY), "the harness outlived the deadline"
        evaluator.send_signal(signal.SIGCONT)
        assert evaluator.wait(timeout=PROMPTLY) == 0
        assert evaluator.stdout.read().decode().strip() == "timeout"
        assert not list(root.iterdir()), "the sandbox's folder was left"
    finally:
        evaluator.send_signal(signal.SIGCONT)
        evaluator.kill()
        evaluator.wait()
        for pid in processes_in(str(root)):
            os.kill(pid, signal.SIGKILL)


def test_an_interrupted_run_programs_stops_and_removes_every_folder(tmp_path):
    # Ctrl-C during an eval waited for every queued program, and a second one left
    # minilm-exec-* folders behind
    root = tmp_path / "evaluator"
    root.mkdir()
    evaluator = start_evaluator(root, "from minilm.evaluation.execution import run_programs\n"
                                      f"run_programs([({SLEEPER!r}, ['assert True'])] * 6, "
                                      "timeout=60, workers=2)\n")
    try:
        assert wait_until(lambda: len(harnesses_under(root)) == 2, 30), evaluator.stderr.read1().decode()
        evaluator.send_signal(signal.SIGINT)
        evaluator.wait(timeout=PROMPTLY)
        assert "KeyboardInterrupt" in evaluator.stderr.read().decode()
        assert processes_in(str(root)) == [] and list(root.iterdir()) == []
    finally:
        evaluator.kill()
        evaluator.wait()
        for pid in processes_in(str(root)):
            os.kill(pid, signal.SIGKILL)


def test_an_exception_while_a_program_runs_removes_its_folder(monkeypatch, private_tempdir):
    # a run that an exception ends (Ctrl-C in the main thread) stops its sandbox and removes its
    # folder: the fixture private_tempdir checks that no folder is left
    wait, calls = SandboxProcess.wait, []

    def interrupted(self, deadline, stop=None):
        calls.append(deadline)
        if len(calls) > 1:  # finish() waiting for the launcher to stop
            return wait(self, deadline, stop)
        assert wait_until(lambda: harnesses_under(private_tempdir), 30)
        raise KeyboardInterrupt
    monkeypatch.setattr(SandboxProcess, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_program(SLEEPER, ["assert True"], timeout=60)
    assert processes_in(str(private_tempdir)) == []
