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
pulls the function's image from its registry (FAAS_REGISTRY). The stats of a
task on another node come from the stats agent there (`faas.agent`, a global
service made at the gateway's start).

A function's secrets are Docker secrets, one per value, which Swarm hands to
the tasks on whichever node they run; a new value replaces the replicas.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    SecretReference,
    ServiceMode,
    TaskTemplate,
)
from loguru import logger

from . import agent, auth, labels
from .config import Settings
from .docker_provider import DockerProvider, _engine_errors, _parse_time, own_container_id
from .errors import BuildFailed, FaasError, FunctionNotFound, InvalidSpec, ProviderError
from .provider import EngineInfo, Instance, LogStream, State, Usage
from .secretstore import MOUNT_PATH
from .spec import FunctionSpec, memory_bytes

Task = dict[str, Any]
# Task states before `running` (Docker's "Swarm task states").
_STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready"} | {
    "starting"
}
# A task meant to run, or being removed: either holds its slot.
_LEAVING_SLOT = {"new", "ready", "running", "remove"}
# Swarmkit's limit on the name of a secret.
_SECRET_NAME_MAX = 64
# How long stop() waits past the grace period for the task to be gone.
_STOP_SLACK = 15.0
# Where a stats agent finds its node's engine (FAAS_SWARM_DOCKER_SOCKET, mounted).
_AGENT_SOCKET = "/var/run/docker.sock"


