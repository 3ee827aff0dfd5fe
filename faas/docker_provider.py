"""Provider on a Docker engine, through the docker SDK.

The only module that imports `docker`: SDK exceptions become `faas.errors`
here (see `_engine_errors`), and nothing above this layer knows about
containers. All state is in container labels (`faas.labels`); this class keeps
nothing but locks.
"""

from __future__ import annotations

import builtins
import contextlib
import http.client
import secrets
import socket
import tarfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import docker.utils.build
import requests.exceptions
from docker.models.containers import Container
from docker.models.images import Image
from docker.types import DeviceRequest, LogConfig, Ulimit
from loguru import logger

from . import labels, oci
from .config import Settings
from .errors import (
    BuildFailed,
    DeployFailed,
    FaasError,
    FunctionNotFound,
    ImageNotFound,
    InvalidSpec,
    ProviderError,
)
from .provider import Function, LogStream, Resources, Router, StartTimes, State
from .registry import pull_failure
from .spec import FunctionSpec, Limits

# A container as the engine's list endpoint describes it.
Summary = dict[str, Any]
Summaries = list[Summary]

# Exit codes of a container that was stopped on purpose (by `docker stop`:
# SIGTERM honoured, or SIGKILL after the grace period), not one that crashed.
_STOP_EXIT_CODES = (0, 143, 137)
ICC = "com.docker.network.bridge.enable_icc"


