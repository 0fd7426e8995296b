"""Bounded caches for the hot path, and single-flight sharing of one S3 request.

The registry runs one event loop per process and touches these structures only from
it, so they need no locks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A mapping that keeps at most `max_entries` items, dropping the least recently used."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """Return the value without counting a hit or changing its recency."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        if self.max_entries <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)


class SizedLRUCache(Generic[K, V]):
    """An LRU bounded by the total cost (in bytes) that callers give for their values.

    A value that costs more than the whole budget is not stored.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, cost: int) -> None:
        if cost > self.max_bytes:
            return
        previous = self._items.pop(key, None)
        if previous is not None:
            self.total_bytes -= previous[1]
        self._items[key] = (value, cost)
        self.total_bytes += cost
        while self.total_bytes > self.max_bytes:
            _, (_, evicted_cost) = self._items.popitem(last=False)
            self.total_bytes -= evicted_cost


T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Runs at most one call per key at a time; concurrent callers share its result.

    The call runs in its own task, so a caller that is cancelled (a client that went
    away) does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: K, call: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)
