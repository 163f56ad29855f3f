"""The run directory's two safety rules: one writer at a time, and nothing finished is lost.

    with run_lock(out_dir):        # a second train.py on the same --out_dir gets one line and exit 2
        ...

A stage that trains writes into RUN_DIR/<stage>.partial/ (partial_dir) and, only once it has
finished, takes the place of RUN_DIR/<stage>/ (publish_stage): a typo, a crash, a full disk or
Ctrl-C leaves the finished stage as it was, and sample.py and the eval stage keep reading it.
The swap is two renames; recover_stage repairs a swap that a kill cut in half.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from minilm.config import ConfigError

LOCK_FILE = ".lock"


class RunInUse(ConfigError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(run_dir) -> Iterator[None]:
    """Hold RUN_DIR/.lock for the block (an advisory flock: released by the kernel when the
    process dies, so a killed run never leaves the directory locked)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunInUse(f"{run_dir} is in use by {holder}; wait for it to finish or use another "
                           "--out_dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def partial_dir(stage_dir) -> Path:
    """Where a stage writes until it finishes: RUN_DIR/<stage>.partial."""
    stage_dir = Path(stage_dir)
    return stage_dir.with_name(stage_dir.name + ".partial")


def _old_dir(stage_dir: Path) -> Path:
    return stage_dir.with_name(stage_dir.name + ".old")


def publish_stage(stage_dir) -> None:
    """Put the finished RUN_DIR/<stage>.partial in place of RUN_DIR/<stage> (and drop the old one)."""
    stage_dir = Path(stage_dir)
    old = _old_dir(stage_dir)
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        os.rename(stage_dir, old)
    os.rename(partial_dir(stage_dir), stage_dir)  # a kill between the renames: recover_stage
    shutil.rmtree(old, ignore_errors=True)


def recover_stage(stage_dir) -> None:
    """After a kill inside publish_stage: the previous stage goes back if the new one is not in place."""
    stage_dir = Path(stage_dir)
    old = _old_dir(stage_dir)
    if old.exists():
        if stage_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, stage_dir)