@contextmanager
def _engine_errors() -> Iterator[None]:
    """Translate docker SDK failures into the project's errors."""
    try:
        yield
    except FaasError:
        raise
    except docker.errors.APIError as exc:
        raise ProviderError(f"Docker engine: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ProviderError(f"Docker engine unreachable: {exc}") from exc


class DockerProvider:
    """Functions as containers on one Docker engine."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: docker.DockerClient | None = None,
        router: Router | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._router = router
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._warned: set[str] = set()

    @property
    def client(self) -> docker.DockerClient:
        # Connect lazily so the gateway starts (and reports 503) while the
        # engine is down, instead of refusing to start.
        if self._client is None:
            with _engine_errors():
                self._client = docker.DockerClient.from_env()
        return self._client

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[name]

    # -- reading -----------------------------------------------------------

    def _containers(self, name: str | None = None) -> list[dict[str, Any]]:
        wanted = [f"{labels.NAMESPACE}={self.settings.namespace}"]
        if name is not None:
            wanted.append(f"{labels.FUNCTION}={name}")
        with _engine_errors():
            found = self.client.api.containers(all=True, filters={"label": wanted})
        return cast(list[dict[str, Any]], found)

    def _function(self, summary: dict[str, Any]) -> Function:
        spec = labels.spec_from_labels(summary["Labels"])
        state, reason = _state(summary)
        if summary["State"] == "exited" and _exit_code(summary.get("Status", "")) not in (0, 143):
            # Only an inspect tells an OOM kill (137) from a stop that timed out.
            with _engine_errors():
                detail = self.client.api.inspect_container(summary["Id"])["State"]
            if detail.get("OOMKilled"):
                state, reason = State.FAILED, "out of memory"
        address = None
        if state is State.RUNNING:
            nets = summary.get("NetworkSettings", {}).get("Networks", {})
            ip = nets.get(self.settings.function_network, {}).get("IPAddress")
            address = f"{ip}:{spec.port}" if ip else None
        return Function(
            spec=spec,
            state=state,
            container_id=summary["Id"],
            created=datetime.fromtimestamp(summary["Created"], UTC),
            address=address,
            reason=reason,
        )

    def list(self) -> list[Function]:
        newest: dict[str, dict[str, Any]] = {}
        for summary in self._containers():
            name = summary["Labels"].get(labels.FUNCTION, "")
            if name not in newest or _newer(summary, newest[name]):
                newest[name] = summary
        return [self._function(s) for _, s in sorted(newest.items())]

    def get(self, name: str) -> Function:
        found = self._containers(name)
        if not found:
            raise FunctionNotFound(name)
        best = found[0]
        for summary in found[1:]:
            if _newer(summary, best):
                best = summary
        return self._function(best)

    def logs(
        self, name: str, *, follow: bool = False, tail: int | None = None, since: int | None = None
    ) -> LogStream:
        fn = self.get(name)
        with _engine_errors():
            stream = self.client.api.logs(
                fn.container_id,
                stream=True,
                follow=follow,
                timestamps=True,
                tail="all" if tail is None else tail,
                since=since,
            )
        return cast(LogStream, stream)

    # -- changing ----------------------------------------------------------

    def deploy(self, spec: FunctionSpec) -> Function:
        spec = self._effective(spec)
        with self._lock(spec.name):
            self._ensure_image(spec.image)
            self._ensure_network()
            current = self._containers(spec.name)
            old = [c["Id"] for c in current]
            container = self._create(spec)
            try:
                address = self._start_and_wait(spec, container)
                if self._router is not None:
                    self._router.routed(spec, address)
            except BaseException:
                self._discard(container)
                self._restore_route(current)
                raise
            if old:
                self._replace(spec, address, old)
            logger.info("deployed {} ({}) at {}", spec.name, spec.image, address)
            return self.get(spec.name)

    def _replace(self, spec: FunctionSpec, address: str, old: Sequence[str]) -> None:
        """Retire the old containers once `address` serves, losing no request."""
        if self._router is None:
            for container_id in old:
                self._retire(container_id)
            return
        # While the old ones stop, the gateway takes the traffic and forwards
        # it to the newest running container; Traefik returns to the warm
        # path once it balances over the new container alone.
        self._router.drain(spec.name)
        try:
            for container_id in old:
                self._retire(container_id)
            self._router.routed(spec, address, only=True)
        finally:
            self._router.undrain(spec.name)

    def remove(self, name: str) -> None:
        with self._lock(name):
            found = self._containers(name)
            if not found:
                raise FunctionNotFound(name)
            for summary in found:
                self._retire(summary["Id"])
            if self._router is not None:
                self._router.unrouted(name)
            logger.info("removed {}", name)

    def start(self, name: str, times: StartTimes | None = None) -> Function:
        """Start a stopped function; returns once it answers (Traefik may lag)."""
        with self._lock(name):
            fn = self.get(name)
            with _engine_errors():
                container = self.client.containers.get(fn.container_id)
            # Traefik routes a container as soon as it runs, before it listens:
            # keep its traffic on the gateway (which waits for readiness) until
            # it answers. No need to wait for the drain: the container's own
            # route comes after its start, later than this file change.
            if self._router is not None:
                self._router.drain(name, wait=False)
            try:
                self._start_and_wait(fn.spec, container, times)
            except DeployFailed:
                self._stop_failed(fn)
                raise
            finally:
                if self._router is not None:
                    self._router.undrain(name)
            return self.get(name)

    def _stop_failed(self, fn: Function) -> None:
        """Leave a function that failed to start stopped, not crash-looping, and
        unrouted, so the next request goes to the gateway and tries again."""
        with _engine_errors():
            self.client.api.stop(fn.container_id, timeout=0)
        if self._router is not None:
            try:
                self._router.unrouted(fn.spec.name)
            except FaasError as exc:
                logger.warning("{} still routed after a failed start: {}", fn.spec.name, exc)

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, object]]:
        if self._local_image(image) is None:
            yield from self._pull(image, auth)

    def _local_image(self, image: str) -> Image | None:
        with _engine_errors():
            try:
                return self.client.images.get(image)
            except docker.errors.ImageNotFound:
                return None

    def _pull(self, image: str, auth: dict[str, str] | None) -> Iterator[dict[str, object]]:
        if image.startswith("sha256:"):
            raise ImageNotFound(image, "no such image id on the engine")
        repository, tag = _split_reference(image)
        try:
            events = self.client.api.pull(
                repository, tag, stream=True, decode=True, auth_config=auth
            )
            for event in events:
                if "error" in event:
                    raise pull_failure(image, str(event["error"]))
                yield cast(dict[str, object], event)
        except docker.errors.APIError as exc:
            raise pull_failure(image, str(exc.explanation or exc), exc.status_code) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ProviderError(f"Docker engine unreachable: {exc}") from exc

    def load(self, archive: IO[bytes]) -> builtins.list[str]:
        loaded = []
        with _engine_errors():
            try:
                # The stubs leave load_image untyped: it yields JSON events.
                data = oci.as_docker_archive(archive).read()
                events: Iterator[dict[str, Any]] = self.client.api.load_image(data)  # type: ignore[no-untyped-call]
                for event in events:
                    if "error" in event:
                        raise InvalidSpec("archive", str(event["error"]))
                    # "Loaded image: repo:tag", or "Loaded image ID: sha256:..." untagged
                    line = str(event.get("stream", "")).strip()
                    for prefix in ("Loaded image: ", "Loaded image ID: "):
                        if line.startswith(prefix):
                            loaded.append(line.removeprefix(prefix))
            except (docker.errors.APIError, tarfile.TarError, ValueError, KeyError) as exc:
                reason = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
                raise InvalidSpec("archive", str(reason or exc)) from exc
        if not loaded:
            raise InvalidSpec("archive", "no image in it")
        return loaded

    def build(
        self, context: IO[bytes], tag: str, args: dict[str, str] | None = None
    ) -> Iterator[str]:
        log: list[str] = []
        try:
            events = self.client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                buildargs=args,
                labels={"faas.image": "build"},
            )
            for event in events:
                if "error" in event:
                    raise BuildFailed(str(event["error"]).strip(), "".join(log[-30:]))
                line = event.get("stream")
                if isinstance(line, str) and line:
                    log.append(line)
                    yield line
        except docker.errors.APIError as exc:
            raise BuildFailed(str(exc.explanation or exc), "".join(log[-30:])) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ProviderError(f"Docker engine unreachable: {exc}") from exc

    def sent_bytes(self, name: str) -> int | None:
        """Bytes the function's container has sent so far (None if not running)."""
        fn = self.get(name)
        if fn.state is not State.RUNNING:
            return None
        with _engine_errors():
            stats = self.client.api.stats(fn.container_id, stream=False, one_shot=True)
        nets = cast(dict[str, dict[str, int]], stats.get("networks") or {})
        return sum(n.get("tx_bytes", 0) for n in nets.values())

    def resources(self, fn: Function) -> Resources:
        """One stats sample (one_shot: no 1 s wait for a CPU delta) plus an inspect."""
        with _engine_errors():
            stats = self.client.api.stats(fn.container_id, stream=False, one_shot=True)
            state = self.client.api.inspect_container(fn.container_id)
        memory = cast(dict[str, Any], stats.get("memory_stats") or {})
        cpu = cast(dict[str, Any], stats.get("cpu_stats") or {}).get("cpu_usage") or {}
        return Resources(
            memory_bytes=int(memory.get("usage", 0)),
            memory_limit_bytes=int(memory.get("limit", 0)),
            cpu_seconds=int(cpu.get("total_usage", 0)) / 1e9,
            restarts=int(state.get("RestartCount", 0)),
            oom_killed=bool(state.get("State", {}).get("OOMKilled")),
        )

    def stop(self, name: str) -> None:
        with self._lock(name):
            fn = self.get(name)
            with _engine_errors():
                self.client.api.stop(fn.container_id, timeout=self.settings.stop_timeout)

    # -- helpers -----------------------------------------------------------

    def _effective(self, spec: FunctionSpec) -> FunctionSpec:
        """The spec with the platform's defaults filled in and checked against the engine.

        Recorded in the labels as is, so `describe` shows the limits in force.
        """
        s = self.settings
        runtime = spec.runtime or s.default_runtime
        with _engine_errors():
            info = self.client.info()
        available = sorted(info.get("Runtimes") or {})
        if runtime is not None and runtime not in available:
            raise InvalidSpec(
                "runtime", f"{runtime!r} is not a runtime of this engine; available: "
                + ", ".join(available),
            )  # fmt: skip
        allowed = s.runtime_allowlist
        if allowed is not None and (runtime or info.get("DefaultRuntime")) not in allowed:
            raise InvalidSpec(
                "runtime", f"{runtime!r} is not allowed here; allowed: {', '.join(sorted(allowed))}"
            )
        if spec.gpus is not None and "nvidia" not in available:
            raise InvalidSpec(
                "gpus", "this Docker engine has no GPU support (install the NVIDIA container "
                "toolkit and register its runtime); see docs/runtimes.md",
            )  # fmt: skip
        refused = sorted(set(spec.cap_add) - s.cap_add_allowlist)
        if refused:
            caps = ", ".join(sorted(s.cap_add_allowlist)) or "none"
            raise InvalidSpec(
                "cap_add",
                f"{', '.join(refused)} not allowed here (FAAS_ALLOWED_CAP_ADD: {caps})",
            )
        r = spec.resources
        resources = r.model_copy(
            update={
                "memory": r.memory or s.default_memory,
                "cpus": r.cpus or s.default_cpus,
                "pids": r.pids or s.default_pids,
            }
        )
        return spec.model_copy(
            update={"runtime": runtime, "resources": resources, "limits": self._limits(spec)}
        )

    def _limits(self, spec: FunctionSpec) -> Limits:
        s, lim = self.settings, spec.limits
        return Limits(
            rate_average=s.rate_average if lim.rate_average is None else lim.rate_average,
            rate_burst=lim.rate_burst or s.rate_burst,
            max_in_flight=s.max_in_flight if lim.max_in_flight is None else lim.max_in_flight,
            max_body_bytes=s.max_body_bytes if lim.max_body_bytes is None else lim.max_body_bytes,
        )

    def _ensure_image(self, image: str) -> None:
        found = self._local_image(image)
        if found is None:
            for _ in self._pull(image, None):
                pass
            found = self._local_image(image)
        if found is None:
            raise ImageNotFound(image, "not on the engine after the pull")
        _check_image_labels(image, found.labels or {})

    def prepare(self) -> None:
        self._ensure_network()

    def _ensure_network(self) -> None:
        net = self.settings.function_network
        with self._lock("\0network"), _engine_errors():
            # The names filter matches substrings; compare exactly.
            found = [n for n in self.client.api.networks(names=[net]) if n["Name"] == net]
            if found:
                icc = (found[0].get("Options") or {}).get(ICC, "true")
                # The engine reads the option with Go's ParseBool.
                if icc.lower() not in ("false", "f", "0") and net not in self._warned:
                    self._warned.add(net)
                    logger.warning(
                        "network {net} lets its containers reach each other, so a function "
                        "can call another around Traefik and its key check. Scale every "
                        "function to zero, then `docker network rm {net}`: the platform "
                        "makes it anew without, and reattaches each function as it starts",
                        net=net,
                    )
                return
            logger.info("creating network {}", net)
            # Inter-container traffic off: only the host reaches a function
            # (Traefik and the gateway run there), no function another.
            self.client.networks.create(
                net,
                driver="bridge",
                check_duplicate=True,
                labels={labels.NAMESPACE: self.settings.namespace},
                options={ICC: "false"},
            )

    def _create(self, spec: FunctionSpec) -> Container:
        s = self.settings
        name = f"faas-{s.namespace}-{spec.name}-{secrets.token_hex(3)}"
        r = spec.resources
        memory, cpus, pids = r.memory or s.default_memory, r.cpus or s.default_cpus, r.pids
        with _engine_errors():
            try:
                return self.client.containers.create(
                    spec.image,
                    name=name,
                    hostname=spec.name,
                    labels=labels.container_labels(
                        spec, s.namespace, s.function_network, s.forward_auth_url
                    ),
                    environment={**spec.env, "FAAS_FUNCTION_NAME": spec.name},
                    command=spec.command,
                    # The platform probes readiness itself; an image's own
                    # HEALTHCHECK would keep Traefik from routing it until the
                    # first check, up to its interval after every start.
                    healthcheck={"test": ["NONE"]},
                    network=s.function_network,
                    init=True,
                    security_opt=["no-new-privileges:true"],
                    cap_drop=["ALL"],
                    cap_add=spec.cap_add or None,
                    read_only=spec.read_only,
                    tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"} if spec.read_only else None,  # noqa: S108
                    pids_limit=pids or s.default_pids,
                    mem_limit=memory,
                    memswap_limit=memory,  # the same figure: no swap
                    nano_cpus=int(cpus * 1e9),
                    runtime=spec.runtime,
                    device_requests=_gpu_requests(spec.gpus),
                    ulimits=[Ulimit(name=k, soft=v, hard=v) for k, v in r.ulimits.items()],
                    # A scale-to-zero function is woken by its next request
                    # instead; restarting it would only make it crash-loop.
                    # ("unless-stopped" is valid, missing from the stubs.)
                    restart_policy={"Name": _restart_policy(spec)},  # type: ignore[arg-type]
                    log_config=LogConfig(
                        type="json-file", config={"max-size": "10m", "max-file": "3"}
                    ),
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 400:
                    raise InvalidSpec("", str(exc.explanation or exc)) from exc
                raise

    def _start_and_wait(
        self, spec: FunctionSpec, container: Container, times: StartTimes | None = None
    ) -> str:
        """Start the container and return its address once it answers HTTP."""
        times = times or StartTimes()
        began = time.monotonic()
        with _engine_errors():
            try:
                container.start()
            except docker.errors.APIError as exc:
                if "network" not in str(exc) or "not found" not in str(exc):
                    raise
                # Someone deleted the function network while it was stopped
                # (a prune, a compose down): recreate it and reattach.
                self._reattach(container)
                container.start()
        started = time.monotonic()
        times.started = started - began
        deadline = started + self.settings.ready_timeout
        ip: str | None = None
        probes = 0
        while True:
            # Inspecting costs more than probing: ask the engine first and then
            # every tenth probe, to notice a crash or learn the address.
            if probes % 10 == 0 or ip is None:
                ip = self._running_ip(spec, container)
            probes += 1
            if ip and _answers(ip, spec.port, spec.health_path):
                times.ready = time.monotonic() - started
                return f"{ip}:{spec.port}"
            if time.monotonic() > deadline:
                raise DeployFailed(
                    spec.name,
                    f"no HTTP answer on port {spec.port} within {self.settings.ready_timeout:g}s",
                    self._tail(container),
                )
            time.sleep(0.01)

    def _reattach(self, container: Container) -> None:
        logger.warning("{}: its network is gone; recreating and reattaching", container.name)
        self._ensure_network()
        for net_name in container.attrs["NetworkSettings"]["Networks"]:
            # The network is gone; Docker still drops the stale endpoint.
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.disconnect_container_from_network(
                    str(container.id), net_name, force=True
                )
        self.client.api.connect_container_to_network(
            str(container.id), self.settings.function_network
        )

    def _running_ip(self, spec: FunctionSpec, container: Container) -> str | None:
        with _engine_errors():
            container.reload()
        state = container.attrs["State"]
        if state["Status"] in ("exited", "dead") or state.get("Restarting"):
            raise DeployFailed(spec.name, _exit_reason(state), self._tail(container))
        networks = container.attrs["NetworkSettings"]["Networks"]
        ip = networks.get(self.settings.function_network, {}).get("IPAddress")
        return str(ip) if ip else None

    def _tail(self, container: Container, lines: int = 20) -> str:
        try:
            return container.logs(tail=lines).decode("utf-8", "replace")
        except docker.errors.DockerException:
            return ""

    def _retire(self, container_id: str) -> None:
        """Stop gracefully (in-flight requests finish), then delete."""
        with _engine_errors():
            try:
                self.client.api.stop(container_id, timeout=self.settings.stop_timeout)
                self.client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass

    def _restore_route(self, current: Summaries) -> None:
        """After a failed update, wait until Traefik forgets the discarded container."""
        if self._router is None or not current:
            return
        fn = self._function(current[0])
        if fn.address is None:
            return
        try:
            self._router.routed(fn.spec, fn.address, only=True)
        except FaasError as exc:
            logger.warning("route of {} not restored: {}", fn.spec.name, exc)

    def _discard(self, container: Container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.DockerException as exc:
            logger.warning("could not remove failed container {}: {}", container.name, exc)


def _split_reference(image: str) -> tuple[str, str | None]:
    """repo[:tag][@digest] -> (repo, tag or digest) as the pull API wants them."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def build_context(directory: Path) -> IO[bytes]:
    """The directory as a tar build context, minus what its .dockerignore excludes."""
    ignore = directory / ".dockerignore"
    patterns = []
    if ignore.exists():
        patterns = [
            line.strip()
            for line in ignore.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return cast(IO[bytes], docker.utils.build.tar(directory, exclude=patterns))


# Build metadata our own images carry; inert, so allowed on function images.
IMAGE_LABELS_ALLOWED = frozenset({"faas.image", "faas.source", "faas.test"})


def _check_image_labels(image: str, image_labels: dict[str, str]) -> None:
    """Docker copies an image's labels onto its containers: an image must not
    bring routes (traefik.*) or platform state (faas.*) of its own."""
    for key in sorted(image_labels):
        low = key.lower()
        if low.startswith("traefik.") or (
            low.startswith("faas.") and low not in IMAGE_LABELS_ALLOWED
        ):
            raise InvalidSpec(
                "image", f"{image!r} carries the label {key!r}; images may not set "
                "traefik.* or faas.* labels (Docker would copy them onto the container)",
            )  # fmt: skip


def _gpu_requests(gpus: str | int | list[str] | None) -> list[DeviceRequest] | None:
    if gpus is None:
        return None
    if isinstance(gpus, list):
        return [DeviceRequest(driver="nvidia", device_ids=gpus, capabilities=[["gpu"]])]
    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(driver="nvidia", count=count, capabilities=[["gpu"]])]


def _restart_policy(spec: FunctionSpec) -> str:
    return "unless-stopped" if spec.min_scale else "no"


def _answers(ip: str, port: int, path: str) -> bool:
    """True once something answers HTTP below 500 on ip:port."""
    conn = http.client.HTTPConnection(ip, port, timeout=2)
    try:
        # On a local bridge a live address connects in well under a millisecond;
        # a dead one (the container just exited) would hang in ARP for seconds.
        conn.sock = socket.create_connection((ip, port), timeout=0.2)
        conn.sock.settimeout(2)
        conn.request("GET", path, headers={"User-Agent": "faas-readiness"})
        return conn.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Prefer a running container, then the most recently created."""
    rank_a = (a["State"] == "running", a["Created"])
    rank_b = (b["State"] == "running", b["Created"])
    return rank_a > rank_b


def _state(summary: dict[str, Any]) -> tuple[State, str]:
    status = summary["State"]
    if status == "running":
        return State.RUNNING, ""
    if status in ("created", "restarting"):
        return State.STARTING, ""
    if status == "exited":
        code = _exit_code(summary.get("Status", ""))
        if code in _STOP_EXIT_CODES:
            return State.STOPPED, "scaled to zero"
        return State.FAILED, f"exited with code {code}"
    return State.FAILED, status


def _exit_code(status_text: str) -> int | None:
    # The list API gives only "Exited (137) 5 minutes ago".
    try:
        return int(status_text.split("(", 1)[1].split(")", 1)[0])
    except (IndexError, ValueError):
        return None


def _exit_reason(state: dict[str, Any]) -> str:
    if state.get("OOMKilled"):
        return "out of memory"
    if state.get("Error"):
        return str(state["Error"])
    return f"exited with code {state.get('ExitCode')}"
