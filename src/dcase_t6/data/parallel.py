"""Bounded parallel map: results in input order with a limited number of calls in flight."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor


def ordered_map(executor: Executor, function: Callable, items: Iterable, window: int) -> Iterator:
    """``function(item)`` for each item, in order, keeping at most ``window`` submitted (memory stays flat)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
