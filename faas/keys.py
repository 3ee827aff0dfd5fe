"""Invoke keys: signed by the server, scoped to one function, expiring, revocable.

    fk1.<kid>.<function>.<expires>.<signature>

`kid` is 12 random hex digits, `expires` Unix seconds (0: never), `signature`
HMAC-SHA256 of everything before it under the server's signing secret
(`<state dir>/signing-key`, 0600), base64url without padding. Checking a key
needs only that secret and the revocation list (`<state dir>/revoked-keys`, one
kid a line): no database, and a restart loses nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .auth import secret_file
from .config import Settings
from .errors import Forbidden, InvalidSpec, Unauthorized

VERSION = "fk1"
KID_RE = re.compile(r"^[0-9a-f]{12}$")
MAX_KEY_CHARS = 256


@dataclass(frozen=True)
class IssuedKey:
    kid: str
    key: str
    expires: int | None  # Unix seconds; None: never

    def to_json(self) -> dict[str, object]:
        return {"kid": self.kid, "key": self.key, "expires": self.expires}


def check_kid(kid: str) -> str:
    if not KID_RE.match(kid):
        raise InvalidSpec("kid", "a key id is 12 lowercase hex digits")
    return kid


class Keys:
    """Issues and checks invoke keys; keeps nothing but a cached revocation list."""

    def __init__(
        self,
        secret: str,
        revoked_file: Path,
        clock: Callable[[], float] = time.time,
        publish: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._secret = secret.encode()
        # Told the revoked kids after each revocation: Traefik's key check
        # (faas/traefik.py, publish_keys) takes them from its configuration.
        self.publish = publish
        self._publishing = threading.Lock()  # one publication at a time, in order
        self._revoked_file = revoked_file
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._revoked_stamp: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(secret_file(settings.signing_key_file), settings.revoked_keys_file)

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def create(self, function: str, ttl: int | None) -> IssuedKey:
        kid = secrets.token_hex(6)
        expires = None if ttl is None else int(self._clock()) + ttl
        payload = f"{VERSION}.{kid}.{function}.{expires or 0}"
        return IssuedKey(kid, f"{payload}.{self._sign(payload)}", expires)

    def check(self, function: str, key: str | None) -> str:
        """The key's id if `key` may invoke `function`; else Unauthorized (no key)
        or Forbidden (any other reason)."""
        if not key:
            raise Unauthorized("this function needs a key (Authorization: Bearer or X-Faas-Key)")
        parts = key.split(".") if len(key) <= MAX_KEY_CHARS else []
        if len(parts) != 5 or parts[0] != VERSION:
            raise Forbidden("not a valid key")
        payload, signature = key.rpartition(".")[::2]
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            raise Forbidden("not a valid key")
        _, kid, scope, expires, _ = parts
        if scope != function:
            raise Forbidden(f"this key is for another function ({scope!r})")
        if expires != "0" and int(expires) <= self._clock():
            raise Forbidden(f"key {kid} has expired")
        if kid in self.revoked():
            raise Forbidden(f"key {kid} has been revoked")
        return kid

    def revoke(self, kid: str) -> None:
        check_kid(kid)
        with self._lock:
            self._revoked_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._revoked_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(kid + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._revoked_stamp = None
        if self.publish is not None:
            with self._publishing:
                self.publish(self.revoked())

    def revoked(self) -> frozenset[str]:
        """The revoked kids, re-read only when the file changes (several gateways may share it)."""
        try:
            st = self._revoked_file.stat()
        except FileNotFoundError:
            return frozenset()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._revoked_stamp:
                lines = self._revoked_file.read_text().split()
                self._revoked = frozenset(k for k in lines if KID_RE.match(k))
                self._revoked_stamp = stamp
            return self._revoked


def presented_key(authorization: str | None, faas_key: str | None) -> str | None:
    """The key a caller sent: `X-Faas-Key`, else `Authorization: Bearer <key>`."""
    if faas_key:
        return faas_key.strip()
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
