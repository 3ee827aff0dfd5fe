"""What a failed pull says: the image is not there, or its registry could not be reached.

The engine reports both as text (and an HTTP status: 404 for a manifest the
registry does not have, 500 for the rest); this is the one place that reads
it, for the Docker provider's pull.
"""

from __future__ import annotations

from .errors import ImageNotFound, RegistryUnreachable

# How dockerd words a registry it could not talk to (Go's net and net/http
# errors: DNS, refused or reset connections, timeouts, TLS), lower case.
UNREACHABLE = (
    "dial tcp",
    "connection refused",
    "connection reset",
    "no such host",
    "server misbehaving",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "i/o timeout",
    "timeout exceeded",
    "deadline exceeded",
    "tls handshake",
    "x509:",
    "http response to https client",
    "unexpected eof",
)

DEFAULT_REGISTRY = "docker.io"


def registry_of(image: str) -> str:
    """The registry a reference pulls from: its first component when that names a
    host (a dot, a port or `localhost`, as the distribution grammar has it)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def pull_failure(
    image: str, reason: str, status: int | None = None
) -> ImageNotFound | RegistryUnreachable:
    """The error for a pull of `image` that failed with the engine's `reason`
    (and the engine's HTTP `status`, when it refused before streaming)."""
    lowered = reason.lower()
    if status != 404 and any(marker in lowered for marker in UNREACHABLE):
        return RegistryUnreachable(image, registry_of(image), reason)
    return ImageNotFound(image, reason)
