"""Provider on a Docker engine, through the docker SDK.

The only module that imports `docker`: SDK exceptions become `faas.errors`
here (see `_engine_errors`), and nothing above this layer knows about
containers. Engine calls only: the sequences (wake, drain, rollout) are in
`faas.lifecycle`, the policy in `faas.policy`. All state is in container
labels (`faas.labels`).
"""

from __future__ import annotations

import builtins
import contextlib
import re
import secrets
import shutil
import tarfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.models.images import Image
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit
from loguru import logger

from . import labels, oci, secretstore
from .config import Settings
from .errors import (
    BuildFailed,
    FaasError,
    FunctionNotFound,
    ImageNotFound,
    InvalidSpec,
    ProviderError,
)
from .provider import EngineInfo, Instance, LogStream, State, Usage
from .registry import pull_failure
from .spec import FunctionSpec

# A container as the engine's list endpoint describes it.
Summary = dict[str, Any]
Summaries = list[Summary]

# Exit codes of a container that was stopped on purpose (by `docker stop`:
# SIGTERM honoured, or SIGKILL after the grace period), not one that crashed.
_STOP_EXIT_CODES = (0, 143, 137)
ICC = "com.docker.network.bridge.enable_icc"
BRIDGE = "com.docker.network.bridge.name"


