"""The gateway's workers: make queued asynchronous calls, retry them, call back.

One loop per function pulls from its consumer (faas/broker.py) only as many
calls as it has free slots (the function's `queue.concurrency`, else
FAAS_ASYNC_CONCURRENCY), so a burst of 10,000 calls reaches the function as a
steady stream the autoscaler can follow. Each call goes through
`Invoker.forward`, the path of a cold synchronous request: it wakes the
function if it is at zero.

An attempt that gets 429, a 5xx, no connection or no answer in time is tried
again after a backoff (a new message carrying the attempts and the last
error), until the function's `queue.max_attempts` (else
FAAS_ASYNC_MAX_ATTEMPTS); then the call goes to the dead letters. Any other
answer is final. A call is acknowledged only once its outcome is stored and
its callback sent (or given up), so a gateway killed meanwhile makes the call
again: at least once, with the same X-Call-Id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from loguru import logger
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from . import egress, labels
from .broker import Broker, Stored, received, settle
from .calls import Backoff, Call, callback_addresses, engine_hosts, pinned, retryable
from .config import Settings
from .errors import FaasError, FunctionNotFound, GatewayTimeout, QueueUnavailable
from .invoke import Invoker
from .lifecycle import Lifecycle
from .provider import Function
from .proxy import HOP_BY_HOP
from .spec import FunctionSpec

# End-to-end latency: from the 202 to the final answer (retries included).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# How long a function read from the engine is taken as current: an enqueue and
# a call each cost an engine call otherwise (~50 calls/s on a busy engine).
FUNCTION_TTL = 2.0
# A not-yet-due retry delivered this close to its time is made now.
EARLY = 0.05
GAUGE_INTERVAL = 5.0


class QueueGauges(Collector):
    """Queue depth and the oldest call's age per function, as last read from NATS."""

    def __init__(self) -> None:
        self.depth: dict[str, int] = {}
        self.oldest: dict[str, float] = {}  # Unix time the oldest queued call was accepted

    def collect(self) -> Iterator[Metric]:
        fn = ["function"]
        depth = GaugeMetricFamily(
            "faas_async_queue_depth",
            "Asynchronous calls queued per function (waiting, in flight or to be retried).",
            labels=fn,
        )
        age = GaugeMetricFamily(
            "faas_async_oldest_age_seconds",
            "Age of the oldest queued asynchronous call per function.",
            labels=fn,
        )
        now = time.time()
        for name, count in sorted(self.depth.items()):
            depth.add_metric([name], count)
            oldest = self.oldest.get(name)
            age.add_metric([name], max(now - oldest, 0.0) if oldest else 0.0)
        yield from (depth, age)


class AsyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        fn = ["function"]
        self.enqueued = Counter(
            "faas_async_enqueued", "Asynchronous calls accepted (202).", fn, registry=registry
        )
        self.attempts = Counter(
            "faas_async_attempts",
            "Attempts at asynchronous calls by outcome: ok (2xx/3xx), final (another 4xx), "
            "failed (429, 5xx, no answer: retried or dead-lettered).",
            ["function", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "faas_async_retries", "Asynchronous calls queued again after a failure.", fn,
            registry=registry,
        )  # fmt: skip
        self.dead = Counter(
            "faas_async_dead_letters",
            "Asynchronous calls moved to the dead letters after their last attempt.",
            fn,
            registry=registry,
        )
        self.latency = Histogram(
            "faas_async_latency_seconds",
            "Asynchronous calls: accepted -> final outcome (retries included).",
            fn,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.callbacks = Counter(
            "faas_async_callbacks",
            "Callbacks by outcome (sent, failed, refused).",
            ["outcome"],
            registry=registry,
        )
        self.gauges = QueueGauges()
        registry.register(self.gauges)


# The function's answer headers a callback does not pass on.
_NOT_CALLED_BACK = HOP_BY_HOP | {"content-length", "x-call-id", "host"}


@dataclass
class Outcome:
    """How one attempt ended: the function's answer, or why there was none."""

    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None  # no answer: why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    @property
    def final(self) -> bool:
        """Not to be tried again: an answer other than 429 and 5xx."""
        return self.status is not None and not retryable(self.status)

    def describe(self) -> str:
        return self.error or f"HTTP {self.status}"


class Workers:
    """The per-function loops of one gateway, and what is in flight."""

    def __init__(
        self,
        broker: Broker,
        invoker: Invoker,
        lifecycle: Lifecycle,
        settings: Settings,
        metrics: AsyncMetrics,
    ) -> None:
        self.broker = broker
        self.invoker = invoker
        self.lifecycle = lifecycle
        self.settings = settings
        self.metrics = metrics
        self.backoff = Backoff(settings.async_backoff, settings.async_max_backoff)
        self.callback_allow = egress.parse_allow(settings.callback_allow)
        self.engine_hosts = engine_hosts(os.environ.get("DOCKER_HOST"))
        self.in_flight: dict[str, Call] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # attempts and settlements
        self._functions: dict[str, tuple[float, Function]] = {}
        self._client = httpx.AsyncClient(timeout=settings.callback_timeout, follow_redirects=False)

    # --- running -------------------------------------------------------------

    async def run(self) -> None:
        """Connect (until NATS answers), start a loop per known function, keep the gauges."""
        while True:
            try:
                await self.broker.connect()
                break
            except QueueUnavailable as exc:
                logger.warning("{}; trying again", exc)
                await asyncio.sleep(1.0)
        logger.info("asynchronous calls: NATS at {}", self.broker.url)
        queued = True  # at first, calls queued by a gateway that died before it subscribed
        while True:
            try:
                for name in await self.broker.functions(queued):
                    self.ensure(name)
                queued = False
                await self._gauge()
            except QueueUnavailable as exc:
                logger.warning("{}", exc)
            await asyncio.sleep(GAUGE_INTERVAL)

    def ensure(self, name: str) -> None:
        """Have a loop pull `name`'s calls."""
        loop = self._loops.get(name)
        if loop is None or loop.done():
            self._loops[name] = asyncio.create_task(self._loop(name))

    async def close(self) -> None:
        for task in [*self._loops.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops.values(), *self._tasks, return_exceptions=True)
        await self._client.aclose()
        await self.broker.close()

    async def _gauge(self) -> None:
        for name in list(self._loops):
            self.metrics.gauges.depth[name] = await self.broker.depth(name)
            first = await self.broker.scan(name, dead=False, limit=1)
            self.metrics.gauges.oldest[name] = first[0].call.enqueued if first else 0.0

    async def _loop(self, name: str) -> None:
        while True:
            try:
                await self._consume(name)
            except QueueUnavailable as exc:
                logger.warning("{}: {}; trying again", name, exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop the function's calls for good
                logger.exception("the worker of {} failed; starting it again", name)
                await asyncio.sleep(1.0)

    async def _consume(self, name: str) -> None:
        sub = await self.broker.subscribe(name)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                limit = await self._limit(name)
                while len(running) >= limit:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for msg in await self.broker.fetch(sub, limit - len(running)):
                    try:
                        stored = received(msg)
                    except (ValueError, KeyError, TypeError) as exc:
                        # Not queued by a gateway: dropped, or it would stall the queue.
                        logger.error("{}: dropped a message that is no call: {!r}", name, exc)
                        await settle(msg, "ack")
                        continue
                    wait = stored.call.not_before - time.time()
                    if wait > EARLY:  # a retry whose backoff has not passed
                        await settle(msg, "nak", wait)
                        continue
                    task = asyncio.create_task(self._attempt(msg, stored))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    self._tasks.add(task)  # for close()
                    task.add_done_callback(self._tasks.discard)
        finally:
            await self.broker.unsubscribe(sub)

    async def function(self, name: str, serving: bool = False) -> Function:
        """`name` as read from the engine within FUNCTION_TTL; `serving`: read anew
        unless it had a ready replica then (a wake must see the engine's state)."""
        at, fn = self._functions.get(name, (0.0, None))
        if fn is None or time.monotonic() - at > FUNCTION_TTL or (serving and not fn.addresses):
            fn = await run_in_threadpool(self.lifecycle.get, name)
            self._functions[name] = (time.monotonic(), fn)
        return fn

    async def _spec(self, name: str) -> FunctionSpec | None:
        try:
            return (await self.function(name)).spec
        except FaasError:
            return None

    async def _limit(self, name: str) -> int:
        spec = await self._spec(name)
        return (spec and spec.queue.concurrency) or self.settings.async_concurrency

    async def _max_attempts(self, name: str) -> int:
        spec = await self._spec(name)
        return (spec and spec.queue.max_attempts) or self.settings.async_max_attempts

    # --- one call ------------------------------------------------------------------

    async def _attempt(self, msg: Msg, stored: Stored) -> None:
        """Make the call (holding a slot), then settle it in a task of its own."""
        call = stored.call
        self.in_flight[call.id] = call
        beat = asyncio.create_task(self._heartbeat(msg))
        try:
            with logger.contextualize(call_id=call.id):
                outcome = await self.make(call, stored.body)
        except BaseException:  # the gateway stops: the call goes back at once
            beat.cancel()
            self.in_flight.pop(call.id, None)
            with contextlib.suppress(BaseException):
                await settle(msg, "nak")
            raise
        task = asyncio.create_task(self._settle(msg, stored, outcome, beat))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell NATS the call is still being worked on (else it is delivered again)."""
        while True:
            await asyncio.sleep(self.broker.ack_wait / 3)
            await settle(msg, "progress")

    async def make(self, call: Call, body: bytes) -> Outcome:
        """One attempt at `call`: through the sync cold path, waking the function."""
        began = time.monotonic()
        try:
            function = await self.function(call.function, serving=True)
        except FunctionNotFound as exc:
            return Outcome(status=404, body=exc.message.encode(), error=exc.message)
        except FaasError as exc:
            return Outcome(error=exc.message)
        strip = labels.KEY_HEADERS if function.spec.auth == "key" else ()
        request = Request(_scope(call, body), _receive(body))
        limit = self.settings.request_timeout or None
        try:
            async with asyncio.timeout(limit):
                response = await self.invoker.forward(function, request, call.path, call.id, strip)
                outcome = await _collect(response, self.settings.async_max_body_bytes)
        except (GatewayTimeout, TimeoutError):
            outcome = Outcome(error=f"no answer within {limit:g}s" if limit else "timed out")
        except FaasError as exc:
            self._functions.pop(call.function, None)  # it may have moved: read it anew
            outcome = Outcome(error=exc.message)
        outcome.seconds = time.monotonic() - began
        return outcome

    async def _settle(
        self, msg: Msg, stored: Stored, outcome: Outcome, beat: asyncio.Task[None]
    ) -> None:
        call = stored.call
        attempts = call.attempts + 1
        name = call.function
        kind = "ok" if outcome.ok else "final" if outcome.final else "failed"
        self.metrics.attempts.labels(name, kind).inc()
        try:
            if outcome.final or outcome.ok or attempts >= await self._max_attempts(name):
                await self._conclude(stored, outcome, attempts)
            else:
                delay = self.backoff.delay(attempts)
                logger.info(
                    "call {} to {}: attempt {} {}; again in {:.1f}s",
                    call.id, name, attempts, outcome.describe(), delay,
                )  # fmt: skip
                again = call.retried(outcome.describe(), outcome.status, time.time() + delay)
                await self.broker.publish(again, stored.body)
                self.metrics.retries.labels(name).inc()
            await settle(msg, "ack")
        except QueueUnavailable as exc:
            # Not acknowledged: NATS delivers the call again after the ack wait.
            logger.warning("call {}: {}; it will be made again", call.id, exc)
        finally:
            beat.cancel()
            self.in_flight.pop(call.id, None)

    async def _conclude(self, stored: Stored, outcome: Outcome, attempts: int) -> None:
        """The call's last attempt: dead letters on failure, the callback either way."""
        call = stored.call
        if not (outcome.ok or outcome.final):
            dead = call.retried(outcome.describe(), outcome.status, 0.0)
            await self.broker.publish(dead, stored.body, dead=True)
            self.metrics.dead.labels(call.function).inc()
            logger.warning(
                "call {} to {} failed {} times ({}): dead letter",
                call.id, call.function, attempts, outcome.describe(),
            )  # fmt: skip
        self.metrics.latency.labels(call.function).observe(max(time.time() - call.enqueued, 0))
        if call.callback:
            await self._call_back(call, outcome, attempts)

    async def _call_back(self, call: Call, outcome: Outcome, attempts: int) -> None:
        """POST the function's answer to the call's X-Callback-Url, with retries."""
        assert call.callback is not None
        status = outcome.status or (504 if "within" in (outcome.error or "") else 502)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in outcome.headers
            if k.decode("latin-1").lower()
            not in HOP_BY_HOP | {"content-length", "x-call-id", "host"}
        ]
        headers += [
            ("X-Call-Id", call.id),
            ("X-Function-Name", call.function),
            ("X-Function-Status", str(status)),
            ("X-Function-Attempts", str(attempts)),
            ("X-Duration-Seconds", f"{outcome.seconds:.6f}"),
        ]
        if outcome.error:
            headers.append(("X-Function-Error", outcome.error[:500].replace("\n", " ")))
        for attempt in range(1, self.settings.async_max_attempts + 1):
            try:
                addresses = await run_in_threadpool(
                    callback_addresses, call.callback, self.callback_allow, self.engine_hosts
                )
            except FaasError as exc:
                logger.warning("callback of call {} refused: {}", call.id, exc.message)
                self.metrics.callbacks.labels("refused").inc()
                return
            to = pinned(call.callback, addresses[0])
            try:
                got = await self._client.post(
                    to.url,
                    content=outcome.body,
                    headers=[*headers, ("Host", to.host)],
                    extensions=to.extensions,
                )
                if not retryable(got.status_code):
                    self.metrics.callbacks.labels("sent").inc()
                    return
                why = f"HTTP {got.status_code}"
            except httpx.HTTPError as exc:
                why = repr(exc)
            delay = self.backoff.delay(attempt)
            logger.info("callback of call {}: {}; again in {:.1f}s", call.id, why, delay)
            await asyncio.sleep(delay)
        logger.warning("callback of call {} failed {} times; given up", call.id, attempt)
        self.metrics.callbacks.labels("failed").inc()


def _scope(call: Call, body: bytes) -> Scope:
    """The call as the ASGI request the cold path forwards."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in call.headers]
    if body or call.method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    path = labels.function_path(call.function) + call.path
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": call.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": call.query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }


def _receive(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # like a client that stays: never disconnects
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _TooLarge(Exception):
    pass


async def _collect(response: Response, limit: int) -> Outcome:
    """Run the function's (streamed) answer to its end, keeping it; an answer
    above `limit` bytes is a final 413 (it would be held in memory, and sent on)."""
    outcome = Outcome()
    parts: list[bytes] = []
    size = 0

    async def send(message: Message) -> None:
        nonlocal size
        if message["type"] == "http.response.start":
            outcome.status = int(message["status"])
            outcome.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            part = bytes(message.get("body", b""))
            size += len(part)
            if size > limit:
                raise _TooLarge
            parts.append(part)

    async def receive() -> Message:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # pragma: no cover - never reached

    scope: Scope = {"type": "http", "method": "POST", "headers": []}
    try:
        await response(scope, receive, send)
    except (OSError, httpx.HTTPError) as exc:  # the function died mid-answer
        return Outcome(error=f"the answer broke off: {exc!r}")
    except _TooLarge:
        return Outcome(status=413, error=f"the answer is larger than {limit} bytes")
    outcome.body = b"".join(parts)
    return outcome
