"""The small programs the sandbox runs, kept as source text (minilm/evaluation/execution.py runs them with
`python -I -S -c`, so they import nothing from minilm and work inside any isolation).

    LAUNCHER        sets the rlimits, becomes a child subreaper, starts bwrap, unshare or the
                    harness, and kills every descendant when it ends;
    NAMESPACE_INIT  runs inside `unshare` (isolation "unshare"): makes the filesystem read-only
                    but for the working directory and private /tmp, /dev/shm and /run, a minimal
                    /dev, gives up its privileges, then starts the harness and waits as the PID
                    namespace's init;
    HARNESS         defines the candidate program, runs each test statement, writes verdict.json.
"""

# The launcher runs as `python -I -S -c LAUNCHER CONFIG`. It applies the rlimits to itself, so
# everything it starts inherits them (no preexec_fn, which is unsafe with threads), becomes a
# "child subreaper" (orphaned descendants are re-parented to it, even ones that left the process
# group), starts bwrap, unshare or the harness, and when that ends, or on SIGTERM from the evaluator, kills
# and reaps every descendant before it exits. It also stands between the evaluator and untrusted
# code: `os.kill(os.getppid(), 9)` hits the launcher. A child killed by signal N is reported as
# exit code 128 + N, as bwrap reports it.
LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, time
config = json.loads(sys.argv[1])
for name, value in config["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
try:
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
me = os.getpid()

def children():
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[1]) == me:  # field 4: the parent pid
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found

def kill_descendants():
    # killed children are reaped here; their own children then become ours: repeat until none
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)
        except ChildProcessError:
            return

def stop(signum, frame):
    kill_descendants()
    os._exit(128 + signum)

signal.signal(signal.SIGTERM, stop)
pid = os.fork()
if pid == 0:
    os.execv(config["argv"][0], config["argv"])
