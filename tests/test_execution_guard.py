"""The harness's audit hooks: each refusal docs/sandbox.md lists, at every level, and the routes
around them that the docs own up to at the "limits" level (so that the docs stay true)."""
import os
import socket
import subprocess
import sys
import uuid

import pytest

from minilm.evaluation.execution import run_program, run_programs
from sandbox_helpers import ADD, ADD_TESTS, NAMESPACED

pytestmark = pytest.mark.usefixtures("private_tempdir")

OUTSIDE = "/etc/minilm-guard-test"  # never written: each program below is refused first
REFUSED = {  # what the program does: the start of the detail
    "open(OUTSIDE, 'w')": "sandbox: writing",
    "os.open(OUTSIDE, os.O_WRONLY | os.O_CREAT)": "sandbox: writing",
    "os.remove(OUTSIDE)": "sandbox: os.remove outside",
    "os.rename('x', OUTSIDE)": "sandbox: os.rename outside",
    "os.symlink('x', OUTSIDE)": "sandbox: os.symlink outside",
    "os.link('/etc/hostname', 'here')": "sandbox: os.link outside",
    "os.mkdir(OUTSIDE)": "sandbox: os.mkdir outside",
    "os.chmod(OUTSIDE, 0o777)": "sandbox: os.chmod outside",
    "os.chown(OUTSIDE, 0, 0)": "sandbox: os.chown outside",
    "os.utime(OUTSIDE)": "sandbox: os.utime outside",
    "os.truncate(OUTSIDE, 0)": "sandbox: os.truncate outside",
    "os.setxattr(OUTSIDE, 'user.x', b'1')": "sandbox: os.setxattr outside",
    "import shutil; shutil.rmtree(OUTSIDE)": "sandbox: shutil.rmtree outside",
    "os.mkdir('d'); os.rmdir('../' * 40 + OUTSIDE[1:], dir_fd=os.open('d', os.O_RDONLY))":
        "sandbox: os.rmdir outside",
    "os.kill(os.getppid(), 9)": "sandbox: os.kill of another process",
    "os.kill(0, 9)": "sandbox: os.kill of another process",
    "os.killpg(os.getpgid(0), 9)": "sandbox: os.killpg",
    "os.fork()": "sandbox: os.fork",
    "os.system('true')": "sandbox: os.system",
    "os.posix_spawn('/bin/true', ['true'], {})": "sandbox: os.posix_spawn",
    "os.execv('/bin/true', ['true'])": "sandbox: os.exec",
    "import subprocess; subprocess.run(['true'])": "sandbox: subprocess.Popen",
    "import socket; socket.socket()": "sandbox: sockets other than Unix",
    "import socket; socket.getaddrinfo('localhost', 80)": "sandbox: socket.getaddrinfo",
    "import socket; socket.socket(socket.AF_UNIX).connect('/run/x.sock')": "sandbox: socket.connect",
    # the hooks that protect the verdict (always on)
    "import ctypes": "sandbox: importing ctypes",  # an ImportError, as if not installed
    "import _ctypes": "sandbox: importing _ctypes",
    "import _testcapi": "sandbox: importing _testcapi",
    "import gc; gc.get_objects()": "sandbox: gc.get_objects",
    "import gc; gc.get_referrers(os)": "sandbox: gc.get_referrers",
    "import sys; sys._current_frames()": "sandbox: sys._current_frames",
    "import sys; sys.settrace(lambda *a: None)": "sandbox: sys.settrace",
    "import sys; sys.setprofile(lambda *a: None)": "sandbox: sys.setprofile",
    "import sys; sys._getframe(2).f_locals['steps'][-1].__code__ = (lambda: 0).__code__":
        "sandbox: changing the harness's steps (__code__)",
    "import sys; sys._getframe(2).f_locals['steps'][-1].__defaults__ = ()":
        "sandbox: changing the harness's steps (__defaults__)",
    "open('/proc/self/mem', 'rb')": "sandbox: opening a process's memory",
    "os.symlink('/proc/self', 'p'); open('p/mem', 'rb')": "sandbox: opening a process's memory",
    "os.symlink(f'/proc/{os.getpid()}/mem', 'm'); open('m', 'rb')": "sandbox: opening a process's memory",
}
ALWAYS = list(REFUSED)[list(REFUSED).index("import ctypes"):]  # on with guard=False too


def job(code: str):
    return f"import os\nOUTSIDE = {OUTSIDE!r}\n{code}\n" + ADD, ADD_TESTS


