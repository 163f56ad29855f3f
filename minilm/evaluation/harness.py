"""The harness: the program inside the sandbox that runs a candidate and its tests, and the only
one that can report it "passed". minilm/evaluation/execution.py writes HARNESS to harness.py in
the candidate's folder and runs `python -I -B <folder>/harness.py`; it imports only the standard
library.

A model trained on our verdicts learns whatever earns "passed", so a program must not earn it
without making its asserts hold. It runs in this same interpreter (the tests call its functions),
so the harness keeps what a verdict needs out of the program's cheap reach:

- The job (the tests, a fresh secret, the verdict pipe's number) comes on standard input, which
  then becomes /dev/null: no file the program can open holds the tests or the secret.
- "passed" is the secret, written to the verdict pipe by the *keeper*, an audit hook (PEP 578).
  Python has no way to list or remove audit hooks, so the keeper's closure, which holds the
  secret, is not reachable from the program's frames, globals or modules. The keeper writes the
  secret only when run_tests, in the frame that announced the tests before any program code ran,
  goes on past its loop: after every step returned. Each step is a function whose code and
  defaults the integrity hook keeps from changing, so nothing the program replaces is called there.
- The integrity hook, always on, refuses what reaches the keeper or our memory: the garbage
  collector's object lists, other threads' frames, tracing, new audit hooks (they would run inside
  the keeper), changing the steps, ctypes and CPython's test modules (as if not installed), a
  process's memory file (/proc/<pid>/mem). The harness is also non-dumpable: a process the
  program starts cannot read its memory either.
- Every other verdict is JSON on the same pipe, which anyone may write: with it a program can
  only fail itself.

What a determined program can still do is in docs/sandbox.md ("The verdict").

The guard (guard=True) is the accident guard of docs/sandbox.md: it refuses writes outside the
folder, signals to other processes, new processes, sockets and name lookups. It resolves paths
with the kernel and calls only functions captured before the program runs (a program that
replaces os.fsdecode cannot steer it); it is still not a security boundary: the namespaces are.
"""

