"""What the sandbox tests share: a program to test, ways to find a program's processes, and a
way around the harness's audit hook; and run_tests, the in-process runner the task tests check
references and stubs with. Their fixtures (`isolation`, `private_tempdir`) are in
conftest.py.
"""
import os

NAMESPACED = {"bwrap", "unshare"}  # the levels whose guarantees the kernel enforces
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def processes_in(marker: str) -> list[int]:
    """Pids (host view) of processes whose working directory path contains marker."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in os.readlink(f"/proc/{entry}/cwd"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def enter_marker_dir(marker: str) -> str:
    """Candidate code that moves into a uniquely named directory, so its processes can be found."""
    return f"import os, time\nos.mkdir({marker!r})\nos.chdir({marker!r})\n"


def run_unaudited(code: str) -> str:
    """Candidate code that runs `python -c code` through _posixsubprocess.fork_exec, a C entry
    point that raises no audit event (the hook never sees it), and waits for it."""
    return f"""import _posixsubprocess, os, sys
argv = [sys.executable.encode(), b"-c", {code.encode()!r}]
errpipe = os.pipe()
args = [argv, argv[:1], True, (), None, None, -1, -1, -1, -1, -1, -1, *errpipe, True, False, -1,
        None, None, None, -1, None, False]  # the call subprocess makes (3.11-3.13)
try:
    pid = _posixsubprocess.fork_exec(*args)
except TypeError:  # a Python without the allow_vfork argument
    pid = _posixsubprocess.fork_exec(*args[:-1])
os.waitpid(pid, 0)
"""


def run_tests(code, tests):
    """An independent runner (not minilm.data.tasks.passes): each assert on its own; True if all pass."""
    namespace = {}
    try:
        exec(code, namespace)
        for test in tests:
            exec(test, namespace)
    except Exception:
        return False
    return True
