"""Choosing how strongly a candidate program is isolated: the levels, strongest first.

    bwrap    bubblewrap's namespaces and mounts (apt-get install bubblewrap)
    unshare  util-linux's unshare makes the namespaces; NAMESPACE_INIT (sandbox_programs.py) the
             mounts (Linux 5.12+, unprivileged user namespaces allowed)
    limits   neither works: process limits and the harness's audit hook only

Each level is probed once, by starting a sandbox that runs `python -c pass`. "auto" takes the
strongest that works and warns once when that is not bwrap. docs/sandbox.md says what each level
does and does not protect against.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from typing import Callable, Optional

from minilm.evaluation.sandbox_programs import NAMESPACE_INIT

# The interpreter inside a sandbox: the real file behind sys.executable. A virtual environment's
# bin/python is a link into its folder, which a sandbox's private /tmp (or an unmounted home) may
# hide (a venv under /tmp made bwrap fail with "execvp ...: No such file"); the programs run with
# -I and import only the standard library, so the base interpreter is all they need.
SANDBOX_PYTHON = os.path.realpath(sys.executable)

ISOLATIONS = ("bwrap", "unshare", "limits")  # strongest first
UNSHARE = ["--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts", "--cgroup",
           "--fork", "--mount-proc", "--kill-child"]
WHAT_RUNS = {  # what the warning says about a level weaker than bwrap
    "unshare": "the namespaces of util-linux's unshare set up by minilm (no network, no other "
               "process visible, read-only filesystem; Linux 5.12+)",
    "limits": "process limits and an audit hook only: it can read the filesystem, and a program "
              "that gets past the hook can use the network and signal other processes"}


# Each level's command runs argv in workdir; _probe tries it once, on `python -c pass`.
def bwrap_command(workdir: str, argv: list[str]) -> list[str]:
    private_run = ["--tmpfs", "/run"] if os.path.isdir("/run") else []  # host daemons' sockets
    return [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--remount-ro", "/proc",  # bwrap 0.8 leaves /proc/sys writable, by root: core_pattern
            "--tmpfs", "/tmp", *private_run, "--bind", workdir, workdir, "--unshare-all",
            "--cap-drop", "ALL",  # run by root, bwrap would keep its capabilities: remount rw
            "--die-with-parent", "--chdir", workdir, *argv]


def unshare_command(workdir: str, argv: list[str]) -> list[str]:
    """unshare makes the namespaces; NAMESPACE_INIT mounts, drops privileges and runs argv."""
    config = json.dumps({"workdir": workdir, "argv": argv})
    return [shutil.which("unshare"), *UNSHARE, "--", SANDBOX_PYTHON, "-I", "-S", "-B", "-c",
            NAMESPACE_INIT, config]


def _probe(command_in: Callable[[str, list[str]], list[str]]) -> Optional[str]:
    """Start a sandbox that runs `python -c pass` in a fresh folder: None when it exits 0, else
    the last line of its stderr, or why it could not start."""
    workdir = tempfile.mkdtemp(prefix="minilm-probe-")
    try:
        done = subprocess.run(command_in(workdir, [SANDBOX_PYTHON, "-I", "-S", "-c", "pass"]),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    finally:
        os.rmdir(workdir)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"]
        return lines[-1][:200]
    return None


def _start_problem(program: str, package: str, command) -> Optional[str]:
    """None when `program` is installed and `command` starts a sandbox with it, else why not."""
    if shutil.which(program) is None:
        return f"{package} is not installed"
    problem = _probe(command)
    return problem and f"{program} failed to start: {problem}"


@lru_cache(maxsize=None)
def _bwrap_problem() -> Optional[str]:
    """None when bubblewrap can start a sandbox here, else why it cannot (probed once)."""
    return _start_problem("bwrap", "bwrap", bwrap_command)


@lru_cache(maxsize=None)
def _unshare_problem() -> Optional[str]:
    """None when unshare's namespaces and our mounts work here (user namespaces may be off)."""
    return _start_problem("unshare", "unshare (util-linux)", unshare_command)


def isolation_problem(isolation: str) -> Optional[str]:
    """None when this machine can run `isolation`, else why it cannot."""
    problems = {"bwrap": _bwrap_problem, "unshare": _unshare_problem, "limits": lambda: None}
    return problems[isolation]()


def available_isolations() -> list[str]:
    """The isolation levels this machine supports, strongest first ("limits" always works)."""
    return [isolation for isolation in ISOLATIONS if isolation_problem(isolation) is None]


_warned = False


def resolve_isolation(isolation: str = "auto") -> str:
    """"auto" picks the strongest level that works, and warns (once) when that is not bwrap."""
    global _warned
    if isolation not in ("auto",) + ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}; use 'auto', " +
                         ", ".join(repr(name) for name in ISOLATIONS))
    if isolation != "auto":
        problem = isolation_problem(isolation)
        if problem:
            raise RuntimeError(f"isolation={isolation!r} requested but {problem}")
        return isolation
    chosen = available_isolations()[0]
    if chosen != "bwrap" and not _warned:
        problems = "; ".join(isolation_problem(name) for name in ISOLATIONS[:ISOLATIONS.index(chosen)])
        warnings.warn(f"SANDBOX WEAKENED: {problems}. Generated code runs with isolation "
                      f"{chosen!r}: {WHAT_RUNS[chosen]}. For the strongest level: apt-get install "
                      "bubblewrap (docs/sandbox.md)", RuntimeWarning, stacklevel=3)
        _warned = True
    return chosen
