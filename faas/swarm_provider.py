"""Provider on a Docker Swarm, through the docker SDK (FAAS_PROVIDER=swarm).

One instance of a function is one Swarm service of 0 or 1 replicas: the
sequences in `faas.lifecycle` start, drain and retire instances one by one
(the oldest leaves first, a failed one is discarded, an update starts new
ones beside the old), and Swarm's own replica count cannot say which task
goes. Swarm still places each service's task on a node (constraints,
preferences, spread) and moves it when its node fails; a function at zero is
one service at 0 replicas. The state stays in labels, on the services: a
gateway or a manager's dockerd restart loses nothing.

Services use endpoint mode `dnsrr`: this kernel has no IPVS, so a VIP would
time out; Traefik's Swarm provider routes to the task addresses, and so does
the gateway while Traefik has not polled yet. Image calls (pull, load, build,
labels) are the Docker provider's, made on the manager's engine; every node
pulls the function's image from its registry (FAAS_REGISTRY).
"""

from __future__ import annotations

import builtins
import contextlib
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

import docker.errors
from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Healthcheck,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from . import labels
from .docker_provider import DockerProvider, _engine_errors, _parse_time
from .errors import BuildFailed, FunctionNotFound, InvalidSpec
from .provider import EngineInfo, Instance, LogStream, State, Usage
from .spec import FunctionSpec, memory_bytes

Task = dict[str, Any]
# Task states before `running` (Docker's "Swarm task states").
_STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready"} | {
    "starting"
}
# A task meant to run, or being removed: either holds its slot.
_LEAVING_SLOT = {"new", "ready", "running", "remove"}
_NO_SECRETS = "not on a Swarm yet (a folder on one node reaches no other; Docker secrets would)"
# How long stop() waits past the grace period for the task to be gone.
_STOP_SLACK = 15.0


