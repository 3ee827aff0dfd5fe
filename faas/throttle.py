"""Throttle: a per-client limit on failed credentials, with a growing backoff.

After `limit` wrong admin tokens or invoke keys within `window` seconds, a
client address is locked out: every request from it is answered 429 with
Retry-After, whatever credentials it carries, until the lockout ends. The
first lockout lasts `backoff` seconds and each further one twice the one
before, up to `max_backoff`; a client forgotten (quiet for a window after its
last failure and lockout) starts again from the first.

Why refuse a right token during a lockout: a guesser that could still tell a
200 from a 429 would lose nothing to the throttle. Other addresses are never
affected, so the admin elsewhere always gets in. IPv6 clients are counted per
/64, the block one host usually has to itself.

At most `max_clients` addresses are tracked; past that the one idle longest
is forgotten, so memory stays bounded under a flood of addresses. Failures
are logged with the client address, never the credential presented. The
throttle is used from the event loop only (no lock).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger
from starlette.requests import Request

from .config import Settings
from .errors import TooManyRequests


@dataclass
class _Record:
    failures: deque[float]  # times of the latest failures, at most `limit`
    strikes: int = 0  # lockouts so far
    until: float = 0.0  # locked out until then
    last: float = field(default=0.0)  # the latest failure or lockout end


def client_key(host: str | None) -> str:
    """The address a throttle counts under: an IPv6 address's /64, else the host."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Throttle:
    """Counts failed credentials per client and locks out those with too many."""

    def __init__(
        self,
        limit: int,
        window: float,
        backoff: float,
        max_backoff: float,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> Throttle:
        return cls(
            settings.auth_max_failures,
            settings.auth_failure_window,
            settings.auth_backoff,
            settings.auth_max_backoff,
            settings.auth_max_clients,
        )

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, host: str | None) -> float:
        """Seconds left of the client's lockout; 0 when it may try."""
        record = self._live(client_key(host))
        return 0.0 if record is None else max(0.0, record.until - self._clock())

    def check(self, host: str | None) -> None:
        """Raise TooManyRequests while the client is locked out."""
        left = self.retry_after(host)
        if left > 0:
            raise TooManyRequests(
                "too many failed attempts from your address; try again later", left
            )

    def failed(self, host: str | None, what: str) -> None:
        """Count a refused credential (`what`, e.g. "admin token") from the client."""
        if not self.limit:
            return
        key, now = client_key(host), self._clock()
        record = self._live(key) or _Record(deque(maxlen=self.limit))
        self._clients[key] = record
        self._clients.move_to_end(key)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        record.failures.append(now)
        record.last = now
        recent = sum(1 for t in record.failures if t > now - self.window)
        logger.warning("wrong {} from {} ({} in {:g}s)", what, key, recent, self.window)
        if recent >= self.limit:
            lockout = min(self.backoff * 2**record.strikes, self.max_backoff)
            record.strikes += 1
            record.until = record.last = now + lockout
            logger.warning("locking out {} for {:g}s (lockout {})", key, lockout, record.strikes)

    def succeeded(self, host: str | None) -> None:
        """A right credential: forget the client's failures."""
        self._clients.pop(client_key(host), None)

    def _live(self, key: str) -> _Record | None:
        """The client's record, dropped once quiet for a whole window."""
        record = self._clients.get(key)
        if record is not None and self._clock() >= record.last + self.window:
            del self._clients[key]
            return None
        return record


def client_address(request: Request) -> str | None:
    """The caller's address: uvicorn takes it from X-Forwarded-For only when the peer
    is loopback, where Traefik is (its default FORWARDED_ALLOW_IPS), and Traefik
    replaces any X-Forwarded-For its own clients send."""
    return request.client.host if request.client else None
