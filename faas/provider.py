"""The contract between the platform and whatever runs containers."""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

from .spec import FunctionSpec


class State(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    STARTING = "starting"
    FAILED = "failed"


@dataclass(frozen=True)
class Function:
    """A deployed function as the provider sees it right now."""

    spec: FunctionSpec
    state: State
    container_id: str
    created: datetime
    address: str | None = None  # "ip:port" on the function network, when running
    reason: str = ""  # why it is failed or stopped, when known

    def to_json(self) -> dict[str, object]:
        return {
            **self.spec.model_dump(),
            "state": self.state.value,
            "reason": self.reason,
            "container": self.container_id[:12],
            "created": self.created.isoformat(),
            "address": self.address,
        }


@dataclass(frozen=True)
class Resources:
    """One sample of a running function container's resource use."""

    memory_bytes: int
    memory_limit_bytes: int
    cpu_seconds: float
    restarts: int
    oom_killed: bool  # the engine's flag: the container's last exit was an OOM kill


@dataclass
class StartTimes:
    """How a start went: seconds until the engine had started the container
    (`started`), and from then until it answered HTTP (`ready`)."""

    started: float = 0.0
    ready: float = 0.0


class LogStream(Protocol):
    """Chunks of a function's log output; close() ends a follow early."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Router(Protocol):
    """The proxy in front of the functions, as far as a deploy must wait for it."""

    def routed(self, spec: FunctionSpec, address: str, *, only: bool = False) -> None:
        """Return once the function's traffic goes to `address` (and nowhere else, if `only`)."""
        ...

    def unrouted(self, name: str) -> None:
        """Return once the function has no route left."""
        ...

    def drain(self, name: str, *, wait: bool = True) -> None:
        """Send the function's traffic to the gateway (until `undrain`), so that no
        request reaches a container on its way in or out. With `wait`, return once
        the proxy applies it."""
        ...

    def undrain(self, name: str) -> None: ...


class Provider(Protocol):
    """Runs function containers. Implementations translate their engine's errors
    into `faas.errors` and keep all state on the engine's side."""

    def prepare(self) -> None:
        """Make what every function needs (their network), at the gateway's start;
        log what is wrong with what is already there."""
        ...

    def deploy(self, spec: FunctionSpec) -> Function:
        """Start `spec` as a new container, ready to serve, and retire older ones."""
        ...

    def remove(self, name: str) -> None: ...

    def get(self, name: str) -> Function: ...

    def list(self) -> list[Function]: ...

    def start(self, name: str, times: StartTimes | None = None) -> Function:
        """Start a stopped function; return once it answers. Fills `times` if given."""
        ...

    def resources(self, fn: Function) -> Resources:
        """One sample of the resource use of `fn`'s container (as listed, running)."""
        ...

    def stop(self, name: str) -> None: ...

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, object]]:
        """Pull `image` unless present, yielding the engine's progress events.

        `auth` ({"username", "password"}) is for a private registry; without it the
        registry credentials of the engine's client config apply."""
        ...

    def load(self, archive: IO[bytes]) -> builtins.list[str]:
        """Load a docker-save or OCI archive; return the image references it held."""
        ...

    def build(
        self, context: IO[bytes], tag: str, args: dict[str, str] | None = None
    ) -> Iterator[str]:
        """Build the tar build context as `tag`, yielding output lines; raises BuildFailed."""
        ...

    def sent_bytes(self, name: str) -> int | None:
        """Bytes the running function has sent so far; None when not running.

        Only what the container sends: received bytes include every broadcast
        on the network, which would keep all functions looking busy."""
        ...

    def logs(
        self, name: str, *, follow: bool = False, tail: int | None = None, since: int | None = None
    ) -> LogStream: ...