class SwarmProvider(DockerProvider):
    """Function instances as single-replica services on a Swarm: engine calls only."""

    def __init__(self, settings: Settings, *, client: docker.DockerClient | None = None) -> None:
        super().__init__(settings, client=client)
        # function -> secret -> (ID, name) of the Docker secret its next services
        # reference: what the last `mount_secrets` made (the core mounts before
        # it creates), and what the pruning keeps though no service uses it yet.
        self._mounted: dict[str, dict[str, tuple[str, str]]] = {}
        self._secrets_lock = threading.Lock()

    @functools.cached_property
    def _secret_names_key(self) -> bytes:
        """The key of the hashes in Docker secrets' names, derived from the admin
        token (no state of its own; a new token renames them at the next deploy)."""
        admin = auth.admin_token(self.settings).encode()
        return hmac.new(admin, b"faas docker secret names", hashlib.sha256).digest()

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
            node=str(task["NodeID"]) if address and task is not None else None,
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

    def nodes(self, *, fresh: bool = False) -> dict[str, str]:
        """The stats agents' addresses: one per node, on the functions' network,
        which is what a node must reach to serve (and the gateway, to forward)."""
        return self._agents.addresses(fresh=fresh)

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

    def sent_bytes(self, instance_id: str) -> int | None:
        found = self._sample(instance_id)
        return None if found is None else found[1]

    def usage(self, instance_id: str) -> Usage:
        found = self._sample(instance_id)
        return Usage(0, 0, 0.0, 0, False) if found is None else found[0]

    def _sample(self, instance_id: str) -> agent.Sample | None:
        """The instance's running task's sample: from this engine when the task runs
        on this node, else from the stats agent of its node (zeros when that one
        does not answer); None when no task runs."""
        task = _running(self._tasks([instance_id])[instance_id])
        if task is None:
            return None
        container = str(task["Status"]["ContainerStatus"]["ContainerID"])
        if task["NodeID"] == self._node_id():  # a task of ours: no need to check its labels
            return self.read_sample(container)
        return self._agents.sample(str(task["NodeID"]), container)

    def _node_id(self) -> str:
        if self._own_node is None:
            with _engine_errors():
                self._own_node = str(self.client.info()["Swarm"]["NodeID"])
        return self._own_node

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
        with self._secrets_lock:
            made = self._mounted.get(spec.name, {})
        missing = [s for s in spec.secrets if s not in made]
        if missing:
            # The core mounts a function's secrets before it creates an instance: one
            # is missing when its value left the store after the deploy.
            raise ProviderError(
                f"secret {missing[0]!r} of function {spec.name!r} has no value: "
                "create it again (faas secrets create)"
            )
        container["Secrets"] = _references({s: made[s] for s in spec.secrets})
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
        def scaled(spec: dict[str, Any]) -> dict[str, Any]:
            # The spec as read, only its replicas changed (as `docker service
            # scale` does): the SDK's fetch_current_spec would read it a second
            # time, on the wake's path.
            return {
                "name": spec["Name"],
                "labels": spec.get("Labels"),
                "mode": ServiceMode("replicated", replicas=replicas),
                "task_template": spec["TaskTemplate"],
                # create_service puts them beside the task template; an update
                # must carry them in it (Swarm migrates them).
                "networks": spec["TaskTemplate"].get("Networks") or spec.get("Networks"),
                "update_config": spec.get("UpdateConfig"),
                "rollback_config": spec.get("RollbackConfig"),
                "endpoint_spec": spec.get("EndpointSpec"),
            }

        if not self._update_service(instance_id, scaled):
            raise FunctionNotFound(instance_id[:12])

    def _update_service(
        self, service_id: str, changes: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> bool:
        """Update a service with `changes(its spec as read)` (update_service's
        arguments), reading it again when another update came between the read and
        ours; False when there is no such service."""
        for attempt in range(5):
            with _engine_errors():
                try:
                    service = self._api.inspect_service(service_id)
                    self._api.update_service(
                        service_id, service["Version"]["Index"], **changes(service["Spec"])
                    )
                    return True
                except docker.errors.NotFound:
                    return False
                except docker.errors.APIError as exc:
                    if "out of sequence" not in str(exc) or attempt == 4:
                        raise
        return True  # not reached: the last attempt returns or raises

    # -- secrets: one immutable Docker secret per value --------------------------

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        """A Docker secret for each value (made once: its name holds a hash of it),
        which the function's services created from now on reference; the
        services at 0 replicas are pointed at them at once (nothing starts).

        A running task keeps the secrets it started with (Docker secrets are
        immutable, and a service update would restart the task, failing requests),
        so False when one runs with an older value: the core then replaces the
        instances, and its next call here, once the old ones are gone, removes
        the Docker secrets no service uses any more."""
        with self._secrets_lock:
            made, listed = self._ensure_secrets(values)
            if made:
                self._mounted[name] = made
            else:
                self._mounted.pop(name, None)
        seen = True
        for service in self._services(name):
            spec = service["Spec"]
            wanted = _references(
                {
                    s: made[s]
                    for s in labels.read_spec(spec.get("Labels") or {})[0].secrets
                    if s in made
                }
            )
            current = spec["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
            if _secret_files(current) == _secret_files(wanted):
                continue
            if spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0):
                seen = False
            else:
                self._update_task_template(service["ID"], {"ContainerSpec": {"Secrets": wanted}})
        self.prune_secrets(listed)
        return seen

    def _ensure_secrets(
        self, values: Mapping[str, bytes]
    ) -> tuple[dict[str, tuple[str, str]], set[str] | None]:
        """secret -> (ID, name) of the Docker secret holding its value, made if
        missing; and the IDs of the namespace's Docker secrets it listed (None when
        it listed none)."""
        if not values:
            return {}, None
        ns = self.settings.namespace
        with _engine_errors():
            found = {
                s["Spec"]["Name"]: s["ID"]
                for s in self._api.secrets(filters={"label": f"{labels.NAMESPACE}={ns}"})
            }
            made = {}
            for secret, value in values.items():
                docker_name = docker_secret_name(ns, secret, value, self._secret_names_key)
                if docker_name not in found:
                    created = self._api.create_secret(
                        docker_name, value, labels={labels.NAMESPACE: ns, labels.SECRET: secret}
                    )
                    found[docker_name] = created["ID"]
                made[secret] = (str(found[docker_name]), docker_name)
        return made, {str(i) for i in found.values()}

    def prune_secrets(self, listed: set[str] | None = None) -> None:
        """Remove the namespace's Docker secrets that no service references and no
        function is about to (`_mounted`). No more engine calls when there are none.

        Best effort: it runs after work that is done (a deploy serving, a secret
        removed from the store), which an engine error here must not undo or fail;
        what is left goes at the next pruning. `listed`: the IDs of the
        namespace's Docker secrets, if the caller has just listed them."""
        try:
            self._prune_secrets(listed)
        except FaasError as exc:
            logger.warning("could not remove unused Docker secrets: {}", exc)

    def _prune_secrets(self, listed: set[str] | None) -> None:
        ns = self.settings.namespace
        with self._secrets_lock, _engine_errors():
            mounted = {ref[0] for made in self._mounted.values() for ref in made.values()}
            if listed is None:
                found = self._api.secrets(filters={"label": f"{labels.NAMESPACE}={ns}"})
                listed = {s["ID"] for s in found}
            unused = listed - mounted
            if not unused:
                return
            for service in self._services():
                container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
                unused -= {ref["SecretID"] for ref in container.get("Secrets") or []}
            for secret_id in unused:
                # Swarm refuses to remove one in use: a last guard against a race.
                with contextlib.suppress(docker.errors.APIError):
                    self._api.remove_secret(secret_id)

    def forget_secret(self, secret: str) -> None:
        self.prune_secrets()

    def _update_task_template(self, service_id: str, template: dict[str, Any]) -> None:
        """Change part of a service's task template (Swarm merges it into the rest);
        nothing when the service was removed meanwhile."""
        self._update_service(
            service_id, lambda spec: {"task_template": template, "fetch_current_spec": True}
        )

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

    # -- the stats agents: one per node, for the stats of the tasks there ----

    _own_node: str | None = None  # this engine's node id, fixed while in the swarm

    @functools.cached_property
    def _agents(self) -> agent.Agents:
        return agent.Agents(self._agent_addresses, agent.token(auth.admin_token(self.settings)))

    @property
    def _agent_service(self) -> str:
        return f"faas-{self.settings.namespace}-agent"

    def _agent_addresses(self) -> dict[str, str]:
        """Node id -> "ip:port" of the agents' running tasks on the functions' network."""
        with _engine_errors():
            try:
                tasks = cast(
                    builtins.list[Task],
                    self._api.tasks(
                        filters={"service": self._agent_service, "desired-state": "running"}
                    ),
                )
            except docker.errors.NotFound:  # no agents (a gateway outside a container)
                return {}
        return {
            str(t["NodeID"]): f"{ip}:{agent.PORT}"
            for t in tasks
            if t["Status"]["State"] == "running" and (ip := self._task_ip(t))
        }

    def prepare(self) -> None:
        super().prepare()
        try:
            self._ensure_agents()
        except FaasError as exc:
            logger.warning("no stats agents for tasks on other nodes: {}", exc)

    def _ensure_agents(self) -> None:
        """Run `faas.agent` on every node, as a global service of the gateway's own
        image and interpreter (and read-only bind mounts: a checkout mounted for
        development), unless it runs so already: a gateway restart changes nothing."""
        own = own_container_id()
        if own is None:  # on a plain host the overlay addresses are out of reach anyway
            logger.info("no stats agents: the gateway does not run in a container")
            return
        with _engine_errors():
            me = cast(dict[str, Any], self._api.inspect_container(own))
        secret = agent.token(auth.admin_token(self.settings))
        ns = self.settings.namespace
        secret_name = f"faas-{ns}-agent-{hashlib.sha256(secret.encode()).hexdigest()[:12]}"
        wanted = agent_service(me, self.settings, self._pinned(me["Config"]["Image"]))
        digest = hashlib.sha256(json.dumps([wanted, secret_name], sort_keys=True).encode())
        with _engine_errors():
            found = [s for s in self._api.services(filters={"name": self._agent_service})
                     if s["Spec"]["Name"] == self._agent_service]  # fmt: skip
            if (
                found
                and found[0]["Spec"].get("Labels", {}).get(labels.AGENT_SPEC)
                == (digest.hexdigest()[:12])
            ):
                return
            secret_id = self._agent_secret(secret_name, secret)
            if found:
                self._api.remove_service(found[0]["ID"])
            logger.info("starting the stats agents ({}) on every node", self._agent_service)
            self._api.create_service(
                _agent_template(wanted, secret_id, secret_name),
                name=self._agent_service,
                labels={labels.AGENT: ns, labels.AGENT_SPEC: digest.hexdigest()[:12]},
                mode=ServiceMode("global"),
                networks=[self.settings.function_network],
                endpoint_spec=EndpointSpec(mode="dnsrr"),
            )
            for old in self._api.secrets(filters={"label": f"{labels.AGENT}={ns}"}):
                if old["Spec"]["Name"] != secret_name:
                    with contextlib.suppress(docker.errors.APIError):
                        self._api.remove_secret(old["ID"])

    def _agent_secret(self, name: str, value: str) -> str:
        """The id of the agents' token secret `name`, created if missing."""
        for found in self._api.secrets(filters={"name": name}):
            if found["Spec"]["Name"] == name:
                return str(found["ID"])
        labelled = {labels.AGENT: self.settings.namespace}
        return str(self._api.create_secret(name, value.encode(), labels=labelled)["ID"])


def agent_service(container: dict[str, Any], settings: Settings, image: str) -> dict[str, Any]:
    """What the stats agents run, from the gateway's own container (its inspect):
    the same image and interpreter, and its read-only bind mounts."""
    env = {
        "FAAS_NAMESPACE": settings.namespace,
        "FAAS_LOG_LEVEL": settings.log_level,
        "DOCKER_HOST": f"unix://{_AGENT_SOCKET}",
    }
    if "PYTHONPATH" in os.environ:  # a checkout mounted for development
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    binds = [
        (str(m["Source"]), str(m["Destination"]))
        for m in container.get("Mounts") or []
        if m.get("Type") == "bind" and not m.get("RW") and m["Destination"] != _AGENT_SOCKET
    ]
    return {
        "image": image,
        "command": [sys.executable, "-m", "faas.agent"],
        "env": env,
        "binds": sorted(binds),
        "socket": settings.swarm_docker_socket,
    }


def _agent_template(wanted: dict[str, Any], secret_id: str, secret_name: str) -> TaskTemplate:
    mounts = [
        Mount(target, source, type="bind", read_only=True) for source, target in wanted["binds"]
    ]
    # The node's engine, for reads only (faas.agent): a read-only mount does not
    # make the API read-only; the agent's code does (docs/swarm.md).
    mounts.append(Mount(_AGENT_SOCKET, wanted["socket"], type="bind", read_only=True))
    container = ContainerSpec(
        wanted["image"],
        command=wanted["command"],
        env=wanted["env"],
        # Root for the socket (root-owned, mode 660), without any capability.
        user="0:0",
        cap_drop=["ALL"],
        read_only=True,
        mounts=mounts,
        secrets=[
            SecretReference(
                secret_id, secret_name, filename=agent.TOKEN_FILE.name, uid="0", gid="0", mode=0o400
            )
        ],
        healthcheck=Healthcheck(test=["NONE"]),
        init=True,
    )
    # Kept by engines whose service API has the field (newer than 20.10); 20.10 drops it
    # (its service inspect shows no NoNewPrivileges): caps dropped and no exec do the work.
    container["Privileges"] = {"NoNewPrivileges": True}
    return TaskTemplate(
        container,
        resources=Resources(cpu_limit=500_000_000, mem_limit=128 << 20),
        restart_policy=RestartPolicy(condition="any", delay=5_000_000_000),
        log_driver=DriverConfig("json-file", {"max-size": "1m", "max-file": "2"}),
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
    if spec.gpus is not None:
        raise InvalidSpec(
            "gpus", "Swarm services get GPUs only as generic node resources; not supported"
        )


def docker_secret_name(namespace: str, secret: str, value: bytes, key: bytes) -> str:
    """The name of the Docker secret holding `value` for the namespace's `secret`:
    a new value gets a new name (a Docker secret cannot change), the same value
    the same name (mounting again makes nothing). Keyed (HMAC): a bare hash of a
    short value in a name that any read-only user of the engine lists could be
    brute-forced offline."""
    message = b"\0".join([namespace.encode(), secret.encode(), value])
    digest = hmac.new(key, message, hashlib.sha256)
    suffix = f"-{digest.hexdigest()[:12]}"
    # Long names are cut: the labels, not the name, say whose secret it is.
    prefix = f"faas-{namespace}-{secret}"[: _SECRET_NAME_MAX - len(suffix)].rstrip("-")
    return prefix + suffix


def _references(made: Mapping[str, tuple[str, str]]) -> builtins.list[SecretReference]:
    """Each secret as a read-only file at MOUNT_PATH/<secret>, readable by any user
    (the image may run as non-root), in a stable order."""
    return [
        SecretReference(
            secret_id, docker_name, filename=f"{MOUNT_PATH}/{secret}", uid="0", gid="0", mode=0o444
        )
        for secret, (secret_id, docker_name) in sorted(made.items())
    ]


def _secret_files(refs: builtins.list[Any]) -> builtins.list[tuple[str, str, int]]:
    """What a task reads of its secret references: (Docker secret, file, mode)."""
    return sorted((r["SecretName"], r["File"]["Name"], r["File"]["Mode"]) for r in refs)
