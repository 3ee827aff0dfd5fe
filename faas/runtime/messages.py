"""What a handler sees and returns: `Request`, `Response`, and their encoding to HTTP.

Standard library only: this package is copied into function images as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# JSON values are open-ended; `Any` keeps `dict[str, int]` and friends acceptable.
Body = str | bytes | dict[str, Any] | list[Any] | None
HeaderValues = Mapping[str, str | Sequence[str]]

# RFC 9110 token characters; anything else in a header name could split the response.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing belongs to the runtime: it computes Content-Length and decides on keep-alive.
_RUNTIME_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_NO_BODY = frozenset({204, 304})


class BadRequest(ValueError):
    """The request cannot be understood (e.g. `Request.json()` on a body that is not JSON).

    Left unhandled it becomes a 400 whose detail is this message.
    """


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive request headers; repeated fields are joined by ", "."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = [(name.lower(), value) for name, value in fields]
        self._joined: dict[str, str] = {}
        for name, value in self._fields:
            seen = self._joined.get(name)
            self._joined[name] = value if seen is None else f"{seen}, {value}"

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        """Every value of a repeated field, in order (`Cookie`, `Forwarded`...)."""
        wanted = name.lower()
        return [value for field_name, value in self._fields if field_name == wanted]

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON; `BadRequest` (a 400 if not caught) when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class Response:
    """A reply with a chosen status or headers; the body is encoded like a plain return."""

    body: Body = None
    status: int = 200
    headers: HeaderValues = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A response ready for the wire (no Content-Length: the server adds it)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False  # the connection cannot be reused (e.g. its body was not read)


def encode(result: object) -> Reply:
    """Turn what a handler returned into a `Reply`; `TypeError`/`ValueError` if it cannot."""
    if not isinstance(result, Response):
        body, content_type = _encode_body(result)
        return Reply(204 if result is None else 200, _content_type(content_type), body)
    _check_status(result.status)
    body, content_type = _encode_body(result.body)
    headers = _header_fields(result.headers)
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers = _content_type(content_type) + headers
    if result.status in _NO_BODY:
        body = b""
    return Reply(result.status, headers, body)


def json_reply(status: int, payload: Mapping[str, object], *, close: bool = False) -> Reply:
    return Reply(status, _content_type("application/json"), _json(payload), close)


def _encode_body(body: object) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    if isinstance(body, bytes | bytearray):
        return bytes(body), "application/octet-stream"
    if isinstance(body, dict | list):
        return _json(body), "application/json"
    raise TypeError(
        f"handler returned {type(body).__name__}; expected str, bytes, dict, list, None "
        "or Response (an async handler must be declared `async def`)"
    )


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _content_type(value: str | None) -> list[tuple[str, str]]:
    return [] if value is None else [("Content-Type", value)]


def _check_status(status: object) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"response status must be an int from 200 to 599, not {status!r}")


def _header_fields(headers: HeaderValues) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for name, values in headers.items():
        if name.lower() in _RUNTIME_HEADERS:
            continue
        listed = values if isinstance(values, list | tuple) else [values]
        fields.extend(_checked_field(name, value) for value in listed)
    return fields


def _checked_field(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"response header {name!r} must be a str with str values")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid response header name {name!r}")
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"response header {name} contains a line break or NUL")
    return name, value
