"""Asynchronous calls: the record a queued call is, and the pure rules about it.

A call is queued by `POST /async-function/<name>` (faas/calls_api.py), kept in
NATS JetStream (faas/broker.py) and made by the gateway's workers
(faas/worker.py). Everything a worker needs travels in the message: the
request (method, path, query, headers) as the `Faas-Call` header, its body as
the message data. A retry is a new message carrying the attempts made and
the last error, so a restart of the gateway or of nats-server loses neither.

Delivery is at least once: a call whose worker died mid-way (or whose answer
could not be acknowledged) is made again, with the same `X-Call-Id`.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import urlsplit

from .egress import Allow
from .errors import InvalidCallback
from .spec import NAME_RE

# Async call ids also name NATS subjects: no '.', unlike X-Call-Id in general.
ASYNC_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
CALL_HEADER = "Faas-Call"
# Request headers never queued: meaningful for one connection, recomputed, or
# the platform's own (a worker sets X-Call-Id; the callback URL is ours to read).
NOT_QUEUED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "x-call-id",
        "x-callback-url",
    }
)  # fmt: skip


def async_call_id(given: str | None) -> str:
    """The caller's X-Call-Id when it can name a subject, else a new one."""
    if given is not None and ASYNC_CALL_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Call:
    """One queued call: the request to make, and how its attempts went so far."""

    id: str
    function: str
    method: str
    path: str  # after /function/<name>, "/" at least
    query: str
    headers: list[tuple[str, str]]
    enqueued: float  # Unix time of the 202
    callback: str | None = None
    attempts: int = 0  # made so far
    last_error: str | None = None
    not_before: float = 0.0  # Unix time before which it is not due (a retry's backoff)
    last_status: int | None = None

    def encode(self) -> str:
        """The `Faas-Call` header: ASCII JSON, one line."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Call:
        """The call a `Faas-Call` header carries; ValueError (or KeyError, TypeError)
        for one this gateway would not have queued."""
        data = json.loads(text)
        data["headers"] = [(str(k), str(v)) for k, v in data["headers"]]
        call = cls(**data)
        if not (
            NAME_RE.fullmatch(call.function)
            and ASYNC_CALL_ID.fullmatch(call.id)
            and call.path.startswith("/")
            and call.method.isalpha()
        ):
            raise ValueError("not a call this gateway queued")
        return call

    def retried(self, error: str, status: int | None, not_before: float) -> Call:
        return replace(
            self,
            attempts=self.attempts + 1,
            last_error=error,
            last_status=status,
            not_before=not_before,
        )

    def view(self, state: str) -> dict[str, object]:
        """What `faas calls` shows of it."""
        return {
            "id": self.id,
            "function": self.function,
            "state": state,
            "method": self.method,
            "path": self.path,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "enqueued": self.enqueued,
            "not_before": self.not_before or None,
            "callback": self.callback,
        }


def queued_headers(
    raw: Iterable[tuple[bytes, bytes]], strip: Sequence[str]
) -> list[tuple[str, str]]:
    """The request headers a call keeps (latin-1, as HTTP carries them)."""
    dropped = NOT_QUEUED | {h.lower() for h in strip}
    return [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in raw
        if k.decode("latin-1").lower() not in dropped
    ]


# --- retries ------------------------------------------------------------------


def retryable(status: int) -> bool:
    """429 and 5xx are tried again; any other answer is final."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to first * 2^(n-1)."""

    first: float
    most: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (>= 1)."""
        ceiling = min(self.most, self.first * 2 ** max(attempts - 1, 0))
        # Half fixed, half random: never 0, and a burst of failures spreads out.
        return float(ceiling / 2 + self.rng.uniform(0, ceiling / 2))


# --- callback URLs (SSRF) -----------------------------------------------------


def check_callback(
    url: str,
    allow: Sequence[Allow],
    refused_hosts: Iterable[str] = (),
    resolve: bool = True,
) -> str:
    """`url` if a callback may be sent there, else InvalidCallback (see
    `callback_addresses`)."""
    callback_addresses(url, allow, refused_hosts, resolve)
    return url


@dataclass(frozen=True)
class Pinned:
    """A callback request to the address that was checked, not to whatever the
    name resolves to when the client connects (DNS rebinding): the URL with that
    address, the Host header and the TLS server name of the original."""

    url: str
    host: str
    extensions: dict[str, str]


def pinned(url: str, address: str) -> Pinned:
    parts = urlsplit(url)
    assert parts.hostname is not None
    port = f":{parts.port}" if parts.port else ""
    ip = f"[{address}]" if ":" in address else address
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + ip + port
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return Pinned(
        parts._replace(netloc=netloc, fragment="").geturl(), parts.hostname + port, extensions
    )


def callback_addresses(
    url: str,
    allow: Sequence[Allow],
    refused_hosts: Iterable[str] = (),
    resolve: bool = True,
) -> list[str]:
    """The addresses `url`'s host resolves to, if a callback may be sent to each,
    else InvalidCallback.

    Refused unless on the allow-list (FAAS_CALLBACK_ALLOW): any address that is
    not globally routable (loopback, link-local, private networks, the
    function network, the engine's bridges), any address of this host (the
    platform itself), and `refused_hosts` (the engine's)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidCallback(url, "must be an http:// or https:// URL with a host")
    if len(url) > 2048 or any(c in url for c in " \r\n\t"):
        raise InvalidCallback(url, "must be at most 2048 characters without whitespace")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidCallback(url, "has an invalid port") from None
    addresses = _addresses(parts.hostname, port) if resolve else [parts.hostname]
    refused = {a for host in refused_hosts for a in _addresses(host, port, strict=False)}
    for text in addresses:
        address = ipaddress.ip_address(text)
        if any(_allowed(address, port, a) for a in allow):
            continue
        if text in refused or not address.is_global or _is_local(address):
            raise InvalidCallback(
                url,
                f"{address} is this host, the engine or not a public address; "
                "FAAS_CALLBACK_ALLOW lists the ones callbacks may reach",
            )
    return addresses


def engine_hosts(docker_host: str | None) -> tuple[str, ...]:
    """The engine's host when it is reached over TCP (DOCKER_HOST=tcp://...)."""
    parts = urlsplit(docker_host or "")
    return (parts.hostname,) if parts.scheme in ("tcp", "http", "https") and parts.hostname else ()


def _addresses(host: str, port: int, strict: bool = True) -> list[str]:
    try:
        return [ipaddress.ip_address(host.strip("[]")).compressed]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        if not strict:
            return []
        raise InvalidCallback(host, "the host name does not resolve") from None
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, a: Allow) -> bool:
    if address not in a.network or a.proto != "tcp":
        return False
    if a.ports is None:
        return True
    low, _, high = a.ports.partition(":")
    return int(low) <= port <= int(high or low)


def _is_local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of this host (of any interface): binding to it works only then."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
