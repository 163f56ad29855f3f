"""The verdict: only a program whose tests ran to the end and held is "passed".

A model trained on these verdicts learns whatever earns "passed"; each program below tries a
cheap way to earn it without making the asserts hold (docs/sandbox.md, "The verdict"). Each runs
at every level, with the audit hook on and off: the verdict's protection does not depend on it.
"""
import os
import threading

import pytest

from minilm.evaluation.execution import NO_TESTS, run_program, run_programs
from sandbox_helpers import ADD, ADD_TESTS, NAMESPACED, run_unaudited

pytestmark = pytest.mark.usefixtures("private_tempdir")

WRONG_TESTS = ["assert add(1, 2) == 4"]  # no honest program passes this
PASSED_JSON = b'{"status": "passed", "detail": ""}'
FORGERIES = {
    "calls the harness's verdict function":
        "import sys\nsys.modules['__main__'].verdict('passed')\n",
    "calls every function of the harness, with a verdict or with no tests":
        "import sys\nfor value in list(vars(sys.modules['__main__']).values()):\n"
        "    for args in (('passed',), ((),), ('passed', '')):\n"
        "        try:\n            value(*args)\n        except BaseException:\n            pass\n",
    "writes verdict.json and exits":
        "import os\nwith open('verdict.json', 'w') as f:\n"
        "    f.write('{\"status\": \"passed\", \"detail\": \"\"}')\nos._exit(0)\n",
    "writes a passing verdict to every descriptor and exits":
        f"import os\nfor fd in range(256):\n    try:\n        os.write(fd, {PASSED_JSON!r})\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
    "calls the harness's callers with no tests, found through its frames":
        "import sys\nframe = sys._getframe()\nwhile frame is not None:\n"
        "    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):\n"
        "        if callable(value) and getattr(value, '__module__', '') == '__main__':\n"
        "            try:\n                value(())\n"
        "            except BaseException:\n                pass\n"
        "    frame = frame.f_back\n",
    "makes exec a no-op, so that the tests do nothing":
        "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\n",
    "replaces the harness's functions with no-ops":
        "import sys\ng = vars(sys.modules['__main__'])\n"
        "for name in [name for name, value in g.items() if callable(value)]:\n"
        "    g[name] = lambda *args, **kwargs: None\n",
    "turns the harness's remaining steps into no-ops":
        "import sys\nfor step in sys._getframe(2).f_locals['steps']:\n"
        "    step.__code__ = (lambda *args, **kwargs: None).__code__\n",
    "stops the harness's loop with StopIteration": "raise StopIteration\n",
    "exits with sys.exit(0)": "import sys\nsys.exit(0)\n",
    "raises SystemExit": "raise SystemExit\n",
    "raises KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "closes every descriptor and exits": "import os\nos.closerange(0, 1024)\nos._exit(0)\n",
    "kills itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


@pytest.mark.parametrize("guard", [True, False])
def test_a_program_cannot_report_passed_without_passing(isolation, guard):
    if not guard and isolation not in NAMESPACED:
        pytest.skip("without the audit hook the limits level would let these programs signal "
                    "the evaluator's processes")
    names = list(FORGERIES)
    jobs = [(ADD + FORGERIES[name], WRONG_TESTS) for name in names]
    results = run_programs(jobs, timeout=5, isolation=isolation, guard=guard)
    passed = [name for name, result in zip(names, results) if result.passed]
    assert passed == [], [(name, r.status, r.detail) for name, r in zip(names, results)]
    assert all(r.status in ("crashed", "failed") for r in results)


def test_the_same_program_passes_when_its_tests_hold(isolation):
    # the forgeries above fail because they cheat, not because the verdict fails everything
    honest = [(ADD + "print('fine')\n", ADD_TESTS), ("import os\nx = os.getpid()\n", ["assert x > 0"]),
              ("from collections import namedtuple\nP = namedtuple('P', 'x y', defaults=(0,))\n",
               ["assert P(1) == (1, 0)"])]  # sets P.__new__.__defaults__: the program's own
    assert [r.status for r in run_programs(honest, timeout=5, isolation=isolation)] == ["passed"] * 3


def test_a_fifo_named_like_a_verdict_file_does_not_hang(isolation):
    # a reader that opens a FIFO blocks until someone opens it for writing: nobody ever does
    results = []
    source = "import os\nos.mkfifo('verdict.json')\nos._exit(0)\n"
    runner = threading.Thread(target=lambda: results.append(
        run_program(source, ["assert True"], timeout=5, isolation=isolation)), daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "run_program is still blocked after 30 s"
    assert results[0].status == "crashed"


def test_a_program_without_tests_cannot_pass(isolation):
    # a task with "test_list": [] once scored pass@1 = 1.000: every program passed it
    jobs = [(ADD, []), (ADD, ["  ", ""]), ("def add(a, b):\n    return a +\n", []), (ADD, ADD_TESTS)]
    results = run_programs(jobs, timeout=5, isolation=isolation)
    assert [(r.status, r.detail) for r in results[:2]] == [("failed", NO_TESTS)] * 2
    assert [r.status for r in results[2:]] == ["syntax_error", "passed"]


def test_a_process_the_program_starts_cannot_read_the_harness_memory(isolation):
    # the harness is non-dumpable: /proc/<pid>/mem needs CAP_SYS_PTRACE, which only root at the
    # "limits" level has (docs/sandbox.md, "The verdict")
    peek = ("import os\ntry:\n    open(f'/proc/{os.getppid()}/mem', 'rb').close()\n    print('readable')\n"
            "except OSError as error:\n    print(type(error).__name__)\n")
    result = run_program(run_unaudited(peek) + ADD, ADD_TESTS, timeout=10, isolation=isolation)
    as_root = isolation not in NAMESPACED and os.geteuid() == 0
    assert result.passed and result.output.strip() == ("readable" if as_root else "PermissionError")


# ---------------------------------------------------------------- what a determined program can do
# docs/sandbox.md owns up to these; each test checks that the route still works, so that the docs
# stay true. If one fails, the route was closed: say so in the docs.
FIND_AND_SEND = """
def look(frame):
    while frame is not None:
        found.extend(v for v in frame.f_locals.values() if isinstance(v, bytes) and len(v) == 32)
        frame = frame.f_back

def send():
    for fd in range(3, 32):
        try:
            os.write(fd, found[0])
        except OSError:
            pass
    os._exit(0)
"""
INTERRUPT_THE_KEEPER = {
    "a signal handler": "signal.signal(signal.SIGALRM, lambda number, frame: look(frame))\n"
                        "signal.setitimer(signal.ITIMER_REAL, 1e-4, 1e-4)\n",
    "a gc callback": "gc.callbacks.append(lambda phase, info: look(sys._getframe(1)))\n"
                     "gc.set_threshold(1)\n",
}


@pytest.mark.parametrize("route", INTERRUPT_THE_KEEPER)
def test_known_limit_code_that_runs_inside_the_keeper_reads_its_secret(isolation, route):
    source = ("import gc, os, signal, sys\nfound = []\n" + FIND_AND_SEND + INTERRUPT_THE_KEEPER[route] +
              "for _ in range(10 ** 6):\n    sys.audit('minilm.passed')\n    if found:\n        send()\n")
    result = run_program(ADD + source, WRONG_TESTS, timeout=20, isolation=isolation)
    assert result.passed  # a forged pass


def test_known_limit_a_c_extension_reads_the_process_memory(isolation):
    numpy = pytest.importorskip("numpy")  # the sandbox runs this interpreter's site-packages
    source = ("import numpy, sys\nsecret = b'read me from memory'\n"
              "class At:\n    __array_interface__ = {'data': (id(secret) + sys.getsizeof(b'') - 1, True),\n"
              "                           'shape': (len(secret),), 'typestr': '|u1', 'version': 3}\n"
              "print(bytes(numpy.asarray(At())))\n")
    result = run_program(source + ADD, ADD_TESTS, timeout=20, isolation=isolation)
    assert numpy and result.output.strip() == "b'read me from memory'"