# Seconds a build may go without a line of output.
BUILD_READ_TIMEOUT = 3600


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
    """Function instances as containers on one Docker engine: engine calls only."""

    def __init__(self, settings: Settings, *, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._network_lock = threading.Lock()
        self._warned: set[str] = set()
        self._own_mounts: list[tuple[str, str]] | None = None  # (inside, on the host)

    @property
    def client(self) -> docker.DockerClient:
        # Connect lazily so the gateway starts (and reports 503) while the
        # engine is down, instead of refusing to start.
        if self._client is None:
            with _engine_errors():
                self._client = docker.DockerClient.from_env()
        return self._client

    # -- reading -----------------------------------------------------------

    def instances(self, name: str | None = None) -> builtins.list[Instance]:
        wanted = [f"{labels.NAMESPACE}={self.settings.namespace}"]
        if name is not None:
            wanted.append(f"{labels.FUNCTION}={name}")
        with _engine_errors():
            found = self.client.api.containers(all=True, filters={"label": wanted})
        return [self._instance(summary) for summary in cast(Summaries, found)]

    def _instance(self, summary: Summary) -> Instance:
        spec, invalid = labels.read_spec(summary["Labels"])
        state, reason = _state(summary)
        oom = False
        if summary["State"] == "exited" and _exit_code(summary.get("Status", "")) not in (0, 143):
            # Only an inspect tells an OOM kill (137) from a stop that timed out.
            with _engine_errors():
                detail = self.client.api.inspect_container(summary["Id"])["State"]
            if detail.get("OOMKilled"):
                state, reason, oom = State.FAILED, "out of memory", True
        if invalid:
            state, reason = State.INVALID, invalid
        address = None
        if state in (State.RUNNING, State.PAUSED):
            nets = summary.get("NetworkSettings", {}).get("Networks", {})
            ip = nets.get(self.settings.function_network, {}).get("IPAddress")
            address = f"{ip}:{spec.port}" if ip else None
        return Instance(
            id=summary["Id"],
            spec=spec,
            state=state,
            created=datetime.fromtimestamp(summary["Created"], UTC),
            address=address,
            reason=reason,
            oom_killed=oom,
        )

    def inspect(self, instance_id: str) -> Instance:
        with _engine_errors():
            try:
                attrs = self.client.api.inspect_container(instance_id)
            except docker.errors.NotFound as exc:
                raise FunctionNotFound(instance_id[:12]) from exc
        spec, invalid = labels.read_spec(attrs["Config"]["Labels"] or {})
        st = attrs["State"]
        if invalid:
            state, reason = State.INVALID, invalid
        elif st.get("Restarting") or st["Status"] in ("exited", "dead"):
            failed = st.get("OOMKilled") or st.get("ExitCode") not in _STOP_EXIT_CODES
            state = State.FAILED if failed or st.get("Restarting") else State.STOPPED
            reason = _exit_reason(st)
        elif st["Status"] == "running":
            state, reason = State.RUNNING, ""
        elif st["Status"] == "paused":
            state, reason = State.PAUSED, "paused while idle"
        else:
            state, reason = State.STARTING, ""
        ip = attrs["NetworkSettings"]["Networks"].get(self.settings.function_network, {})
        ip = ip.get("IPAddress")
        return Instance(
            id=attrs["Id"],
            spec=spec,
            state=state,
            created=_parse_time(attrs["Created"]),
            address=f"{ip}:{spec.port}" if ip and state in (State.RUNNING, State.PAUSED) else None,
            reason=reason,
            oom_killed=bool(st.get("OOMKilled")),
        )

    def engine_info(self) -> EngineInfo:
        with _engine_errors():
            info = self.client.info()
        return EngineInfo(
            runtimes=frozenset(info.get("Runtimes") or {}),
            default_runtime=info.get("DefaultRuntime"),
            memory_bytes=int(info.get("MemTotal") or 0),
        )

    def nodes(self, *, fresh: bool = False) -> dict[str, str]:
        return {}  # one host: the gateway goes with it

    def logs(
        self,
        instance_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
    ) -> LogStream:
        with _engine_errors():
            stream = self.client.api.logs(
                instance_id,
                stream=True,
                follow=follow,
                timestamps=True,
                tail="all" if tail is None else tail,
                since=since,
            )
        return cast(LogStream, stream)

    def tail(self, instance_id: str, lines: int = 20) -> str:
        try:
            return bytes(self.client.api.logs(instance_id, tail=lines)).decode("utf-8", "replace")
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return ""

    def sent_bytes(self, instance_id: str) -> int | None:
        """Bytes the container has sent so far (None if not running)."""
        with _engine_errors():
            try:
                stats = self.client.api.stats(instance_id, stream=False, one_shot=True)
            except docker.errors.NotFound:
                return None
        return sent_of(stats)

    def usage(self, instance_id: str) -> Usage:
        """One stats sample (one_shot: no 1 s wait for a CPU delta) plus an inspect."""
        with _engine_errors():
            stats = self.client.api.stats(instance_id, stream=False, one_shot=True)
            state = self.client.api.inspect_container(instance_id)
        return usage_of(stats, state)

    def sample(self, container_id: str) -> tuple[Usage, int | None] | None:
        """Usage and bytes sent of a running container of this namespace on this
        engine; None when the engine runs no such container (the stats agent's one
        engine read, `faas.agent`: it answers for nothing else)."""
        wanted = [f"{labels.NAMESPACE}={self.settings.namespace}"]
        with _engine_errors():
            found = self.client.api.containers(filters={"id": container_id, "label": wanted})
        # The id filter matches prefixes: only the exact container is answered for.
        if not any(c["Id"] == container_id for c in found):
            return None
        return self.read_sample(container_id)

    def read_sample(self, container_id: str) -> tuple[Usage, int | None] | None:
        """Usage and bytes sent of a container, from one stats call (None: gone)."""
        with _engine_errors():
            try:
                stats = self.client.api.stats(container_id, stream=False, one_shot=True)
                state = self.client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
        return usage_of(stats, state), sent_of(stats)

    # -- changing ----------------------------------------------------------

    def create(self, spec: FunctionSpec) -> Instance:
        if spec.constraints or spec.spread:
            field = "constraints" if spec.constraints else "spread"
            raise InvalidSpec(field, "placement needs a Docker Swarm (FAAS_PROVIDER=swarm)")
        s = self.settings
        self._ensure_network()
        name = f"faas-{s.namespace}-{spec.name}-{secrets.token_hex(3)}"
        r = spec.resources
        memory = r.memory or s.default_memory
        with _engine_errors():
            try:
                container = self.client.containers.create(
                    spec.image,
                    name=name,
                    hostname=name,  # one per replica, as a pod's name
                    labels=labels.container_labels(spec, s.namespace, s.function_network),
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
                    pids_limit=r.pids or s.default_pids,
                    mem_limit=memory,
                    memswap_limit=memory,  # the same figure: no swap
                    nano_cpus=int((r.cpus or s.default_cpus) * 1e9),
                    runtime=spec.runtime,
                    device_requests=_gpu_requests(spec.gpus),
                    ulimits=[Ulimit(name=k, soft=v, hard=v) for k, v in r.ulimits.items()],
                    mounts=self._secret_mounts(spec) or None,
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
        return self.inspect(str(container.id))

    def _secret_mounts(self, spec: FunctionSpec) -> list[Mount]:
        """The function's secrets folder, read-only at /var/openfaas/secrets: the
        container sees its own secrets only, and a value replaced in the folder at
        once (a folder bind follows renames in it; a file bind would keep the old
        inode). A `Mount`, not a bind string: a missing folder is an error, not an
        empty folder the engine makes."""
        if not spec.secrets:
            return []
        folder = self._host_path(str(self.settings.function_secrets_dir / spec.name))
        return [Mount(secretstore.MOUNT_PATH, folder, type="bind", read_only=True)]

    def _host_path(self, path: str) -> str:
        """`path` as the engine sees it. The same, unless the gateway itself runs in a
        container (the compose stack): then its state dir is a volume, whose folder on
        the host the engine must be given for a bind."""
        if self._own_mounts is None:
            self._own_mounts = self._read_own_mounts()
        return host_path(path, self._own_mounts)

    def _read_own_mounts(self) -> list[tuple[str, str]]:
        own = own_container_id()
        if own is None:
            return []
        try:
            found = self.client.api.inspect_container(own).get("Mounts") or []
        except docker.errors.NotFound:  # a container of another engine (docker in docker)
            return []
        return [(m["Destination"], m["Source"]) for m in found if m.get("Source")]

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        """The function's folder of secrets, `<function_secrets_dir>/<name>`, in a
        0700 parent: other users of this host see nothing; inside the container the
        files are 0444, readable by whatever user the image runs as."""
        parent = self.settings.function_secrets_dir
        folder = parent / name
        if not values:
            shutil.rmtree(folder, ignore_errors=True)
            return True
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        parent.chmod(0o700)
        secretstore.write_private_copy(folder, values)
        folder.chmod(0o755)
        return True

    def forget_secret(self, secret: str) -> None:
        """Nothing kept: a function's folder holds only the secrets it lists."""

    def start(self, instance_id: str) -> None:
        with _engine_errors():
            try:
                self.client.api.start(instance_id)
            except docker.errors.APIError as exc:
                if "network" not in str(exc) or "not found" not in str(exc):
                    raise
                # Someone deleted the function network while it was stopped
                # (a prune, a compose down): recreate it and reattach.
                self._reattach(instance_id)
                self.client.api.start(instance_id)

    def stop(self, instance_id: str, timeout: float) -> None:
        with _engine_errors(), contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(instance_id, timeout=int(timeout))

    def pause(self, instance_id: str) -> None:
        with _engine_errors():
            self.client.api.pause(instance_id)

    def unpause(self, instance_id: str) -> None:
        with _engine_errors():
            try:
                self.client.api.unpause(instance_id)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # "is not paused": what we wanted
                    raise

    def remove(self, instance_id: str) -> None:
        with _engine_errors(), contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(instance_id, force=True)

    def image_labels(self, image: str) -> dict[str, str] | None:
        found = self._local_image(image)
        return None if found is None else dict(found.labels or {})

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
                labels={labels.IMAGE: "build"},
                # A step may print nothing for minutes (a big download, a slow
                # commit on a loaded host): the client's 60 s read timeout would
                # cut the build off in the middle.
                timeout=BUILD_READ_TIMEOUT,
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
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,  # the build stream is read from the raw socket
        ) as exc:
            raise ProviderError(f"the Docker engine's build stream broke off: {exc}") from exc

    def prepare(self) -> None:
        self._ensure_network()

    def _ensure_network(self) -> None:
        net = self.settings.function_network
        with self._network_lock, _engine_errors():
            # The names filter matches substrings; compare exactly.
            found = [n for n in self.client.api.networks(names=[net]) if n["Name"] == net]
            if found:
                options = found[0].get("Options") or {}
                # The engine reads the option with Go's ParseBool.
                icc = options.get(ICC, "true").lower() not in ("false", "f", "0")
                bridge = options.get(BRIDGE) == self.settings.function_bridge
                if (icc or not bridge) and net not in self._warned:
                    self._warned.add(net)
                    problems = [
                        ("lets its containers reach each other, so a function can call "
                         "another around Traefik and its key check", icc),
                        ("has its bridge under another name than the egress rules use "
                         f"({self.settings.function_bridge})", not bridge),
                    ]  # fmt: skip
                    logger.warning(
                        "network {net} {what}. Scale every function to zero, then `docker "
                        "network rm {net}`: the platform makes it anew, and reattaches each "
                        "function as it starts",
                        net=net,
                        what=" and ".join(text for text, wrong in problems if wrong),
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
                # A bridge interface named after the network, so the egress rules
                # (faas/egress.py) name it before it exists and after it is made anew.
                options={ICC: "false", BRIDGE: self.settings.function_bridge},
            )

    def _reattach(self, instance_id: str) -> None:
        logger.warning("{}: its network is gone; recreating and reattaching", instance_id[:12])
        self._ensure_network()
        attrs = self.client.api.inspect_container(instance_id)
        for net_name in attrs["NetworkSettings"]["Networks"]:
            # The network is gone; Docker still drops the stale endpoint.
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.disconnect_container_from_network(instance_id, net_name, force=True)
        self.client.api.connect_container_to_network(instance_id, self.settings.function_network)


def usage_of(stats: dict[str, Any], state: dict[str, Any]) -> Usage:
    """A `Usage` from the engine's one-shot stats and the container's inspect."""
    memory = cast(dict[str, Any], stats.get("memory_stats") or {})
    cpu = cast(dict[str, Any], stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    return Usage(
        memory_bytes=int(memory.get("usage", 0)),
        memory_limit_bytes=int(memory.get("limit", 0)),
        cpu_seconds=int(cpu.get("total_usage", 0)) / 1e9,
        restarts=int(state.get("RestartCount", 0)),
        oom_killed=bool(state.get("State", {}).get("OOMKilled")),
    )


def sent_of(stats: dict[str, Any]) -> int | None:
    """Bytes sent on all the container's networks, from its stats (None: not running,
    the engine answers with an empty sample)."""
    nets = cast(dict[str, dict[str, int]], stats.get("networks") or {})
    if not nets:
        return None
    return sum(n.get("tx_bytes", 0) for n in nets.values())


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


def _gpu_requests(gpus: str | int | list[str] | None) -> list[DeviceRequest] | None:
    if gpus is None:
        return None
    if isinstance(gpus, list):
        return [DeviceRequest(driver="nvidia", device_ids=gpus, capabilities=[["gpu"]])]
    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(driver="nvidia", count=count, capabilities=[["gpu"]])]


def _restart_policy(spec: FunctionSpec) -> str:
    return "unless-stopped" if spec.min_scale else "no"


def _state(summary: dict[str, Any]) -> tuple[State, str]:
    status = summary["State"]
    if status == "running":
        return State.RUNNING, ""
    if status == "paused":
        return State.PAUSED, "paused while idle"
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


def _parse_time(text: str) -> datetime:
    """The engine's RFC 3339 time with nanoseconds, to what Python parses."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _exit_reason(state: dict[str, Any]) -> str:
    if state.get("OOMKilled"):
        return "out of memory"
    if state.get("Error"):
        return str(state["Error"])
    return f"exited with code {state.get('ExitCode')}"


# A container's own /etc/hostname and friends are bound from the engine's folder for it.
_OWN_ID = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container_id(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The id of the container this process runs in, or None on a plain host."""
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return None
    found = _OWN_ID.search(text)
    return found.group(1) if found else None


def host_path(path: str, mounts: Iterable[tuple[str, str]]) -> str:
    """`path` through the mount (inside, on the host) with the longest inside
    prefix of it; unchanged when none holds it."""
    best: tuple[str, str] | None = None
    for inside, outside in mounts:
        holds = path == inside or path.startswith(inside.rstrip("/") + "/")
        if holds and (best is None or len(inside) > len(best[0])):
            best = (inside, outside)
    if best is None:
        return path
    return best[1] + path[len(best[0].rstrip("/")) :]