HARNESS = r"""
import json, os, sys

# captured before any program code runs: the program may replace the names afterwards
audit, exit_now, write, dumps = sys.audit, os._exit, os.write, json.dumps
fspath, fsencoding, lstat, readlink = os.fspath, sys.getfilesystemencoding(), os.lstat, os.readlink
open_fd, close_fd, decode = os.open, os.close, bytes.decode
partition, rpartition, startswith = str.partition, str.rpartition, str.startswith
O_PATH = os.O_PATH | os.O_CLOEXEC


def read_job():
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)  # the program reads nothing of the job from stdin
    os.dup2(null, 0)
    os.close(null)
    return json.loads(b"".join(chunks))


def stay_unreadable():
    # Non-dumpable: without CAP_SYS_PTRACE no other process may read /proc/<pid>/mem. ctypes is
    # imported here and forgotten, so that the program's own import raises the audit event that
    # the integrity hook refuses (and __main__ holds no ctypes).
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    for name in [name for name in sys.modules if partition(name, ".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]


def keep_verdict(secret, verdict_fd):
    # The keeper. It must never raise, nor call what the program can replace: its frame, and so
    # the secret, would then be within the program's reach.
    getframe = sys._getframe
    tests_frame = None

    def keeper(event, args):
        nonlocal tests_frame
        if event == "minilm.tests" and tests_frame is None:
            tests_frame = getframe(0).f_back  # run_tests, before any program code ran
        elif event == "minilm.passed" and tests_frame is not None and getframe(0).f_back is tests_frame:
            try:
                write(verdict_fd, secret)
            except OSError:  # the program closed the pipe: no verdict, "crashed"
                pass
    return keeper


def resolve(path, dir_fd=None):
    # Where the kernel takes `path`: the real path of what it names or, for a file not there yet,
    # of its folder plus its name; None when that cannot be told.
    if isinstance(path, int):
        return None
    path = fspath(path)  # events carry str or bytes: the call converted a path object first
    path = decode(path, fsencoding, "surrogateescape") if isinstance(path, bytes) else "".join([path])
    if isinstance(dir_fd, int) and dir_fd >= 0 and not startswith(path, "/"):  # events give -1 for none
        path = f"/proc/self/fd/{dir_fd}/{path}"
    suffix = ""
    try:
        fd = open_fd(path, O_PATH)  # follows every link, as the real call will
    except OSError:
        try:
            lstat(path)
            return None  # there but not resolvable: a dangling link, which a write would follow
        except FileNotFoundError:
            pass
        except OSError:
            return None
        folder, _, name = rpartition(path, "/")
        try:
            fd = open_fd(folder or ("/" if startswith(path, "/") else "."), O_PATH)
        except OSError:
            return None
        suffix = "/" + name
    try:
        return readlink(f"/proc/self/fd/{fd}") + suffix
    except OSError:
        return None
    finally:
        close_fd(fd)


def refuse(what):
    raise PermissionError(f"sandbox: {what}")


def install_integrity(steps):
    # always on, guard or not: what keeps the keeper and the harness's memory out of reach
    REFUSED = {"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
               "sys._current_exceptions", "sys.settrace", "sys.setprofile",
               "sys.monitoring.register_callback"}
    FROZEN = {"__code__", "__defaults__", "__kwdefaults__"}
    steps = {id(step) for step in steps}  # by identity: the program's objects' __eq__ is not asked

    def integrity(event, args):
        if event in REFUSED:
            refuse(f"{event} is not allowed")
        elif event == "sys.addaudithook":
            raise RuntimeError("sandbox: no audit hook may be added")  # Python drops it silently
        elif event == "object.__setattr__" and args[1] in FROZEN and id(args[0]) in steps:
            refuse(f"changing the harness's steps ({args[1]}) is not allowed")
        elif event == "import" and (partition(args[0], ".")[0] in ("ctypes", "_ctypes")
                                    or startswith(args[0], "_test")):
            # ImportError, as for a module that is not there: libraries that try ctypes go on
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "open" and not (args[2] or 0) & os.O_PATH:  # resolve() opens with O_PATH
            real = resolve(args[0])
            if real is not None and rpartition(real, "/")[2] == "mem":
                refuse(f"opening a process's memory ({args[0]!r}) is not allowed")
    sys.addaudithook(integrity)


def install_guard(root):
    getpid = os.getpid
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    PATHS = {  # event: (index of a path argument, index of its dir_fd argument or None), ...
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.truncate": ((0, None),),
        "os.utime": ((0, 3),), "shutil.rmtree": ((0, 1),), "os.symlink": ((1, 2),),
        "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),)}
    REFUSED = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
               "subprocess.Popen", "os.killpg", "socket.connect", "socket.bind", "socket.sendto",
               "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.getnameinfo"}

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an open descriptor: checked when it was opened
        real = resolve(path, dir_fd)
        return real is not None and (real == root or startswith(real, root + "/") or real == "/dev/null")

    def guard(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (flags or 0) & WRITE or any(c in (mode or "") for c in "wax+")
            if writing and not inside(path):
                refuse(f"writing {path!r} outside the working directory")
        elif event in PATHS:
            for at, dir_fd_at in PATHS[event]:
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
                if not inside(args[at], dir_fd):
                    refuse(f"{event} outside the working directory")
        elif event == "os.kill" and args[0] != getpid():
            refuse("os.kill of another process")  # 0 and -1 are process groups
        elif event == "socket.__new__" and args[1] != 1:  # AF_UNIX: a socketpair reaches nothing
            refuse("sockets other than Unix ones are not allowed")
        elif event in REFUSED:
            refuse(f"{event} is not allowed")
    sys.addaudithook(guard)


def describe(error):
    try:
        return f"{type(error).__name__}: {error}"[:1000]
    except BaseException:
        return type(error).__name__


def make_step(text, code, namespace, progress, run=exec):
    # one step of run_tests: nothing in it that the program can replace (the integrity hook
    # keeps the function's code and defaults from changing)
    def step(text=text, code=code, namespace=namespace, progress=progress, run=run):
        progress.append(text)  # which step raised, for the verdict's detail only
        run(code, namespace)
    return step


def run_tests(steps):
    # The keeper accepts "passed" only from this frame, past the loop: every step returned.
    audit("minilm.tests")  # before any program code: the keeper notes this frame
    for step in steps:
        step()
    audit("minilm.passed")


def flush_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # exit_now skips the interpreter's own flush
        except BaseException:
            pass


def main():
    job = read_job()
    verdict_fd = job["verdict_fd"]

    def report(status, detail=""):  # any verdict but "passed": JSON, which anyone may write
        flush_output()
        try:
            write(verdict_fd, dumps({"status": status, "detail": detail[:2000]}).encode())
        finally:
            exit_now(0)  # no waiting for the program's threads or atexit handlers

    with open("candidate.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    try:
        program = compile(source, "candidate.py", "exec")
    except BaseException as error:  # SyntaxError, ValueError (NUL bytes), RecursionError
        report("syntax_error", describe(error))
    texts = job["tests"]
    tests = [compile(text, f"test_{i}", "exec") for i, text in enumerate(texts)]
    namespace, progress = {"__name__": "__candidate__"}, []
    steps = tuple(make_step(text, code, namespace, progress)
                  for text, code in [(None, program), *zip(texts, tests)])
    stay_unreadable()
    sys.addaudithook(keep_verdict(job.pop("secret").encode(), verdict_fd))
    if job["guard"]:
        install_guard(os.path.realpath(os.getcwd()))
    install_integrity(steps)  # last: it refuses every audit hook added after it
    try:
        run_tests(steps)
    except BaseException as error:
        text = progress[-1] if progress else None
        if text is None:
            report("crashed", "while defining the program: " + describe(error))
        if isinstance(error, AssertionError):
            report("failed", text + (f"  ({describe(error)})" if str(error) else ""))
        report("crashed", f"{text}: {describe(error)}")
    flush_output()  # the keeper has written "passed"
    exit_now(0)


main()
"""
