"""The two small programs the sandbox runs, kept as source text (minilm/execution.py runs them
with `python -I -S -c`, so they import nothing from minilm and work inside any isolation).

    LAUNCHER  sets the rlimits, becomes a child subreaper, starts bwrap or the harness, and kills
              every descendant when it ends;
    HARNESS   defines the candidate program, runs each test statement, writes verdict.json.
"""

# The launcher runs as `python -I -S -c LAUNCHER CONFIG`. It applies the rlimits to itself, so
# everything it starts inherits them (no preexec_fn, which is unsafe with threads), becomes a
# "child subreaper" (orphaned descendants are re-parented to it, even ones that left the process
# group), starts bwrap or the harness, and when that ends, or on SIGTERM from the evaluator, kills
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
