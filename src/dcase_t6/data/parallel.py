"""Bounded parallel map (results in input order, a limited number of calls in flight), file metadata of many
paths read by several threads, and worker processes that never outlive the process they work for."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

from dcase_t6.common.atomic import process_alive

_PR_SET_PDEATHSIG = 1
NETWORK_THREADS = 16
NETWORK_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                           "sshfs", "9p", "afs", "panfs", "wekafs", "orangefs", "pvfs2"})
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF)  # what Path.exists reads as "not there"


def ordered_map(executor: Executor, function: Callable, items: Iterable, window: int) -> Iterator:
    """``function(item)`` for each item, in order, keeping at most ``window`` submitted (memory stays flat)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def stat_all(paths: list[Path], threads: int | None = None) -> list[tuple[int, int] | None]:
    """The size and modification time (ns) of every path, None where it does not exist, in input order.

    One ``stat`` per path (not an ``exists`` and then a ``stat``). On a network file system, where each call waits
    for a round trip to the server, ``NETWORK_THREADS`` threads read contiguous slices at once so the round trips
    overlap; on a local disk, which answers from the kernel's cache, one thread is fastest
    (``benchmarks/bench_cache_check.py``).

    Args:
        paths: the files.
        threads: how many threads read at once (None: ``NETWORK_THREADS`` when the first path lies on a network
            file system, else 1).

    Returns:
        ``(st_size, st_mtime_ns)`` or None for each path. A path that cannot be reached (missing, a symbolic-link
        loop, a file where a folder should be) is None, as ``Path.exists`` says; other errors propagate.
    """
    if threads is None:
        threads = NETWORK_THREADS if paths and on_network_file_system(paths[0]) else 1
    size = max(1024, -(-len(paths) // max(1, threads)))
    slices = [paths[start:start + size] for start in range(0, len(paths), size)]
    if len(slices) <= 1:
        return _stat_slice(paths)
    with ThreadPoolExecutor(len(slices), thread_name_prefix="stat") as executor:
        return [facts for part in executor.map(_stat_slice, slices) for facts in part]


def on_network_file_system(path: Path, mounts: str | None = None) -> bool:
    """Whether ``path`` lies on a network or cluster file system (NFS, SMB, Lustre, GPFS, BeeGFS, CephFS, ...):
    the type of the longest mount point above it in ``mounts`` (default: ``/proc/self/mounts``; False where that
    cannot be read).

    Args:
        path: a file or folder (need not exist; its absolute form is used, symbolic links not followed).
        mounts: the mount table's text (``device mount-point type options ...`` per line), for tests.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    target, best, kind = os.path.abspath(path), -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind.split(".")[-1] in NETWORK_TYPES


def _stat_slice(paths: list[Path]) -> list[tuple[int, int] | None]:
    facts: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            if err.errno not in _ABSENT:
                raise
            facts.append(None)
        else:
            facts.append((stat.st_size, stat.st_mtime_ns))
    return facts


def die_with_parent(owner: int | None = None, poll_s: float = 0.5) -> None:
    """Make this worker process end when its parent does (call it first thing in a worker).

    On Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) the moment its parent exits, even
    by ``kill -9``. With ``owner`` (the process the work is for, when the parent is a fork server in
    between, or where prctl is missing) a daemon thread also checks every ``poll_s`` seconds that
    ``owner`` still runs and ends this process when it does not.

    Args:
        owner: the pid of the process the worker works for (None: only the parent).
        poll_s: how often the thread checks ``owner``.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent exited before prctl took effect
        os._exit(1)
    if owner is not None:
        threading.Thread(target=_watch, args=(owner, poll_s), name="owner-watchdog", daemon=True).start()


def torch_worker_dies_with_parent(worker_id: int) -> None:
    """``worker_init_fn`` for torch DataLoaders: the loader process's workers end with it."""
    die_with_parent()


def _watch(owner: int, poll_s: float) -> None:
    while process_alive(owner):
        time.sleep(poll_s)
    os._exit(1)

