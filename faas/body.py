"""Request bodies of the management API: bounded in size, parsed defensively.

A body is read in the chunks the server hands over and refused (413) as soon as
it passes the limit, so a hostile upload never sits whole in memory. JSON that
the stdlib parser chokes on (numbers past its 4300-digit limit, nesting past
the interpreter's recursion limit, bytes that are not UTF-8) becomes a 422
naming the reason, as does nesting deeper than any spec needs.
"""

from __future__ import annotations

import json
import sys

from starlette.requests import Request

from .errors import InvalidSpec, PayloadTooLarge

# A spec nests four levels at most (spec -> limits/resources -> ulimits); 64 is
# far beyond any sane body and far below the parser's recursion limit.
MAX_DEPTH = 64


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes; PayloadTooLarge past it.

    A declared Content-Length is judged before anything is read; a chunked (or
    under-declared) body is counted as it arrives."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body of {int(length)} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        body += chunk
    return bytes(body)


async def read_json(request: Request, limit: int) -> object:
    """The body, at most `limit` bytes, as JSON (see `parse_json`)."""
    return parse_json(await read_body(request, limit))


def parse_json(raw: bytes) -> object:
    """`raw` as JSON, or InvalidSpec saying why not; never another exception."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:
        raise InvalidSpec("", f"request body nests deeper than {MAX_DEPTH} levels") from exc
    except UnicodeDecodeError as exc:
        raise InvalidSpec("", f"request body is not valid JSON: not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidSpec("", f"request body is not valid JSON: {exc}") from exc
    except ValueError as exc:
        # The stdlib's only other ValueError here: an integer past
        # sys.get_int_max_str_digits(), refused to keep conversion linear.
        limit = sys.get_int_max_str_digits()
        raise InvalidSpec("", f"request body has an integer over {limit} digits") from exc
    if _nests_deeper(value, MAX_DEPTH):
        raise InvalidSpec("", f"request body nests deeper than {MAX_DEPTH} levels")
    return value


def _no_constant(name: str) -> object:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise InvalidSpec("", f"request body is not valid JSON: {name} is not a JSON value")


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value`;
    iterative, so it holds for any depth the parser let through."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth == limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False
