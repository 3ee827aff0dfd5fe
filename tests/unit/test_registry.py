"""Telling a missing image from an unreachable registry (faas/registry.py), on the
engine's own words (dockerd 20.10, recorded from real pulls)."""

from __future__ import annotations

import pytest

from faas.errors import ImageNotFound, RegistryUnreachable
from faas.registry import pull_failure, registry_of


@pytest.mark.parametrize(
    ("image", "reason", "status"),
    [
        ("127.0.0.1:1/x:y",
         'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', 500),
        ("does/not-exist:nope",
         'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on '
         "10.255.255.53:53: no such host", 500),
        ("r.example/x:y",
         'Get "https://r.example/v2/": net/http: request canceled while waiting for connection '
         "(Client.Timeout exceeded while awaiting headers)", 500),
        ("r.example/x:y", 'Get "https://r.example/v2/": net/http: TLS handshake timeout', 500),
        ("r.example/x:y", "x509: certificate signed by unknown authority", 500),
        ("r.example:5000/x:y",
         'Get "https://r.example:5000/v2/": http: server gave HTTP response to HTTPS client', 500),
        # Mid-stream, after the manifest: the registry went away during the layers.
        ("r.example/x:y", "read tcp 10.0.0.2:50000->10.0.0.9:443: read: connection reset by peer",
         None),
    ],
)  # fmt: skip
def test_an_unreachable_registry_is_said_so(image: str, reason: str, status: int | None) -> None:
    error = pull_failure(image, reason, status)
    assert isinstance(error, RegistryUnreachable)
    assert error.message.startswith(f"cannot reach the registry {registry_of(image)} to pull")
    assert reason in error.message


@pytest.mark.parametrize(
    ("image", "reason", "status"),
    [
        ("localhost:5000/none:here",
         "manifest for localhost:5000/none:here not found: manifest unknown: "
         "manifest unknown", 404),
        ("does/not-exist:nope",
         "pull access denied for does/not-exist, repository does not exist or may require "
         "'docker login': denied: requested access to the resource is denied", 404),
        ("localhost:5000/private:x",
         'Head "http://localhost:5000/v2/private/manifests/x": no basic auth credentials', 500),
        ("localhost:5000/private:x", "unauthorized: authentication required", 500),
    ],
)  # fmt: skip
def test_what_the_registry_answered_is_image_not_found(
    image: str, reason: str, status: int | None
) -> None:
    error = pull_failure(image, reason, status)
    assert isinstance(error, ImageNotFound)
    assert error.message == f"image {image!r} not found: {reason}"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("echo", "docker.io"),
        ("library/python:3.12", "docker.io"),
        ("localhost/x", "localhost"),
        ("localhost:5000/a/b:c", "localhost:5000"),
        ("127.0.0.1:1/x:y", "127.0.0.1:1"),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry
