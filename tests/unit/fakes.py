"""In-process stand-ins for the engine and the proxy, for the fast tier.

They implement `faas.provider.Provider` and `Router` with dicts, record what
was asked of them, and can be told to fail or to block, so that the sequences
in `faas.lifecycle` (single-flight wakes, drains, rollouts) and the scaler's
idle detection are tested in milliseconds.
"""

from __future__ import annotations

import builtins
import itertools
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import IO

from faas.config import Settings
from faas.errors import Cause, DeployFailed, FunctionNotFound, ImageNotFound
from faas.lifecycle import Lifecycle
from faas.metrics import Metrics
from faas.provider import EngineInfo, Instance, LogStream, State, Traffic, Usage
from faas.spec import FunctionSpec, parse_spec

SILENT = "faas/silent:latest"  # an image whose containers run but never answer HTTP
MISSING = "faas/missing:latest"  # an image no registry has


class FakeProvider:
    """Instances in a dict. `gate`, when set, blocks every start (and unpause) until it is set."""

    def __init__(self) -> None:
        self.items: dict[str, Instance] = {}
        self.images = {"faas/echo:latest", SILENT, "x"}
        self.sent: Counter[str] = Counter()
        self.calls: list[tuple[str, str]] = []  # (verb, instance id or image)
        self.fail_start: tuple[str, bool] | None = None  # (reason, oom) of the next starts
        self.gate: threading.Event | None = None
        self.memory = 4 << 30  # what the host has, as the engine says
        self.in_usage = 0
        self.most_in_usage = 0
        self.mounted: dict[str, dict[str, bytes]] = {}  # function -> its secrets' values
        self.live_secrets = True  # whether running instances see new values (mount_secrets)
        self.node_addresses: dict[str, str] = {}  # what nodes() says
        self._ids = itertools.count(1)
        self._clock = itertools.count()
        self._lock = threading.Lock()

    # -- helpers for tests
    def add(self, spec: FunctionSpec | str, state: State = State.STOPPED) -> Instance:
        spec = spec if isinstance(spec, FunctionSpec) else parse_spec({"name": spec, "image": "x"})
        instance = self.create(spec)
        if state is State.RUNNING:
            self.start(instance.id)
        else:
            self._set(instance.id, state=state)
        return self.items[instance.id]

    def count(self, verb: str) -> int:
        return sum(1 for v, _ in self.calls if v == verb)

    def _set(self, instance_id: str, **changes: object) -> None:
        self.items[instance_id] = replace(self.items[instance_id], **changes)  # type: ignore[arg-type]

    # -- Provider
    def prepare(self) -> None:
        pass

    def engine_info(self) -> EngineInfo:
        return EngineInfo(
            runtimes=frozenset({"runc", "crun"}), default_runtime="runc", memory_bytes=self.memory
        )

    def nodes(self, *, fresh: bool = False) -> dict[str, str]:
        return dict(self.node_addresses)

    def instances(self, name: str | None = None) -> builtins.list[Instance]:
        return [i for i in self.items.values() if name is None or i.spec.name == name]

    def inspect(self, instance_id: str) -> Instance:
        if instance_id not in self.items:
            raise FunctionNotFound(instance_id)
        return self.items[instance_id]

    def create(self, spec: FunctionSpec) -> Instance:
        n = next(self._ids)
        created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(self._clock))
        instance = Instance(id=f"{n:064x}", spec=spec, state=State.STARTING, created=created)
        self.items[instance.id] = instance
        self.calls.append(("create", instance.id))
        return instance

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        if values:
            self.mounted[name] = dict(values)
        else:
            self.mounted.pop(name, None)
        return self.live_secrets

    def forget_secret(self, secret: str) -> None:
        self.calls.append(("forget_secret", secret))

    def start(self, instance_id: str) -> None:
        self.calls.append(("start", instance_id))
        if self.gate is not None:
            assert self.gate.wait(5), "the test never opened the gate"
        instance = self.items[instance_id]
        if self.fail_start is not None:
            reason, oom = self.fail_start
            self._set(instance_id, state=State.FAILED, reason=reason, oom_killed=oom)
            return
        n = int(instance_id, 16)
        address = f"10.0.{n // 250}.{n % 250 + 2}:{instance.spec.port}"
        self._set(instance_id, state=State.RUNNING, address=address, reason="")
        self.sent[instance_id] = 0

    def stop(self, instance_id: str, timeout: float) -> None:
        self.calls.append(("stop", instance_id))
        if instance_id in self.items:
            self._set(instance_id, state=State.STOPPED, address=None, reason="scaled to zero")

    def pause(self, instance_id: str) -> None:
        self.calls.append(("pause", instance_id))
        self._set(instance_id, state=State.PAUSED)

    def unpause(self, instance_id: str) -> None:
        self.calls.append(("unpause", instance_id))
        if self.gate is not None:
            assert self.gate.wait(5), "the test never opened the gate"
        if self.items[instance_id].state is State.PAUSED:
            self._set(instance_id, state=State.RUNNING)

    def remove(self, instance_id: str) -> None:
        self.calls.append(("remove", instance_id))
        self.items.pop(instance_id, None)

    def tail(self, instance_id: str, lines: int = 20) -> str:
        return "the last lines"

    def logs(
        self,
        instance_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
    ) -> LogStream:
        raise NotImplementedError

    def usage(self, instance_id: str) -> Usage:
        with self._lock:
            self.in_usage += 1
            self.most_in_usage = max(self.most_in_usage, self.in_usage)
        time.sleep(0.01)  # a slow engine call, so that concurrent ones overlap
        with self._lock:
            self.in_usage -= 1
        return Usage(1 << 20, 1 << 28, 2.5, 1, False)

    def sent_bytes(self, instance_id: str) -> int | None:
        instance = self.items.get(instance_id)
        if instance is None or instance.state is not State.RUNNING:
            return None
        return self.sent[instance_id]

    def image_labels(self, image: str) -> dict[str, str] | None:
        return {} if image in self.images else None

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, object]]:
        self.calls.append(("pull", image))
        if image == MISSING:
            raise ImageNotFound(image, "manifest unknown")
        self.images.add(image)
        yield {"status": "pulled"}

    def load(self, archive: IO[bytes]) -> builtins.list[str]:
        raise NotImplementedError

    def build(
        self, context: IO[bytes], tag: str, args: dict[str, str] | None = None
    ) -> Iterator[str]:
        raise NotImplementedError

    # -- what the platform's readiness probe would see
    def answers(self, address: str, path: str) -> bool:
        return any(
            i.address == address and i.state is State.RUNNING and i.spec.image != SILENT
            for i in self.items.values()
        )


class FakeRouter:
    """Routes as the proxy would hold them; every call is logged in `events`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.drains: Counter[str] = Counter()
        self.counts: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        self.fail_route = False

    def routed(self, spec: FunctionSpec, addresses: Collection[str], *, only: bool = False) -> None:
        listed = ",".join(sorted(addresses))
        self.events.append(("routed", spec.name, listed, "only" if only else ""))
        if self.fail_route:
            raise DeployFailed(spec.name, "the proxy did not route it", Cause.ROUTE)

    def unrouted(self, name: str, addresses: Collection[str] | None = None) -> None:
        self.events.append(
            ("unrouted", name if addresses is None else f"{name} {sorted(addresses)}")
        )

    def drain(self, name: str, *, wait: bool = True) -> None:
        self.events.append(("drain", name))
        self.drains[name] += 1

    def undrain(self, name: str) -> None:
        self.events.append(("undrain", name))
        self.drains[name] -= 1

    def drain_only(self, names: Collection[str]) -> None:
        self.events.append(("drain_only", ",".join(sorted(names))))
        self.drains = Counter(set(names))

    def request_counts(self) -> dict[str, float]:
        return dict(self.counts)

    def traffic(self) -> dict[str, Traffic]:
        return {s: Traffic(self.counts.get(s, 0.0), busy) for s, busy in self.busy.items()}

    def metrics_text(self) -> str:
        return ""


def lifecycle(
    provider: FakeProvider | None = None, router: FakeRouter | None = None, **settings: object
) -> Lifecycle:
    """A Lifecycle over fakes, with a short ready timeout."""
    provider = provider or FakeProvider()
    config = Settings(ready_timeout=0.3, stop_timeout=0, **settings)  # type: ignore[arg-type]
    return Lifecycle(provider, router, config, Metrics(), probe=provider.answers)
