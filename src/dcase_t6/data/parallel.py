"""Bounded parallel map (results in input order, a limited number of calls in flight) and worker processes
that never outlive the process they work for."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor

from dcase_t6.common.atomic import process_alive

_PR_SET_PDEATHSIG = 1


def ordered_map(executor: Executor, function: Callable, items: Iterable, window: int) -> Iterator:
    """``function(item)`` for each item, in order, keeping at most ``window`` submitted (memory stays flat)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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

