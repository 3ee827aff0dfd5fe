"""The contracts between the platform's core and what it drives.

    faas.lifecycle (wake, drain, rollout, remove)
        ├── Provider   engine calls on instances (containers): faas.docker_provider
        └── Router     the proxy in front of them: faas.traefik.TraefikRouter

A provider does engine calls only and keeps no state of its own: every fact
is read back from the engine (labels, `faas.labels`). The sequences that
combine those calls, and the platform's policy (`faas.policy`), live above it,
so a second engine gets them without copying code.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

from .spec import FunctionSpec


class State(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    STARTING = "starting"
    PAUSED = "paused"  # frozen by the engine (cgroup freezer): memory kept, resumes in ms
    FAILED = "failed"
    INVALID = "invalid"  # its labels do not describe a valid function (hand-made, older version)


@dataclass(frozen=True)
class Instance:
    """One container of a function, as the engine reports it now."""

    id: str
    spec: FunctionSpec  # for an INVALID instance, only name and image are meaningful
    state: State
    created: datetime
    # "ip:port" on the function network, when running or paused (or starting, if known)
    address: str | None = None
    reason: str = ""  # why it is failed, stopped or invalid, when known
    oom_killed: bool = False  # the engine's flag: its last exit was an OOM kill
    node: str | None = None  # the node it runs on, where the engine has several


@dataclass(frozen=True)
class Function:
    """A deployed function: the instance that stands for it (the newest running
    one, else the newest) and its replicas (the instances running or starting)."""

    spec: FunctionSpec
    state: State
    container_id: str
    created: datetime
    address: str | None = None
    reason: str = ""
    replicas: tuple[Instance, ...] = ()

    @property
    def addresses(self) -> list[str]:
        """Where the ready replicas serve."""
        return [i.address for i in self.replicas if i.state is State.RUNNING and i.address]

    def to_json(self) -> dict[str, object]:
        return {
            **self.spec.model_dump(),
            "state": self.state.value,
            "reason": self.reason,
            "container": self.container_id[:12],
            "created": self.created.isoformat(),
            "address": self.address,
            "replicas": len(self.replicas),
            "ready_replicas": len(self.addresses),
        }


def serving(instances: builtins.list[Instance]) -> Instance:
    """The instance that stands for its function: running first, then the newest."""
    return max(instances, key=lambda i: (i.state is State.RUNNING, i.created))


def live(instances: builtins.list[Instance]) -> builtins.list[Instance]:
    """The instances running or starting, oldest first."""
    found = [i for i in instances if i.state in (State.RUNNING, State.STARTING)]
    return sorted(found, key=lambda i: i.created)


def function_of(instances: builtins.list[Instance]) -> Function:
    """The function that `instances` (all of one function, at least one) make up."""
    first = serving(instances)
    return Function(
        spec=first.spec,
        state=first.state,
        container_id=first.id,
        created=first.created,
        address=first.address,
        reason=first.reason,
        replicas=tuple(live(instances)),
    )


@dataclass(frozen=True)
class Traffic:
    """What a proxy service has served so far (counters, reset when the proxy restarts)."""

    requests: float
    seconds: float  # their durations summed: its rate is the average number in flight


@dataclass(frozen=True)
class Usage:
    """One sample of a running instance's resource use."""

    memory_bytes: int
    memory_limit_bytes: int
    cpu_seconds: float
    restarts: int
    oom_killed: bool  # the engine's flag: the container's last exit was an OOM kill


