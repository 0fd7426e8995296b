"""Parsed `index.json` per repository, kept fresh with conditional GETs.

An entry is used as it is for `freshness` seconds after it was last checked. After
that the next request revalidates it with `If-None-Match: <etag>`; concurrent
revalidations of one repository share one S3 request. A repository without
`index.json` is remembered as missing for the same window, so a new push appears
within it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stratus import storage
from stratus.oci.index import IndexTable, InvalidIndex, parse_index
from stratus.registry.cache import LRUCache, SingleFlight
from stratus.registry.errors import InternalError, NameUnknown

logger = logging.getLogger(__name__)

RunInThread = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class IndexEntry:
    """The state of one repository's `index.json` as last read.

    `table` is the last good parse (None when the repository is missing or only a
    broken index.json was ever seen). `etag` is the ETag of the last object read,
    good or broken, so a broken index.json is fetched and logged once per ETag.
    """

    table: IndexTable | None
    etag: str | None
    checked_at: float
    broken_reason: str | None = None
    derived: dict[str, Any] = field(default_factory=dict)


class IndexCache:
    """An LRU of IndexEntry by repository, refreshed through `run_in_thread`."""

    def __init__(
        self,
        store: storage.Storage,
        run_in_thread: RunInThread,
        *,
        freshness: float,
        max_entries: int,
        max_index_bytes: int,
    ) -> None:
        self._storage = store
        self._run = run_in_thread
        self._freshness = freshness
        self._max_index_bytes = max_index_bytes
        self._entries: LRUCache[str, IndexEntry] = LRUCache(max_entries)
        self._refreshes: SingleFlight[str, IndexEntry] = SingleFlight()
        # Lookups served from memory within the window, and lookups that went to S3.
        self.hits = 0
        self.misses = 0

    async def entry(self, repository: str) -> IndexEntry:
        """Return the repository's entry, raising NameUnknown or InternalError."""
        entry = self._entries.get(repository)
        if entry is None or time.monotonic() - entry.checked_at >= self._freshness:
            self.misses += 1
            entry = await self._refreshes.run(repository, lambda: self._refresh(repository))
        else:
            self.hits += 1
        return _usable(repository, entry)

    async def table(self, repository: str) -> IndexTable:
        entry = await self.entry(repository)
        assert entry.table is not None
        return entry.table

    async def _refresh(self, repository: str) -> IndexEntry:
        previous = self._entries.peek(repository)
        etag = previous.etag if previous is not None else None
        key = storage.index_key(repository)
        started = time.monotonic()
        try:
            stored = await self._run(
                self._storage.get, key, max_bytes=self._max_index_bytes, if_none_match=etag
            )
        except storage.NotModified:
            assert previous is not None
            previous.checked_at = started
            return previous
        except storage.NotFound:
            entry = IndexEntry(table=None, etag=None, checked_at=started)
            self._entries.put(repository, entry)
            return entry
        except storage.ObjectTooLarge as error:
            return self._keep_or_break(repository, previous, error.etag, started, f"too large: {error}")

        try:
            table = parse_index(stored.body)
        except InvalidIndex as error:
            return self._keep_or_break(repository, previous, stored.etag, started, str(error))

        if table.invalid_entries:
            logger.warning(
                "Repository %s: index.json %s has %d invalid entries, skipped: %s",
                repository, stored.etag, len(table.invalid_entries), "; ".join(table.invalid_entries[:5]),
            )
        logger.debug("Repository %s: index.json %s loaded with %d tags.", repository, stored.etag, len(table.tags))
        entry = IndexEntry(table=table, etag=stored.etag, checked_at=started)
        self._entries.put(repository, entry)
        return entry

    def _keep_or_break(
        self, repository: str, previous: IndexEntry | None, etag: str | None, started: float, reason: str
    ) -> IndexEntry:
        """Keep serving the last good index when there is one; remember the broken ETag either way."""
        good = previous.table if previous is not None else None
        logger.error(
            "Repository %s: index.json %s is unusable (%s); %s.",
            repository, etag, reason,
            "serving the last good copy" if good is not None else "answering 500 until it is fixed",
        )
        entry = IndexEntry(table=good, etag=etag, checked_at=started, broken_reason=None if good else reason)
        if good is not None and previous is not None:
            entry.derived = previous.derived
        self._entries.put(repository, entry)
        return entry


def _usable(repository: str, entry: IndexEntry) -> IndexEntry:
    if entry.table is not None:
        return entry
    if entry.broken_reason is not None:
        problem = "too large" if entry.broken_reason.startswith("too large") else "corrupt"
        raise InternalError(
            detail={"repository": repository, "reason": entry.broken_reason},
            message=f"index.json of repository {repository} is {problem}",
        )
    raise NameUnknown(detail={"name": repository})
