"""The admin token: where it comes from and how it is checked."""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
from pathlib import Path

from .config import Settings
from .errors import ProviderError


def admin_token(settings: Settings) -> str:
    """FAAS_ADMIN_TOKEN if set, else the token file, created on first use."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    return secret_file(settings.token_file)


def secret_file(path: Path) -> str:
    """The secret in `path`, generated (mode 0600) on first use."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return _create_token_file(path)
    if len(secret) < 16:
        raise ProviderError(
            f"{path} holds no usable secret (16+ characters); delete it to regenerate"
        )
    return secret


def _create_token_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    # Write a private temp file, then link it into place: the link either
    # publishes a complete token or fails because another process won.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return token


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