@dataclass(frozen=True)
class EngineInfo:
    """What the engine itself must answer for the policy to decide."""

    runtimes: frozenset[str]  # OCI runtimes registered with the engine
    default_runtime: str | None  # the one a container gets when it names none
    memory_bytes: int = 0  # the host's memory as the engine sees it (0: unknown)


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
    """The proxy in front of the functions."""

    def routed(self, spec: FunctionSpec, addresses: Collection[str], *, only: bool = False) -> None:
        """Return once the function's traffic goes to every one of `addresses` (and
        nowhere else, if `only`); raise DeployFailed (cause `route`) when it does not
        in time."""
        ...

    def unrouted(self, name: str, addresses: Collection[str] | None = None) -> None:
        """Return once the function has no route left (to any of `addresses`, if
        given); raise ProviderError when it still has after the timeout."""
        ...

    def drain(self, name: str, *, wait: bool = True) -> None:
        """Send the function's traffic to the gateway (until `undrain`), so that no
        request reaches a container on its way in or out. With `wait`, return once
        the proxy applies it."""
        ...

    def undrain(self, name: str) -> None: ...

    def drain_only(self, names: Collection[str]) -> None:
        """Drain exactly `names` (without waiting), forgetting every other drain: at
        the gateway's start, a drain left by a crash would keep a function off the
        warm path, and a paused function must stay drained."""
        ...

    def request_counts(self) -> dict[str, float]:
        """Requests served so far per proxy service (`faas.labels.service_name`)."""
        ...

    def traffic(self) -> dict[str, Traffic]:
        """Requests completed so far per proxy service, and the seconds they took."""
        ...

    def metrics_text(self) -> str:
        """The proxy's own Prometheus exposition."""
        ...


class Provider(Protocol):
    """Engine calls on the instances of the functions of one namespace.

    Implementations translate their engine's errors into `faas.errors`
    (ProviderError when the engine fails) and keep all state on the engine's side.
    """

    def prepare(self) -> None:
        """Make what every function needs (their network), at the gateway's start;
        log what is wrong with what is already there."""
        ...

    def engine_info(self) -> EngineInfo: ...

    def nodes(self, *, fresh: bool = False) -> dict[str, str]:
        """Node id -> an "ip:port" that accepts TCP connections while the node is
        up, where the engine runs instances on several nodes (empty on one host):
        the core watches them to fence off a lost node's instances before the
        engine notices (faas.nodes). It may be a few seconds old unless `fresh`."""
        ...

    def instances(self, name: str | None = None) -> builtins.list[Instance]:
        """Every instance of the namespace, or of one function; in no particular order."""
        ...

    def inspect(self, instance_id: str) -> Instance:
        """One instance's state now; raises FunctionNotFound when it is gone."""
        ...

    def create(self, spec: FunctionSpec) -> Instance:
        """A new instance of `spec`, created but not started (InvalidSpec if the engine refuses)."""
        ...

    def start(self, instance_id: str) -> None: ...

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        """Make `values` (secret name -> value) exactly the secrets that the function
        `name`'s instances read at /var/openfaas/secrets/<secret>: the instances it
        creates from now on (`create` of a spec listing them), and, where the engine
        can, the running ones. Empty: forget the function's secrets.

        True when the running instances see the new values already; False when
        only new instances will (the core then replaces the running ones)."""
        ...

    def forget_secret(self, secret: str) -> None:
        """The secret is gone from the store (no function lists it): drop any copy
        of it the engine still keeps."""
        ...

    def stop(self, instance_id: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; a gone instance is no error."""
        ...

    def pause(self, instance_id: str) -> None:
        """Freeze every process of the running instance (its memory stays)."""
        ...

    def unpause(self, instance_id: str) -> None:
        """Thaw a paused instance; a running one is no error."""
        ...

    def remove(self, instance_id: str) -> None:
        """Delete the instance (killing it if it still runs); a gone instance is no error."""
        ...

    def tail(self, instance_id: str, lines: int = 20) -> str:
        """The last lines of its output, for an error message ("" if unavailable)."""
        ...

    def logs(
        self,
        instance_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
    ) -> LogStream: ...

    def usage(self, instance_id: str) -> Usage:
        """One sample of a running instance's resource use."""
        ...

    def sent_bytes(self, instance_id: str) -> int | None:
        """Bytes the running instance has sent so far; None when not running.

        Only what the container sends: received bytes include every broadcast
        on the network, which would keep all functions looking busy."""
        ...

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The labels of a local image, None when the engine does not have it."""
        ...

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