def test_each_refusal_of_the_audit_hooks(isolation):
    results = run_programs([job(code) for code in REFUSED], timeout=10, isolation=isolation)
    wrong = [(code, r.status, r.detail) for code, r in zip(REFUSED, results)
             if r.status != "crashed" or f"Error: {REFUSED[code]}" not in r.detail]
    assert wrong == []
    assert not os.path.exists(OUTSIDE)


def test_the_verdicts_hooks_stay_on_without_the_guard(isolation):
    if isolation not in NAMESPACED:
        pytest.skip("guard=False at the limits level is only for the tests of the namespaces")
    results = run_programs([job(code) for code in ALWAYS], timeout=10, isolation=isolation, guard=False)
    assert [r.status for r in results] == ["crashed"] * len(ALWAYS)
    assert all("Error: sandbox:" in r.detail for r in results)
    no_audit_hook = run_program("import sys\nsys.addaudithook(lambda *a: 1 / 0)\nopen('x', 'w')\n" + ADD,
                                ADD_TESTS, timeout=10, isolation=isolation, guard=False)
    assert no_audit_hook.passed  # the hook was silently not added: it would have raised


def test_replacing_os_functions_does_not_steer_the_guard(isolation, tmp_path):
    # at "limits", replacing os.fsdecode (which the guard called) let a write out of the folder
    target = tmp_path / f"escaped-{uuid.uuid4().hex}"
    steer = ("import os, os.path, posixpath\n"
             "inside = lambda *args, **kwargs: os.getcwd() + '/x'\n"
             "os.fsdecode = os.fspath = os.path.realpath = posixpath.realpath = inside\n"
             f"open({str(target)!r}, 'w').write('x')\n")
    result = run_program(steer + ADD, ADD_TESTS, timeout=10, isolation=isolation)
    assert not target.exists()
    assert result.status == "crashed" and "sandbox: writing" in result.detail


def test_no_datagram_or_fast_open_connection_by_any_route(isolation):
    # at "limits", socket.sendmsg to a localhost UDP port and a TCP MSG_FASTOPEN got out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
        routes = [
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendmsg([b'out'], [], 0, ('127.0.0.1', {udp_port}))\n",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'out', ('127.0.0.1', {udp_port}))\n",
            "import socket\ns = socket.socket()\n"
            f"s.sendto(b'out', socket.MSG_FASTOPEN, ('127.0.0.1', {tcp_port}))\n"]
        guard = isolation not in NAMESPACED  # the kernel alone must hold; limits rely on the hook
        results = run_programs([(route + ADD, ADD_TESTS) for route in routes], timeout=10,
                               isolation=isolation, guard=guard)
        for listener in (udp, tcp):
            listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            udp.recv(16)
        with pytest.raises(BlockingIOError):
            tcp.accept()
    if guard:  # the hook refuses the sockets; in a namespace they reach its own loopback only
        assert [r.status for r in results] == ["crashed"] * 3
        assert all("sandbox: sockets other than Unix" in r.detail for r in results)


def test_what_gets_past_the_guard_at_the_limits_level(isolation, tmp_path):
    # docs/sandbox.md owns up to these: the hook sees no dir_fd in an open event, and os.mkfifo
    # raises no audit event. The namespaced levels stop both (read-only mounts, a private /tmp).
    folder = tmp_path / "outside"
    folder.mkdir()
    routes = [f"fd = os.open({str(folder)!r}, os.O_RDONLY)\n"
              "os.close(os.open('by-dir-fd', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n",
              f"os.mkfifo({str(folder / 'fifo')!r})\n"]
    results = run_programs([("import os\n" + route + ADD, ADD_TESTS) for route in routes],
                           timeout=10, isolation=isolation)
    if isolation in NAMESPACED:
        assert [r.status for r in results] == ["crashed"] * 2 and list(folder.iterdir()) == []
    else:
        assert [r.status for r in results] == ["passed"] * 2
        assert sorted(p.name for p in folder.iterdir()) == ["by-dir-fd", "fifo"]


def test_the_environment_of_the_users_processes(isolation):
    # /proc/<pid>/environ of the evaluator (here a bystander of ours) may hold API keys
    marker = f"SECRET_{uuid.uuid4().hex}"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, "MINILM_TEST_KEY": marker})
    try:
        source = ("try:\n"
                  f"    print({marker!r}.encode() in open('/proc/{bystander.pid}/environ', 'rb').read())\n"
                  "except OSError as error:\n    print(type(error).__name__)\n" + ADD)
        result = run_program(source, ADD_TESTS, timeout=10, isolation=isolation)
        # at "limits" the user's processes are all readable; the namespaces show none of them
        assert result.output.strip() == ("FileNotFoundError" if isolation in NAMESPACED else "True")
    finally:
        bystander.kill()
        bystander.wait()
