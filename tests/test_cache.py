"""The registry's bounded caches and single-flight sharing."""

from __future__ import annotations

import asyncio

import pytest

from stratus.registry.cache import LRUCache, SingleFlight, SizedLRUCache


def test_lru_evicts_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert len(cache) == 2


def test_lru_zero_entries_stores_nothing() -> None:
    cache: LRUCache[str, int] = LRUCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_sized_lru_bounded_by_cost() -> None:
    cache: SizedLRUCache[str, bytes] = SizedLRUCache(10)
    cache.put("a", b"aaaa", 4)
    cache.put("b", b"bbbb", 4)
    cache.put("c", b"cccc", 4)
    assert cache.get("a") is None
    assert cache.get("b") == b"bbbb"
    assert cache.total_bytes == 8
    cache.put("huge", b"x" * 11, 11)
    assert cache.get("huge") is None
    assert cache.total_bytes == 8


def test_sized_lru_replacing_key_recounts() -> None:
    cache: SizedLRUCache[str, bytes] = SizedLRUCache(10)
    cache.put("a", b"aaaa", 4)
    cache.put("a", b"aa", 2)
    assert cache.total_bytes == 2
    assert len(cache) == 1


def test_single_flight_shares_one_call() -> None:
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "value"

    async def scenario() -> list[str]:
        flight: SingleFlight[str, str] = SingleFlight()
        results = await asyncio.gather(*(flight.run("repo", fetch) for _ in range(50)))
        assert len(flight) == 0
        return results

    assert asyncio.run(scenario()) == ["value"] * 50
    assert calls == 1


def test_single_flight_survives_cancelled_caller() -> None:
    async def fetch() -> str:
        await asyncio.sleep(0.01)
        return "value"

    async def scenario() -> str:
        flight: SingleFlight[str, str] = SingleFlight()
        first = asyncio.ensure_future(flight.run("repo", fetch))
        second = asyncio.ensure_future(flight.run("repo", fetch))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(scenario()) == "value"


def test_single_flight_propagates_errors() -> None:
    async def fetch() -> str:
        raise KeyError("gone")

    async def scenario() -> None:
        flight: SingleFlight[str, str] = SingleFlight()
        with pytest.raises(KeyError):
            await flight.run("repo", fetch)

    asyncio.run(scenario())
