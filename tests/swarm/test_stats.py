"""Stats and logs of replicas on other nodes than the gateway's: the stats agents
(faas/agent.py, a global service the Swarm provider starts), what the gateway
reports from them, the logs gathered by the manager, and the agents' lifetime."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import docker
import pytest
import requests

from faas import agent
from tests.integration.conftest import fn_name, wait_for

from .cluster import Cluster
from .conftest import WEB_PORT
from .platform import Load, SwarmStack, running_platform
from .test_swarm import running_tasks

pytestmark = pytest.mark.integration
LIMIT = 256 << 20  # the default memory limit of a function


def engine(platform: SwarmStack) -> Any:
    return docker.DockerClient(base_url=platform.manager.socket)


def agent_tasks(platform: SwarmStack) -> dict[str, str]:
    """Node id -> overlay address of the running agents."""
    found = engine(platform).api.tasks(filters={"service": f"faas-{platform.namespace}-agent"})
    addresses = {}
    for task in found:
        if task["DesiredState"] != "running" or task["Status"]["State"] != "running":
            continue
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == platform.network:
                addresses[task["NodeID"]] = attachment["Addresses"][0].split("/")[0]
    return addresses


def ask_agent(platform: SwarmStack, address: str, container: str) -> dict[str, Any]:
    """GET the agent's answer for `container`, from the platform's container (a
    member of the overlay network), with the token derived from the admin token:
    {"status": ..., **its JSON}."""
    url = f"http://{address}:{agent.PORT}/containers/{container}"
    headers = {"Authorization": f"Bearer {agent.token(platform.token)}"}
    code = (
        "import urllib.request as u\n"
        f"r = u.Request({url!r}, headers={headers!r})\n"
        "import json, urllib.error as e\n"
        "try: got = u.urlopen(r, timeout=20)\n"
        "except e.HTTPError as exc: got = exc\n"
        "print(json.dumps({'status': got.status, **json.loads(got.read())}))"
    )
    out = platform.manager.docker("exec", platform.container, "/usr/bin/env", "python3", "-c", code)
    return dict(json.loads(out))


def stats_row(platform: SwarmStack, name: str) -> dict[str, Any]:
    (row,) = platform.api("GET", "/stats", params={"name": name}).json()
    return dict(row)


def test_memory_of_replicas_on_every_node_under_load(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    name = fn_name("stats")
    got = platform.api("PUT", f"/functions/{name}", json={"image": echo, "min_scale": 3})
    assert got.status_code == 200, got.text
    try:
        tasks = running_tasks(platform, name)
        assert len(tasks) == 3
        manager = platform.manager.docker("info", "-f", "{{.Swarm.NodeID}}")
        assert any(t["NodeID"] != manager for t in tasks), "no replica on a worker"
        wait_for(lambda: len(agent_tasks(platform)) == len(swarm.nodes), 60, "an agent per node")
        agents = agent_tasks(platform)
        with Load(platform, name, clients=2) as load:
            wait_for(lambda: load.served > 30, 30, "load to flow")
            # Each replica, read by the agent of its node.
            for task in tasks:
                container = task["Status"]["ContainerStatus"]["ContainerID"]
                sample = ask_agent(platform, agents[task["NodeID"]], container)
                assert sample["usage"]["memory_bytes"] > 0, (task["NodeID"], sample)
                assert sample["usage"]["memory_limit_bytes"] == LIMIT, sample
                assert sample["sent_bytes"] > 0, sample
            # A container of no function (the platform's own): not answered for.
            platform_id = platform.manager.docker("inspect", "-f", "{{.Id}}", platform.container)
            refused = ask_agent(platform, agents[manager], platform_id)
            assert refused["status"] == 404, refused
            # The gateway's figure sums all three: a replica read as zeros would
            # be missing from the limit.
            wait_for(
                lambda: stats_row(platform, name)["memory_limit_bytes"] == 3 * LIMIT,
                30,
                f"3 replicas' memory in /api/v1/stats: {stats_row(platform, name)}",
            )
            assert stats_row(platform, name)["memory_bytes"] > 0
        assert load.failures == []
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_logs_of_replicas_on_workers_hold_each_ones_output(platform: SwarmStack, echo: str) -> None:
    name = fn_name("wlogs")
    spec = {"image": echo, "min_scale": 2, "constraints": ["node.labels.faas.test.node!=n1"]}
    got = platform.api("PUT", f"/functions/{name}", json=spec)
    assert got.status_code == 200, got.text
    try:
        tasks = running_tasks(platform, name)
        manager = platform.manager.docker("info", "-f", "{{.Swarm.NodeID}}")
        assert len(tasks) == 2
        assert all(t["NodeID"] != manager for t in tasks)
        # A task's container is named by its id; the API tags lines by service.
        replica = {
            t["Status"]["ContainerStatus"]["ContainerID"][:12]: t["ServiceID"][:12] for t in tasks
        }
        paths: dict[str, list[str]] = defaultdict(list)  # replica -> the paths it served
        session = requests.Session()
        for i in range(60):
            answer = session.get(f"{platform.url}/function/{name}/logged-{i}", timeout=10)
            assert answer.status_code == 200, answer.text
            paths[replica[answer.json()["hostname"]]].append(f"/logged-{i}")
            if len(paths) == 2 and i >= 10:
                break
        assert len(paths) == 2, paths

        def each_replicas_output() -> bool:
            text = platform.api("GET", f"/functions/{name}/logs").text
            lines = text.splitlines()
            return all(
                any(f"[{tag}]" in line and path in line for line in lines)
                for tag, served in paths.items()
                for path in served
            )

        wait_for(each_replicas_output, 20, "every replica's requests in the function's logs")
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_the_agents_run_hardened_on_every_node_survive_a_restart_and_go_with_the_platform(
    swarm: Cluster, echo: str
) -> None:
    with running_platform(swarm, echo, WEB_PORT + 1) as p:
        wait_for(lambda: len(agent_tasks(p)) == len(swarm.nodes), 60, "an agent per node")
        (service,) = engine(p).api.services(filters={"label": f"faas.agent={p.namespace}"})
        spec = service["Spec"]
        container = spec["TaskTemplate"]["ContainerSpec"]
        assert spec["Mode"] == {"Global": {}}
        assert container["ReadOnly"] is True
        assert container["CapabilityDrop"] == ["ALL"]
        (secret,) = container["Secrets"]
        assert secret["File"]["Name"] == agent.TOKEN_FILE.name
        token = agent.token(p.token)
        assert token not in json.dumps(spec)  # not in its labels, environment or command
        socket = [m for m in container["Mounts"] if m["Target"] == "/var/run/docker.sock"]
        assert socket[0]["Source"] == swarm.sockets
        assert not any(s["Spec"]["Labels"].get("faas.namespace") for s in [service])
        # Functions do not list it (it has no faas.namespace label).
        assert p.api("GET", "/functions").json() == []
        p.restart()
        wait_for(lambda: _up(p), 60, "the gateway back after a restart")
        (again,) = engine(p).api.services(filters={"label": f"faas.agent={p.namespace}"})
        assert (again["ID"], again["Version"]) == (service["ID"], service["Version"])
        namespace = p.namespace
    m = swarm.manager
    agent_label = f"label=faas.agent={namespace}"
    assert m.docker("service", "ls", "-q", "--filter", agent_label) == ""
    assert m.docker("secret", "ls", "-q", "--filter", agent_label) == ""
    assert m.docker("network", "ls", "-q", "--filter", f"label=faas.namespace={namespace}") == ""


def _up(platform: SwarmStack) -> bool:
    try:
        return platform.api("GET", "/functions").status_code == 200
    except requests.RequestException:
        return False
