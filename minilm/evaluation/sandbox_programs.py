"""The small programs the sandbox runs, kept as source text (minilm/evaluation/execution.py runs them with
`python -I -S -c`, so they import nothing from minilm and work inside any isolation).

    LAUNCHER        sets the rlimits, becomes a child subreaper, starts bwrap, unshare or the
                    harness, and kills every descendant when it ends, when the evaluator dies and
                    at its own deadline;
    NAMESPACE_INIT  runs inside `unshare` (isolation "unshare"): makes the filesystem read-only
                    but for the working directory and private /tmp, /dev/shm and /run, a minimal
                    /dev, gives up its privileges, then starts the harness and waits as the PID
                    namespace's init.

The harness itself, which runs the candidate and its tests, is in minilm/evaluation/harness.py.
"""

# The launcher runs as `python -I -S -c LAUNCHER CONFIG`. It applies the rlimits to itself, so
# everything it starts inherits them (no preexec_fn, which is unsafe with threads), becomes a
# "child subreaper" (orphaned descendants are re-parented to it, even ones that left the process
# group), starts bwrap, unshare or the harness, and when that ends kills and reaps every
# descendant before it exits. So it does on SIGTERM: the evaluator's stop at its deadline, or the
# evaluator's death (PR_SET_PDEATHSIG; then it also removes the folder, which nobody else will),
# and on SIGALRM, its own wall-clock limit should the evaluator hang. Its child dies with it
# (PR_SET_PDEATHSIG, kept across exec). It also stands between the evaluator and untrusted code:
# `os.kill(os.getppid(), 9)` hits the launcher. A child killed by signal N is reported as exit
# code 128 + N, as bwrap reports it.
LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, time
config = json.loads(sys.argv[1])
for name, value in config["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
libc = ctypes.CDLL(None)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
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

def remove_folder():
    import shutil  # only an orphaned launcher needs it
    def make_writable_and_retry(function, path, _):
        os.chmod(os.path.dirname(path), 0o700)  # the program may have chmod 000 its folders
        if os.path.isdir(path):
            os.chmod(path, 0o700)
        function(path)
    shutil.rmtree(config["workdir"], onerror=make_writable_and_retry)

def stop(signum, frame):
    kill_descendants()
    if os.getppid() != config["parent"]:  # the evaluator is gone
        try:
            remove_folder()
        except OSError:
            pass
    os._exit(128 + signum)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGALRM, stop)
libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
if os.getppid() != config["parent"]:  # the evaluator died before the line above
    stop(signal.SIGTERM, None)
signal.alarm(config["deadline"])
pid = os.fork()
if pid == 0:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != me:
        os._exit(1)
    os.execv(config["argv"][0], config["argv"])
status = os.waitpid(pid, 0)[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
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
