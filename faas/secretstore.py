"""Secrets: named values a function reads as files, `/var/openfaas/secrets/<name>`.

    <state dir>/secrets/            0700, one namespace's secrets
        <name>                      0600, the value's bytes, written to a temp
                                    file and renamed into place

A value leaves this module only towards the provider, which makes it readable
inside the containers of the functions that list the secret (`Provider.
mount_secrets`). It is never logged, never put into labels, environment or an
API answer, and no error message quotes it: errors name the secret only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import InvalidSpec, PayloadTooLarge, SecretExists, SecretNotFound

# Where a function finds its secrets (OpenFaaS' path, so its functions run unchanged).
MOUNT_PATH = "/var/openfaas/secrets"
# A DNS label (RFC 1123), as Kubernetes and Docker name secrets: no '/', no '..'.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_SECRETS_PER_FUNCTION = 64


def check_secret_name(name: object, field: str = "name") -> str:
    """A valid secret name, or InvalidSpec saying what one looks like."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidSpec(
            field,
            f"{shown} is not a valid secret name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return name


def value_from(body: Mapping[str, object], text_key: str, raw_key: str) -> bytes:
    """The value a request carries: `raw_key` (base64, binary-safe) wins over
    `text_key` (a string, stored as UTF-8). Errors never quote it."""
    raw, text = body.get(raw_key), body.get(text_key)
    if raw not in (None, ""):
        if not isinstance(raw, str):
            raise InvalidSpec(raw_key, "must be a base64 string")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSpec(raw_key, "is not valid base64") from None
    if text is None:
        raise InvalidSpec(
            text_key, f"send the value as {text_key!r} (text) or {raw_key!r} (base64)"
        )
    if not isinstance(text, str):
        raise InvalidSpec(text_key, "must be a string")
    return text.encode()


class SecretStore:
    """One namespace's secrets in a private directory."""

    def __init__(self, directory: Path, max_bytes: int, min_bytes: int = 0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.directory / check_secret_name(name)

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)  # mkdir's mode does not apply to an existing one

    def names(self) -> list[str]:
        try:
            found = [p.name for p in self.directory.iterdir() if p.is_file()]
        except FileNotFoundError:
            return []
        return sorted(n for n in found if NAME_RE.match(n))  # not the temp files

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise SecretNotFound(name) from None

    def values(self, names: Iterable[str], *, missing_ok: bool = False) -> dict[str, bytes]:
        """name -> value of each of `names`; SecretNotFound for the first missing
        one, unless `missing_ok` (then it is left out)."""
        out = {}
        for name in names:
            try:
                out[name] = self.read(name)
            except SecretNotFound:
                if not missing_ok:
                    raise
        return out

    def create(self, name: str, value: bytes) -> None:
        """A new secret; SecretExists if there is one of that name."""
        path = self._path(name)
        self._check_size(value)
        with self._lock:
            tmp = self._written(value)
            try:
                os.link(tmp, path)  # fails, atomically, when the name is taken
            except FileExistsError:
                raise SecretExists(name) from None
            finally:
                os.unlink(tmp)

    def update(self, name: str, value: bytes) -> None:
        """A new value for an existing secret; SecretNotFound if there is none."""
        path = self._path(name)
        self._check_size(value)
        with self._lock:
            if not path.is_file():
                raise SecretNotFound(name)
            tmp = self._written(value)
            os.replace(tmp, path)

    def remove(self, name: str) -> None:
        path = self._path(name)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise SecretNotFound(name) from None

    def _check_size(self, value: bytes) -> None:
        if len(value) < self.min_bytes:
            raise InvalidSpec("value", f"must have at least {self.min_bytes} byte(s) here")
        if len(value) > self.max_bytes:
            raise PayloadTooLarge(
                f"a secret's value may have at most {self.max_bytes} bytes "
                f"(FAAS_SECRET_MAX_BYTES; on a Swarm, Docker's limit); this one has {len(value)}"
            )

    def _written(self, value: bytes) -> str:
        """A temp file (0600) in the store holding `value`, flushed to disk."""
        self._ensure_directory()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp


def write_private_copy(folder: Path, values: Mapping[str, bytes]) -> None:
    """Make `folder` hold exactly `values` as files (name -> bytes), each replaced
    atomically, so a reader sees the old value or the new one, never half."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        os.chmod(tmp, 0o444)  # any user of the function's image may read it
        os.replace(tmp, folder / check_secret_name(name))
    for stale in folder.iterdir():
        if stale.name not in values:
            stale.unlink()