status = os.waitpid(pid, 0)[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kill_descendants()
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""

# NAMESPACE_INIT runs as `unshare --user --map-root-user --mount --net --pid --ipc --uts --fork
# --mount-proc --kill-child -- python -I -S -c NAMESPACE_INIT CONFIG`: PID 1 of a fresh PID
# namespace, "root" of a fresh user namespace, owner of a private copy of the mount table (unshare
# made its propagation private, so nothing here reaches the host). In order:
#   1. every mount read-only, recursively (mount_setattr, Linux 5.12+): a user namespace may add
#      MS_RDONLY to the mounts it copied, though it could never take one away;
#   2. a tmpfs on /dev with only null, zero, full, random, urandom bound in (the host's /dev would
#      let a program run by root open /dev/sda), then fresh tmpfs on /dev/shm, /tmp and /run:
#      private scratch space, and /run no longer shows the host daemons' sockets (docker.sock);
#   3. the working directory bound back over its own path (it may lie under the new /tmp), writable;
#   4. no_new_privs, then unshare(CLONE_NEWUSER | CLONE_NEWNS): a second user namespace in which
#      our uid is unmapped, so exec drops every capability (and the program cannot make user
#      namespaces of its own), and the copied mounts are *locked* (read-only stays, nothing can
#      be unmounted to show what lies below);
#   5. fork the harness in a session of its own, and wait: as init, signals from inside the
#      namespace cannot kill us, and when we exit the kernel kills whatever is left in it.
# Exit code: the harness's, or 128 + N when signal N killed it (as bwrap reports it).
NAMESPACE_INIT = r"""
import ctypes, json, os, signal, sys
config = json.loads(sys.argv[1])
workdir = config["workdir"]
libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD, SYS_MOUNT_SETATTR = 1, 0x8000, -100, 442
CLONE_NEWNS, CLONE_NEWUSER, PR_SET_NO_NEW_PRIVS = 0x00020000, 0x10000000, 38

def check(result, what):
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")

def mount(source, target, fstype=None, flags=0, data=None):
    encode = lambda text: text.encode() if text is not None else None
    check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
          f"mount {target}")

class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clear", "propagation", "userns")]

def read_only(path, recursive, value):
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0) if value else MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                       ctypes.byref(attr), ctypes.sizeof(attr)), f"read-only {path}")

def tmpfs(target, mode):
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size=64m")

def bind(fd, target):
    mount(f"/proc/self/fd/{fd}", target, flags=MS_BIND)
    os.close(fd)

# what must come back after a tmpfs hides it: held open as O_PATH descriptors
devices = {name: os.open(f"/dev/{name}", os.O_PATH) for name in
           ("null", "zero", "full", "random", "urandom") if os.path.exists(f"/dev/{name}")}
workdir_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
read_only("/", recursive=True, value=True)
tmpfs("/dev", "755")
for name, fd in devices.items():
    os.close(os.open(f"/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o666))  # a file to bind over
    bind(fd, f"/dev/{name}")
for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, f"/dev/{name}")
os.mkdir("/dev/shm")
read_only("/dev", recursive=False, value=True)
for scratch in ("/dev/shm", "/tmp", "/run"):
    if os.path.isdir(scratch):
        tmpfs(scratch, "1777")
os.makedirs(workdir, exist_ok=True)  # its parents may be gone under the new /tmp
bind(workdir_fd, workdir)
read_only(workdir, recursive=False, value=False)
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")  # setuid files cannot raise us
check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as init, a SIGINT from inside is then ignored
pid = os.fork()
if pid == 0:
    os.setsid()
    os.chdir(workdir)
    os.execv(config["argv"][0], config["argv"])
status = os.waitpid(pid, 0)[1]
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""

# The harness defines the candidate, then runs each test statement in its namespace.
HARNESS = r"""
import json, os, sys
_open, _write, _close, _exit, _dumps = os.open, os.write, os.close, os._exit, json.dumps
WORKDIR = os.getcwd()

def verdict(status, detail=""):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # os._exit below skips the interpreter's own flush
        except BaseException:
            pass
    data = _dumps({"status": status, "detail": detail[:2000]}).encode()
    fd = _open(os.path.join(WORKDIR, "verdict.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    _write(fd, data)
    _close(fd)
    _exit(0)  # no waiting for the candidate's threads or atexit handlers

def describe(error):
    try:
        return f"{type(error).__name__}: {error}"[:1000]
    except BaseException:
        return type(error).__name__

def install_guard(root):
    realpath, getpid = os.path.realpath, os.getpid
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
             "os.rename": (0, 1), "os.symlink": (1,), "os.link": (1,)}
    REFUSED = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
               "subprocess.Popen", "socket.connect", "socket.bind", "socket.sendto", "ctypes.dlopen"}

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor: checked when it was opened
        try:
            path = realpath(os.fsdecode(path))
        except Exception:
            return False
        return path == root or path.startswith(root + os.sep) or path == "/dev/null"

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (flags or 0) & WRITE or any(c in (mode or "") for c in "wax+")
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        elif event in PATHS:
            if not all(inside(args[i]) for i in PATHS[event]):
                raise PermissionError(f"sandbox: {event} outside the working directory")
        elif event in ("os.kill", "os.killpg"):
            if args[0] not in (getpid(), 0):
                raise PermissionError(f"sandbox: {event} of another process")
        elif event in REFUSED:
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(hook)

with open("job.json") as f:
    job = json.load(f)
with open("candidate.py", encoding="utf-8", errors="replace") as f:
    source = f.read()
try:
    program = compile(source, "candidate.py", "exec")
except BaseException as error:  # SyntaxError, ValueError (NUL bytes), RecursionError (deep nesting)
    verdict("syntax_error", describe(error))
tests = [compile(text, f"test_{i}", "exec") for i, text in enumerate(job["tests"])]
if job["guard"]:
    install_guard(os.path.realpath(WORKDIR))
namespace = {"__name__": "__candidate__"}
try:
    exec(program, namespace)
except BaseException as error:
    verdict("crashed", "while defining the program: " + describe(error))
for text, test in zip(job["tests"], tests):
    try:
        exec(test, namespace)
    except AssertionError as error:
        verdict("failed", text + (f"  ({describe(error)})" if str(error) else ""))
    except BaseException as error:
        verdict("crashed", f"{text}: {describe(error)}")
verdict("passed")
"""
