"""The executor: right verdicts for honest programs, and hostile programs that cannot hurt us.

Every hostile test runs under each isolation level (a level this machine lacks is skipped, with
the reason), and checks three things: the evaluator survives, the status is the right one, and
nothing is left running or written behind. What a level guarantees decides what is checked:

- "bwrap" and "unshare" (NAMESPACED) guarantee, by the kernel, whatever route the program takes
  (a spawned shell, a C entry point that raises no audit event): no network connection, no view
  of or signal to a process outside, nothing written outside its folder and a private /tmp.
  Those tests pass guard=False or take a route around the audit hook, so the kernel alone holds.
- "limits" guarantees none of that: its audit hook refuses the direct calls (checked), and pure
  Python gets past the hook (checked too, so that the docs' warning stays true).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest

from minilm.evaluation import execution, isolation as isolation_levels
from minilm.evaluation.execution import Limits, available_isolations, run_program, run_programs
from sandbox_helpers import ADD, ADD_TESTS, NAMESPACED, enter_marker_dir, processes_in, run_unaudited

pytestmark = pytest.mark.usefixtures("private_tempdir")

# ---------------------------------------------------------------- honest programs
TASKS = [  # (correct, incorrect, tests)
    (ADD, "def add(a, b):\n    return a - b\n", ADD_TESTS),
    ("def is_even(n):\n    return n % 2 == 0\n", "def is_even(n):\n    return n % 2 == 1\n",
     ["assert is_even(4)", "assert not is_even(7)"]),
    ("def reverse(s):\n    return s[::-1]\n", "def reverse(s):\n    return s\n",
     ["assert reverse('') == ''", "assert reverse('abc') == 'cba'"]),
]


def test_correct_and_incorrect_solutions(isolation):
    jobs = [(code, tests) for correct, wrong, tests in TASKS for code in (correct, wrong)]
    results = run_programs(jobs, timeout=5, isolation=isolation, workers=2)
    assert [r.status for r in results] == ["passed", "failed"] * len(TASKS)
    assert all(r.isolation == isolation for r in results)
    assert results[1].detail == "assert add(1, 2) == 3"  # the first assertion that did not hold
    assert results[5].detail == "assert reverse('abc') == 'cba'"  # '' == '' held; this one did not
    assert results[0].passed and not results[1].passed


def test_statuses_of_broken_programs(isolation):
    jobs = [("def add(a, b):\n    return a +\n", ADD_TESTS),  # syntax error
            ("def add(a, b):\n    return a + c\n", ADD_TESTS),  # NameError while tested
            ("raise ValueError('at import')\n" + ADD, ADD_TESTS),
            ("def f(:\n", []),
            ("x = 1\n", ["assert x == 1"]),  # a program with no function, tests on its globals
            ("print('hello')\n" + ADD, ADD_TESTS)]
    results = run_programs(jobs, timeout=5, isolation=isolation)
    assert [r.status for r in results] == ["syntax_error", "crashed", "crashed", "syntax_error",
                                           "passed", "passed"]
    assert "NameError" in results[1].detail and "assert add(1, 2) == 3" in results[1].detail
    assert "ValueError: at import" in results[2].detail
    assert results[5].output.strip() == "hello"


def test_run_programs_is_ordered_and_matches_one_at_a_time():
    isolation = available_isolations()[0]  # ordering does not depend on the level: the strongest
    jobs = [(ADD if i % 3 else "def add(a, b):\n    return 0\n", ADD_TESTS) for i in range(6)]
    parallel = run_programs(jobs, timeout=5, isolation=isolation, workers=3)
    sequential = [run_program(source, tests, timeout=5, isolation=isolation) for source, tests in jobs]
    assert [r.status for r in parallel] == [r.status for r in sequential]
    assert [r.status for r in parallel] == ["failed", "passed", "passed"] * 2


# ---------------------------------------------------------------- hostile programs
def test_infinite_loop_times_out(isolation):
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", ADD_TESTS, timeout=0.5, isolation=isolation)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3


def test_deep_recursion_is_a_crash_not_our_problem(isolation):
    deep = "def f(n):\n    return f(n + 1)\n"
    # with the recursion limit lifted, repr of a deeply nested list overflows the C stack
    unbounded = ("import sys\nsys.setrecursionlimit(10**8)\nnested = []\n"
                 "for _ in range(10**5):\n    nested = [nested]\n")
    results = run_programs([(deep, ["f(0)"]), (unbounded, ["repr(nested)"])], timeout=10,
                           isolation=isolation, limits=Limits(memory_mb=256))
    assert [r.status for r in results] == ["crashed", "crashed"]
    assert "RecursionError" in results[0].detail and "SIGSEGV" in results[1].detail


def test_allocating_tens_of_gigabytes_fails_inside_the_sandbox(isolation):
    hog = "blob = bytearray(30 * 2**30)\n" + ADD
    creeping = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 2**20))\n"
    results = run_programs([(hog, ADD_TESTS), (creeping, [])], timeout=5, isolation=isolation,
                           limits=Limits(memory_mb=256))
    assert [r.status for r in results] == ["crashed", "crashed"]
    assert all("MemoryError" in r.detail for r in results)


@pytest.mark.parametrize("guard", [True, False])
def test_bounded_fork_bomb_is_contained(isolation, guard):
    # 2**5 = 32 processes that each sleep: exponential like a fork bomb, but bounded, so that
    # the test cannot exhaust the pids of a shared machine if containment were to fail.
    marker = f"bomb-{uuid.uuid4().hex}"
    bomb = enter_marker_dir(marker) + "for _ in range(5):\n    os.fork()\ntime.sleep(60)\n"
    result = run_program(bomb, [], timeout=1.0, isolation=isolation, guard=guard)
    if guard:  # the audit hook refuses the first fork
        assert result.status == "crashed" and "os.fork" in result.detail
    else:
        assert result.status == "timeout"
    assert processes_in(marker) == []


def test_children_left_behind_by_a_passing_program_are_killed(isolation):
    marker = f"orphan-{uuid.uuid4().hex}"
    source = enter_marker_dir(marker) + "if os.fork() == 0:\n    time.sleep(60)\n" + ADD
    result = run_program(source, ADD_TESTS, timeout=5, isolation=isolation, guard=False)
    assert result.status == "passed"
    assert processes_in(marker) == []


def test_children_that_leave_the_process_group_are_killed(isolation):
    # a double fork plus setsid escapes process-group killing; the launcher, a child subreaper,
    # inherits the orphan and kills it (and bwrap's PID namespace dies with its init)
    marker = f"setsid-{uuid.uuid4().hex}"
    source = (enter_marker_dir(marker) + "if os.fork() == 0:\n    os.setsid()\n"
              "    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n" + ADD)
    for timeout in (5, 0.5):  # the program finishes; the program is stopped at the deadline
        source_ = source if timeout == 5 else source + "time.sleep(60)\n"
        result = run_program(source_, ADD_TESTS, timeout=timeout, isolation=isolation, guard=False)
        assert result.status == ("passed" if timeout == 5 else "timeout")
        assert processes_in(marker) == []


def test_writing_or_deleting_outside_the_sandbox_is_refused(isolation, tmp_path):
    outside = os.path.join(os.getcwd(), f"escaped-{uuid.uuid4().hex}.txt")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    writer = f"open({outside!r}, 'w').write('x')\n" + ADD
    deleter = f"import os\nos.remove({str(victim)!r})\n" + ADD
    jobs = [(writer, ADD_TESTS), (deleter, ADD_TESTS)]
    guards = [True, False] if isolation in NAMESPACED else [True]  # as root, limits alone cannot
    for guard in guards:
        results = run_programs(jobs, timeout=5, isolation=isolation, guard=guard)
        assert not os.path.exists(outside)
        assert victim.read_text() == "keep me"
        assert results[0].status == "crashed"
        if guard:
            assert all("sandbox:" in r.detail for r in results)
        elif outside.startswith("/tmp/"):  # a checkout under /tmp: the private tmpfs hides it
            assert "No such file or directory" in results[0].detail
        else:  # the repository is read-only; /tmp is a private tmpfs thrown away after
            assert "Read-only file system" in results[0].detail


def test_the_filesystem_and_the_kernel_settings_stay_read_only(isolation):
    if isolation not in NAMESPACED:
        pytest.skip(f"{isolation!r} has no read-only filesystem to undo (docs/sandbox.md)")
    outside = os.path.join(os.getcwd(), f"escaped-{uuid.uuid4().hex}.txt")
    shell = f"echo tried; mount -o remount,bind,rw /; mount -o remount,rw /; echo x > {outside}"
    source = (f"import os\nos.system({shell!r})\n"
              "try:\n    open('/proc/sys/kernel/core_pattern', 'r+').close()\n"  # opened, not written
              "    print('kernel settings are writable')\nexcept OSError:\n    pass\n"
              f"open({outside!r}, 'w').write('x')\n" + ADD)
    try:
        result = run_program(source, ADD_TESTS, timeout=5, isolation=isolation, guard=False)
        assert "tried" in result.output and "kernel settings are writable" not in result.output
        assert result.status == "crashed" and not os.path.exists(outside)
    finally:
        if os.path.exists(outside):
            os.remove(outside)


@pytest.mark.parametrize("guard", [True, False])
def test_killing_the_parent_does_not_reach_the_evaluator(isolation, guard):
    source = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ADD
    result = run_program(source, ADD_TESTS, timeout=5, isolation=isolation, guard=guard)
    # we are still here; what the program hit depends on the layer that stopped it
    if guard:
        assert result.status == "crashed" and "sandbox: os.kill" in result.detail
    elif isolation in NAMESPACED:  # its parent is the namespace's init, which ignores SIGKILL
        assert result.status == "passed"
    else:  # it killed the launcher; the harness is killed with the group unless it finished first
        assert result.status == "passed" or "SIGKILL" in result.detail


def test_sys_exit_never_counts_as_passing(isolation):
    jobs = [("import sys\nsys.exit(0)\n" + ADD, ADD_TESTS),
            ("import sys\ndef add(a, b):\n    sys.exit(0)\n", ADD_TESTS),
            ("import os\nos._exit(0)\n", ADD_TESTS)]
    results = run_programs(jobs, timeout=5, isolation=isolation)
    assert [r.status for r in results] == ["crashed"] * 3
    assert "SystemExit" in results[0].detail and "before the tests finished" in results[2].detail


def test_closing_stdout_does_not_hide_the_verdict(isolation):
    source = "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + ADD
    assert run_program(source, ADD_TESTS, timeout=5, isolation=isolation).status == "passed"


def test_the_process_is_clean_and_limited(isolation):
    # docs/sandbox.md, "Layers": the folder, the environment, the descriptors, the rlimits
    source = ("import json, os, resource, sys\n"
              "limits = {name: resource.getrlimit(getattr(resource, name))[0] for name in\n"
              "          ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}\n"
              "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'stdin': sys.stdin.read(),\n"
              "                  'fds': sorted(map(int, os.listdir('/proc/self/fd'))), 'limits': limits}))\n")
    result = run_program(source, ["assert True"], timeout=2.5, isolation=isolation)
    seen = json.loads(result.output)
    folder = seen["cwd"]
    assert os.path.basename(folder).startswith("minilm-exec-") and not os.path.exists(folder)
    assert seen["env"].pop("PWD", folder) == folder  # bwrap sets PWD
    assert seen["env"] == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder,
                           "LANG": "C.UTF-8"}
    assert seen["stdin"] == ""  # the job was read; stdin is /dev/null
    assert len(seen["fds"]) == 5  # stdin, stdout, stderr, the verdict pipe, listdir's own
    assert seen["limits"] == {"RLIMIT_CPU": 4, "RLIMIT_AS": 1 << 30, "RLIMIT_FSIZE": 16 << 20,
                              "RLIMIT_NOFILE": 256, "RLIMIT_CORE": 0}


def test_printing_megabytes_is_capped(isolation):
    source = "import sys\nsys.stdout.write('x' * 20_000_000)\nsys.stdout.flush()\n" + ADD
    result = run_program(source, ADD_TESTS, timeout=10, isolation=isolation)
    assert result.status == "passed"
    assert result.output.startswith("x" * execution.OUTPUT_LIMIT)
    assert f"{20_000_000 - execution.OUTPUT_LIMIT} more bytes" in result.output


def test_no_network_connection_by_any_route(isolation):
    with socket.socket() as server:  # a listener the candidate could reach on the host
        server.bind(("127.0.0.1", 0))
        server.listen()
        connect = ("import socket; print('spawned', flush=True); "
                   f"socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)")
        routes = [connect.replace("; print('spawned', flush=True)", "") + "\n",  # in the program
                  "import os, shlex, sys\n"  # a shell
                  f"os.system(sys.executable + ' -c ' + shlex.quote({connect!r}))\n",
                  run_unaudited(connect)]  # a process the audit hook never hears of
        guard = isolation not in NAMESPACED  # the kernel alone must hold; limits rely on the hook
        results = run_programs([(route + ADD, ADD_TESTS) for route in routes], timeout=5,
                               isolation=isolation, guard=guard, workers=3)
        server.setblocking(False)
        connections = []
        try:
            while True:
                connections.append(server.accept()[0])
        except BlockingIOError:
            pass
        for connection in connections:
            connection.close()
    assert results[0].status == "crashed" and "spawned" in results[2].output  # every route ran
    if isolation in NAMESPACED:
        assert connections == []
        assert "spawned" in results[1].output
    else:  # the hook refuses the program's own connect and os.system; fork_exec gets past it
        assert [r.status for r in results[:2]] == ["crashed", "crashed"]
        assert all("sandbox:" in r.detail for r in results[:2])
        assert len(connections) == 1


def test_processes_outside_cannot_be_seen_or_signalled(isolation):
    marker = f"bystander-{uuid.uuid4().hex}"  # a process of ours that stands for the evaluator
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        sees = ("import os\npids, seen = list(filter(str.isdigit, os.listdir('/proc'))), []\n"
                "for pid in pids:\n    try:\n        with open(f'/proc/{pid}/cmdline', 'rb') as f:\n"
                f"            seen += [pid] if {marker.encode()!r} in f.read() else []\n"
                "    except OSError:\n        pass\n"
                "print('visible:', len(seen), 'processes:', len(pids))\n")
        kill = f"import os; os.kill({bystander.pid}, 9)"
        guard = isolation not in NAMESPACED
        direct = run_program(sees + kill + "\n" + ADD, ADD_TESTS, timeout=5, isolation=isolation,
                             guard=guard)
        assert bystander.poll() is None, "the program killed a process outside the sandbox"
        unaudited = run_program(run_unaudited(kill) + ADD, ADD_TESTS, timeout=5,
                                isolation=isolation, guard=True)
        if isolation in NAMESPACED:  # its own PID namespace: /proc lists its init and itself
            assert "visible: 0 processes: 2" in direct.output
            assert "ProcessLookupError" in direct.detail and "ProcessLookupError" in unaudited.output
            assert bystander.poll() is None
        else:  # /proc shows every process; the hook refuses os.kill, fork_exec gets past it
            assert "visible: 1" in direct.output and "sandbox: os.kill" in direct.detail
            assert unaudited.passed and bystander.wait(timeout=5) == -signal.SIGKILL
    finally:
        bystander.kill()
        bystander.wait()


# ---------------------------------------------------------------- input checks and fallback
def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="test 1 is not valid Python"):
        run_program(ADD, ["assert True", "assert ("])
    with pytest.raises(ValueError, match="timeout must be positive"):
        run_program(ADD, ADD_TESTS, timeout=0)
    with pytest.raises(ValueError, match="unknown isolation"):
        run_program(ADD, ADD_TESTS, isolation="docker")
    with pytest.raises(TypeError, match="give the program as a string"):
        run_program(b"x = 1", [])


def test_each_missing_level_falls_back_to_the_next_loudly_once(monkeypatch):
    monkeypatch.setattr(isolation_levels, "_bwrap_problem", lambda: "bwrap is not installed")
    monkeypatch.setattr(isolation_levels, "_unshare_problem", lambda: None)
    monkeypatch.setattr(isolation_levels, "_warned", False)
    assert isolation_levels.available_isolations() == ["unshare", "limits"]
    with pytest.warns(RuntimeWarning, match="bwrap is not installed. .*isolation 'unshare'.*"
                                            "apt-get install bubblewrap"):
        assert isolation_levels.resolve_isolation("auto") == "unshare"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isolation_levels.resolve_isolation("auto") == "unshare"  # said once is enough
    with pytest.raises(RuntimeError, match="isolation='bwrap' requested but bwrap is not installed"):
        isolation_levels.resolve_isolation("bwrap")

    monkeypatch.setattr(isolation_levels, "_unshare_problem", lambda: "unshare failed: no user namespaces")
    monkeypatch.setattr(isolation_levels, "_warned", False)
    assert isolation_levels.available_isolations() == ["limits"]
    with pytest.warns(RuntimeWarning, match="no user namespaces. .*isolation 'limits'"):
        result = run_program(ADD, ADD_TESTS, timeout=5)
    assert result.passed and result.isolation == "limits"
    with pytest.raises(RuntimeError, match="no user namespaces"):
        isolation_levels.resolve_isolation("unshare")
