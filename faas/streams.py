"""Streaming helpers: blocking engine streams relayed to async responses, and
request bodies spooled to disk."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, TypeVar, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from .errors import FaasError, InvalidSpec
from .provider import LogStream

T = TypeVar("T")
_END = object()


async def iterate(blocking: Iterable[T]) -> AsyncIterator[T]:
    """Walk a blocking iterator from async code, one step per worker thread."""
    items = iter(blocking)
    while True:
        item = await run_in_threadpool(next, items, _END)
        if item is _END:
            return
        yield cast(T, item)


async def prepend(
    first: dict[str, object] | None, rest: Iterator[dict[str, object]]
) -> AsyncIterator[dict[str, object]]:
    """`first` (already read, so that its failure was a plain 4xx), the rest, then
    {"status": "ready"}; a later failure becomes the last line."""
    try:
        if first is not None:
            yield first
            async for event in iterate(rest):
                yield event
        yield {"status": "ready"}
    except FaasError as exc:
        yield {"error": exc.message, "detail": exc.detail()}


def ndjson(events: AsyncIterator[dict[str, object]]) -> StreamingResponse:
    async def encode() -> AsyncIterator[bytes]:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"

    return StreamingResponse(encode(), media_type="application/x-ndjson")


async def relay(stream: LogStream) -> AsyncIterator[bytes]:
    """Relay a blocking log stream; closing it on disconnect frees its thread."""
    try:
        async for chunk in iterate(stream):
            yield chunk
    finally:
        stream.close()


async def spool(request: Request, limit: int) -> IO[bytes]:
    """The request body in a temporary file (memory first, disk when large)."""
    spooled = tempfile.SpooledTemporaryFile(max_size=32 << 20)  # noqa: SIM115 - returned
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            spooled.close()
            raise InvalidSpec("body", f"larger than {limit} bytes")
        spooled.write(chunk)
    spooled.seek(0)
    return cast(IO[bytes], spooled)


async def lines(stream: LogStream) -> AsyncIterator[str]:
    """Whole lines of a blocking log stream (its chunks may split them)."""
    pending = b""
    async for chunk in relay(stream):
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


async def replica_lines(
    streams: list[tuple[str, LogStream]], *, follow: bool, tail: int = 0
) -> AsyncIterator[tuple[str, str]]:
    """(replica, line) from every replica's `--timestamps` log stream: as they
    come when following, else in time order (the last `tail` > 0 of them)."""
    if not follow:
        found = [(line, replica) for replica, stream in streams async for line in lines(stream)]
        found.sort(key=lambda pair: pair[0].partition(" ")[0])
        for line, replica in found[-tail:] if tail > 0 else found:
            yield replica, line
        return
    queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(maxsize=1000)

    async def pump(replica: str, stream: LogStream) -> None:
        try:
            async for line in lines(stream):
                await queue.put((replica, line))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(r, s)) for r, s in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
