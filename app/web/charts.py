"""The view's charts, built once per outcome version and display choice, and their ETags.

A stored outcome has a digest (bff.store.windows): the AGP figure, the daily profiles and their text alternatives
(`presenters.charts_of`) depend only on it, the period, the display unit and the daily page, so they are cached
under those (the key names no patient). With `REDIS_URL` the cache is Redis, shared by every app process; without
it a bounded in-process cache. Both keep an entry for `ttl` seconds at most: the values are a patient's glucose
traces, and no process keeps them for ever.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
import redis

from engine import ENGINE_VERSION

#: Bump when what `charts_of` builds changes shape: cached entries of another version are never read.
CHARTS_VERSION = "3"
#: The unit part of a page's key when the clinician chose none: the document's own (`presenters.display_unit`).
AUTO_UNIT = "auto"
TTL_S = 900
MAX_ENTRIES = 256
V = TypeVar("V")


class ChartCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class ExpiringLru(Generic[V]):
    """At most `max_entries` entries, each for `ttl` seconds, least recently used first out; expired entries go
    whenever one is stored. The one in-process cache of the app (charts here, the banner in app.web.common): what
    it holds may be PHI, so nothing is kept without a bound and a TTL. Thread-safe."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: str) -> tuple[bool, V | None]:
        """(True, the value) while a fresh entry is held (the value may itself be None), else (False, None)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            if entry[0] <= self.clock():
                del self._entries[key]
                return False, None
            self._entries.move_to_end(key)
            return True, entry[1]

    def put(self, key: str, value: V, *, ttl: float | None = None) -> None:
        """Hold `value` for the cache's TTL, or for `ttl` seconds when that is shorter (what is left of an entry's
        life elsewhere)."""
        with self._lock:
            now = self.clock()
            self._entries[key] = (now + (self.ttl if ttl is None else min(ttl, self.ttl)), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            for k in [k for k, (until, _v) in self._entries.items() if until <= now]:
                del self._entries[k]

    def __len__(self) -> int:
        return len(self._entries)


class MemoryCache(ExpiringLru[dict[str, Any]]):
    """The charts' cache without Redis: at most MAX_ENTRIES entries, each for TTL_S seconds."""

    def __init__(self, *, ttl: float = TTL_S, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        super().__init__(ttl=ttl, max_entries=max_entries, clock=clock)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.lookup(key)[1]


class RedisCache:
    """Shared by every app process; entries expire after `ttl` seconds."""

    def __init__(self, url: str, *, ttl: int = TTL_S, prefix: str = "glucobridge:charts:") -> None:
        self.client = redis.Redis.from_url(url)
        self.ttl, self.prefix = ttl, prefix

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(self.prefix + key)
        if raw is None:
            return None
        value: dict[str, Any] = orjson.loads(raw)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.client.set(self.prefix + key, orjson.dumps(value), ex=self.ttl)


def chart_cache(redis_url: str | None) -> ChartCache:
    return RedisCache(redis_url) if redis_url else MemoryCache()


def charts_key(digest: str, days: int, unit: str, page: int) -> str:
    """The cache key (and the heart of the ETag): no patient in it, only the outcome's digest."""
    return f"{CHARTS_VERSION}:{ENGINE_VERSION}:{digest}:{days}:{unit}:{page}"


def figures_key(key: str) -> str:
    """The entry of the charts' data (`presenters.charts_of`) beside the page's entry of the same key (its HTML)."""
    return f"{key}:figures"


def etag(*parts: object) -> str:
    return '"' + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether a request's If-None-Match names this ETag (weak or strong, one of several, or *)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or tag in tags