class SwarmProvider(DockerProvider):
    """Function instances as single-replica services on a Swarm: engine calls only."""

    @property
    def _api(self) -> Any:
        # The SDK's service and task calls are untyped.
        return self.client.api

    # -- reading -----------------------------------------------------------

    def _services(self, name: str | None = None) -> list[dict[str, Any]]:
        wanted = [f"{labels.NAMESPACE}={self.settings.namespace}"]
        if name is not None:
            wanted.append(f"{labels.FUNCTION}={name}")
        with _engine_errors():
            return cast(list[dict[str, Any]], self._api.services(filters={"label": wanted}))

    def _tasks(self, service_ids: builtins.list[str]) -> dict[str, builtins.list[Task]]:
        by_service: dict[str, builtins.list[Task]] = {s: [] for s in service_ids}
        if not service_ids:
            return by_service
        with _engine_errors():
            try:
                found = self._api.tasks(filters={"service": service_ids})
            except docker.errors.NotFound:  # one was removed since it was listed
                found = []
                for service_id in service_ids:
                    with contextlib.suppress(docker.errors.NotFound):
                        found += self._api.tasks(filters={"service": [service_id]})
        for task in cast(builtins.list[Task], found):
            by_service.setdefault(task["ServiceID"], []).append(task)
        return by_service

    def instances(self, name: str | None = None) -> builtins.list[Instance]:
        services = self._services(name)
        tasks = self._tasks([s["ID"] for s in services])
        return [self._service_instance(s, tasks[s["ID"]]) for s in services]

    def inspect(self, instance_id: str) -> Instance:
        with _engine_errors():
            try:
                service = self._api.inspect_service(instance_id)
            except docker.errors.NotFound as exc:
                raise FunctionNotFound(instance_id[:12]) from exc
        return self._service_instance(service, self._tasks([service["ID"]])[service["ID"]])

    def _service_instance(self, service: dict[str, Any], tasks: builtins.list[Task]) -> Instance:
        spec, invalid = labels.read_spec(service["Spec"].get("Labels") or {})
        replicas = service["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0)
        task = _current(tasks, service.get("UpdatedAt", ""))
        state, reason, address = State.STOPPED, "scaled to zero", None
        if replicas:
            state, reason = _task_state(task)
            # Only once it runs, though the manager allocates the address as it
            # makes the task: a packet sent to it before the node has attached
            # the container leaves the sender's ARP entry unresolved, and the
            # kernel asks again only a second later (retrans_time_ms): a wake
            # that probed early answered at 1.05 s, or 2.05 s, whenever the
            # task had come up in between (measured; see docs/swarm.md).
            if state is State.RUNNING and task is not None:
                ip = self._task_ip(task)
                address = f"{ip}:{spec.port}" if ip else None
        if invalid:
            state, reason = State.INVALID, invalid
        return Instance(
            id=service["ID"],
            spec=spec,
            state=state,
            created=_parse_time(service["CreatedAt"]),
            address=address,
            reason=reason,
        )

    def _task_ip(self, task: Task) -> str | None:
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == self.settings.function_network:
                addresses = attachment.get("Addresses") or []
                return str(addresses[0]).split("/")[0] if addresses else None
        return None

    def task_node(self, instance_id: str) -> str | None:
        """The hostname of the node the instance's task runs on (None when none runs)."""
        task = _running(self._tasks([instance_id])[instance_id])
        if task is None:
            return None
        with _engine_errors():
            node = self._api.inspect_node(task["NodeID"])
        return str(node["Description"]["Hostname"])

    def engine_info(self) -> EngineInfo:
        with _engine_errors():
            info = self.client.info()
            nodes = self._api.nodes(filters={"role": "worker"}) + self._api.nodes(
                filters={"role": "manager"}
            )
        memory = sum(
            int(n["Description"]["Resources"].get("MemoryBytes", 0))
            for n in nodes
            if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"
        )
        return EngineInfo(
            runtimes=frozenset(info.get("Runtimes") or {}),
            default_runtime=info.get("DefaultRuntime"),
            memory_bytes=memory,
        )

    def logs(
        self,
        instance_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
    ) -> LogStream:
        # The manager gathers the output of the service's tasks from every node.
        with _engine_errors():
            stream = self._api.service_logs(
                instance_id,
                follow=follow,
                stdout=True,
                stderr=True,
                timestamps=True,
                tail="all" if tail is None else tail,
                since=since,
            )
        return cast(LogStream, stream)

    def tail(self, instance_id: str, lines: int = 20) -> str:
        try:
            chunks = self._api.service_logs(
                instance_id, stdout=True, stderr=True, tail=lines, follow=False
            )
            return b"".join(chunks).decode("utf-8", "replace")
        except docker.errors.DockerException:
            return ""

    def _local_container(self, instance_id: str) -> str | None:
        """The container of the instance's running task, when it runs on this node."""
        task = _running(self._tasks([instance_id])[instance_id])
        if task is None:
            return None
        with _engine_errors():
            here = self.client.info()["Swarm"]["NodeID"]
        if task["NodeID"] != here:
            return None
        return str(task["Status"]["ContainerStatus"]["ContainerID"])

    def sent_bytes(self, instance_id: str) -> int | None:
        # The engine API of another node is out of reach: 0 there (constant), so
        # idleness is judged by the proxy's request counts alone.
        container = self._local_container(instance_id)
        return 0 if container is None else super().sent_bytes(container)

    def usage(self, instance_id: str) -> Usage:
        container = self._local_container(instance_id)
        if container is None:
            return Usage(0, 0, 0.0, 0, False)
        return super().usage(container)

    # -- changing ----------------------------------------------------------

    def create(self, spec: FunctionSpec) -> Instance:
        _check_swarm(spec)
        s = self.settings
        self._ensure_network()
        name = f"faas-{s.namespace}-{spec.name}-{secrets.token_hex(3)}"
        with _engine_errors():
            try:
                created = self._api.create_service(
                    self._task_template(spec),
                    name=name,
                    labels=labels.service_labels(spec, s.namespace, s.function_network),
                    mode=ServiceMode("replicated", replicas=0),
                    networks=[s.function_network],
                    endpoint_spec=EndpointSpec(mode="dnsrr"),
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 400:
                    raise InvalidSpec("", str(exc.explanation or exc)) from exc
                raise
        return self.inspect(str(created["ID"]))

    def _task_template(self, spec: FunctionSpec) -> TaskTemplate:
        s = self.settings
        r = spec.resources
        memory = memory_bytes(r.memory or s.default_memory)
        container = ContainerSpec(
            self._pinned(spec.image),
            args=spec.command,
            env={**spec.env, "FAAS_FUNCTION_NAME": spec.name},
            labels={labels.NAMESPACE: s.namespace, labels.FUNCTION: spec.name},
            # The platform probes readiness itself (see the Docker provider).
            healthcheck=Healthcheck(test=["NONE"]),
            init=True,
            cap_drop=["ALL"],
            cap_add=spec.cap_add or None,
            read_only=spec.read_only,
            mounts=[Mount("/tmp", None, type="tmpfs", tmpfs_size=64 << 20)]  # noqa: S108
            if spec.read_only
            else None,
            stop_grace_period=int(s.stop_timeout * 1e9),
        )
        if r.ulimits:  # API 1.41; the SDK has no parameter for it
            container["Ulimits"] = [
                {"Name": k, "Soft": v, "Hard": v} for k, v in sorted(r.ulimits.items())
            ]
        resources = Resources(
            cpu_limit=int((r.cpus or s.default_cpus) * 1e9),
            mem_limit=memory,
            # Reserved as well: the scheduler places a task only where it fits.
            mem_reservation=memory,
        )
        resources["Limits"]["Pids"] = r.pids or s.default_pids  # API 1.41
        return TaskTemplate(
            container,
            resources=resources,
            # A scale-to-zero function is woken by its next request instead;
            # restarting it would only make it crash-loop.
            restart_policy=RestartPolicy(
                condition="any" if spec.min_scale else "none", delay=1_000_000_000
            ),
            placement=Placement(
                constraints=spec.constraints or None,
                preferences=[("spread", p) for p in spec.spread] or None,
            ),
            log_driver=DriverConfig("json-file", {"max-size": "10m", "max-file": "3"}),
        )

    # -- images: built or loaded on the manager, pushed where the nodes pull ----

    def build(
        self, context: IO[bytes], tag: str, args: dict[str, str] | None = None
    ) -> Iterator[str]:
        yield from super().build(context, tag, args)
        yield from self._push(tag)

    def load(self, archive: IO[bytes]) -> builtins.list[str]:
        published = []
        for image in super().load(archive):
            target = self.settings.published(image)
            if target != image and not image.startswith("sha256:"):
                repository, tag = _split_tag(target)
                with _engine_errors():
                    self._api.tag(image, repository, tag)
            for _ in self._push(target):
                pass
            published.append(target)
        return published

    def _push(self, image: str) -> Iterator[str]:
        """Push `image` to FAAS_REGISTRY (when it names it), yielding progress lines."""
        if not self.settings.registry or not image.startswith(f"{self.settings.registry}/"):
            return
        repository, tag = _split_tag(image)
        yield f"pushing {image}\n"
        with _engine_errors():
            for event in self._api.push(repository, tag, stream=True, decode=True):
                if "error" in event:
                    raise BuildFailed(f"push to {self.settings.registry}: {event['error']}", "")
                if event.get("status") and "id" not in event:
                    yield f"{event['status']}\n"

    def _pinned(self, image: str) -> str:
        """`image` with the digest the manager pulled it at, as `docker service create`
        pins it: every node runs the same image, and a node that has it starts a task
        without asking the registry again (~1 s per start here)."""
        if "@" in image or image.startswith("sha256:"):
            return image
        found = self._local_image(image)
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        for digest in (found.attrs.get("RepoDigests") or []) if found else []:
            if digest.startswith(f"{repository}@"):
                return f"{image}@{digest.split('@', 1)[1]}"
        return image  # built or loaded here and never pushed: only this node has it

    def _set_replicas(self, instance_id: str, replicas: int) -> None:
        for attempt in range(5):
            with _engine_errors():
                try:
                    service = self._api.inspect_service(instance_id)
                    spec = service["Spec"]
                    # The spec as read, only its replicas changed (as `docker
                    # service scale` does): the SDK's fetch_current_spec would
                    # read it a second time, on the wake's path.
                    self._api.update_service(
                        instance_id,
                        service["Version"]["Index"],
                        name=spec["Name"],
                        labels=spec.get("Labels"),
                        mode=ServiceMode("replicated", replicas=replicas),
                        task_template=spec["TaskTemplate"],
                        # create_service puts them beside the task template; an
                        # update must carry them in it (Swarm migrates them).
                        networks=spec["TaskTemplate"].get("Networks") or spec.get("Networks"),
                        update_config=spec.get("UpdateConfig"),
                        rollback_config=spec.get("RollbackConfig"),
                        endpoint_spec=spec.get("EndpointSpec"),
                    )
                    return
                except docker.errors.NotFound as exc:
                    raise FunctionNotFound(instance_id[:12]) from exc
                except docker.errors.APIError as exc:
                    # Another update came between the inspect and ours.
                    if "out of sequence" not in str(exc) or attempt == 4:
                        raise

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        if values:
            raise InvalidSpec("secrets", _NO_SECRETS)
        return True

    def start(self, instance_id: str) -> None:
        self._set_replicas(instance_id, 1)

    def pause(self, instance_id: str) -> None:
        raise InvalidSpec("pause", "Swarm cannot pause a service's tasks; scale it to 0")

    def unpause(self, instance_id: str) -> None:
        """Nothing to thaw: a service is never paused."""

    def stop(self, instance_id: str, timeout: float) -> None:
        """Scale to 0, and return once its task is gone (as `docker stop` returns
        once the container exited).

        Gone, not just exited: Swarm keeps the slot of a task it is removing, and a
        scale back to 1 before the task is deleted makes no new task, ever (seen
        here with 20.10: replicas 1, no task, until the next service update)."""
        try:
            self._set_replicas(instance_id, 0)
        except FunctionNotFound:
            return
        deadline = time.monotonic() + self.settings.stop_timeout + _STOP_SLACK
        while time.monotonic() < deadline:
            tasks = self._tasks([instance_id])[instance_id]
            if all(t.get("DesiredState") not in _LEAVING_SLOT for t in tasks):
                return
            time.sleep(0.05)

    def remove(self, instance_id: str) -> None:
        with _engine_errors(), contextlib.suppress(docker.errors.NotFound):
            self._api.remove_service(instance_id)

    def _ensure_network(self) -> None:
        net = self.settings.function_network
        with self._network_lock, _engine_errors():
            found = [n for n in self._api.networks(names=[net]) if n["Name"] == net]
            if found:
                return
            # Attachable: Traefik and the gateway may run as plain containers on it.
            self.client.networks.create(
                net,
                driver="overlay",
                attachable=True,
                check_duplicate=True,
                labels={labels.NAMESPACE: self.settings.namespace},
            )


def _current(tasks: builtins.list[Task], since: str = "") -> Task | None:
    """The task that stands for the service now: the newest one meant to run, else
    one that failed since the service's last update (`since`: its scale-up; Swarm
    marks a failed task it does not restart as meant to shut down). None right
    after a scale-up, before Swarm has made the task."""
    meant = [t for t in tasks if t.get("DesiredState") in ("running", "ready")]
    if not meant:
        after = _parse_time(since) if since else None
        meant = [
            t
            for t in tasks
            if t["Status"]["State"] in ("failed", "rejected")
            and (after is None or _parse_time(t["CreatedAt"]) >= after)
        ]
    return max(meant, key=lambda t: t["CreatedAt"], default=None)


def _split_tag(image: str) -> tuple[str, str]:
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _running(tasks: builtins.list[Task]) -> Task | None:
    running = [t for t in tasks if t["Status"]["State"] == "running"]
    return max(running, key=lambda t: t["CreatedAt"], default=None)


def _task_state(task: Task | None) -> tuple[State, str]:
    if task is None:
        return State.STARTING, ""
    status = task["Status"]
    st = status["State"]
    if st == "running":
        return State.RUNNING, ""
    if st == "pending" and status.get("Err"):
        # "no suitable node (scheduling constraints not satisfied on 3 nodes)"
        return State.FAILED, str(status["Err"])
    if st in _STARTING:
        return State.STARTING, ""
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    reason = status.get("Err") or (f"exited with code {code}" if code is not None else st)
    return State.FAILED, str(reason)


def _check_swarm(spec: FunctionSpec) -> None:
    """Refuse what a Swarm service cannot do, naming the field."""
    if spec.runtime is not None:
        raise InvalidSpec(
            "runtime", "Swarm services run on each node's default OCI runtime; set it there"
        )
    if spec.secrets:
        raise InvalidSpec("secrets", _NO_SECRETS)
    if spec.gpus is not None:
        raise InvalidSpec(
            "gpus", "Swarm services get GPUs only as generic node resources; not supported"
        )
