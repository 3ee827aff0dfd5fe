"""The platform on a 3-node Docker Swarm (FAAS_PROVIDER=swarm): routing through
Traefik's Swarm provider, placement, scale to and from zero, autoscaling, key
auth, logs, removal, a gateway restart, and a node that fails under load.

The node failure runs last: it leaves the swarm with one node down.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
import time
from collections import Counter
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.integration.conftest import fn_name, wait_for

from .cluster import Cluster
from .platform import Load, SwarmStack

pytestmark = pytest.mark.integration


def shown(platform: SwarmStack, name: str) -> dict[str, object]:
    return dict(platform.api("GET", f"/functions/{name}").json())


def running_tasks(platform: SwarmStack, name: str) -> list[dict[str, Any]]:
    engine: Any = docker.DockerClient(base_url=platform.manager.socket)
    services = [s["ID"] for s in platform.engine_services(engine, name)]
    tasks: list[dict[str, Any]] = []
    for service in services:  # one at a time: the autoscaler may remove one meanwhile
        with contextlib.suppress(docker.errors.NotFound):
            tasks += engine.api.tasks(filters={"service": [service]})
    return [
        t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    ]


def task_nodes(platform: SwarmStack, name: str) -> list[str]:
    """The nodes the function's running tasks are on (one per replica)."""
    engine = docker.DockerClient(base_url=platform.manager.socket)
    hostnames = {n["ID"]: n["Description"]["Hostname"] for n in engine.api.nodes()}
    return sorted(hostnames[t["NodeID"]] for t in running_tasks(platform, name))


def traefik_servers(platform: SwarmStack, name: str) -> list[str]:
    """The servers Traefik's Swarm provider routes the function to (its API, in the
    platform's container)."""
    url = f"http://127.0.0.1:8082/api/http/services/fn-{name}@swarm"
    code = (
        "import json,urllib.request,sys\n"
        f"try: d=json.load(urllib.request.urlopen('{url}'))\n"
        "except Exception: print('[]'); sys.exit()\n"
        "print(json.dumps([s['url'] for s in d['loadBalancer']['servers']]))"
    )
    out = platform.manager.docker("exec", platform.container, "/usr/bin/env", "python3", "-c", code)
    return list(json.loads(out))


def hostnames(platform: SwarmStack, name: str, calls: int = 30) -> Counter[str]:
    session = requests.Session()
    seen: Counter[str] = Counter()
    for _ in range(calls):
        got = session.get(f"{platform.url}/function/{name}/", timeout=10)
        assert got.status_code == 200, got.text
        seen[got.json()["hostname"]] += 1
    return seen


def node(swarm: Cluster, index: int) -> str:
    return swarm.nodes[index].netns  # the node's hostname, as Swarm names it


def test_deploy_serves_through_traefiks_swarm_provider(platform: SwarmStack, echo: str) -> None:
    name = fn_name("hello")
    got = platform.api("PUT", f"/functions/{name}", json={"image": echo, "env": {"A": "1"}})
    assert got.status_code == 200, got.text
    try:
        assert shown(platform, name)["ready_replicas"] == 1
        # The deploy returned once Traefik routed the task's address.
        assert len(traefik_servers(platform, name)) == 1
        answer = platform.invoke(name, "/x?y=1", method="POST", data=b"hi")
        assert answer.status_code == 200, answer.text
        assert answer.json()["body"] == "hi"
        assert answer.json()["path"] == "/x"
        # The state is on the service: spec and Traefik labels, dnsrr, no VIP.
        (service,) = platform.services(name)
        spec = json.loads(platform.manager.docker("service", "inspect", service))[0]["Spec"]
        assert json.loads(spec["Labels"]["faas.spec.env"]) == {"A": "1"}
        assert spec["Labels"]["traefik.swarm.network"] == platform.network
        assert spec["EndpointSpec"]["Mode"] == "dnsrr"
        assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 256 << 20
    finally:
        assert platform.api("DELETE", f"/functions/{name}").status_code == 204
    # `faas rm` leaves nothing: no service, hence no task on any node.
    assert platform.services(name) == []
    assert platform.api("GET", f"/functions/{name}").status_code == 404


def test_scale_to_three_spreads_over_the_nodes_and_back(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    name = fn_name("spread")
    assert platform.api("PUT", f"/functions/{name}", json={"image": echo}).status_code == 200
    try:
        code, _, err = platform.cli("scale", name, "3")
        assert code == 0, err
        # Each replica is a service of its own, so Swarm spreads them by the tasks
        # each node runs in all (not per service): over several nodes, not always
        # one on each.
        nodes = task_nodes(platform, name)
        assert len(nodes) == 3
        assert len(set(nodes)) >= 2, nodes
        assert set(nodes) <= {node(swarm, i) for i in range(3)}
        assert shown(platform, name)["ready_replicas"] == 3
        assert len(traefik_servers(platform, name)) == 3
        assert len(hostnames(platform, name)) == 3  # Traefik balances over all three
        code, _, err = platform.cli("scale", name, "1")
        assert code == 0, err
        assert len(task_nodes(platform, name)) == 1
        assert len(platform.services(name)) == 1
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_a_constraint_pins_a_function_to_a_labelled_node(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    name = fn_name("pinned")
    code, _, err = platform.cli(
        "deploy", name, "--image", echo,
        "--constraint", "node.labels.faas.test.node==n2",
    )  # fmt: skip
    assert code == 0, err
    try:
        # Logs come from the worker the task runs on, through the manager.
        assert platform.invoke(name, "/logged-path").status_code == 200
        wait_for(
            lambda: "/logged-path" in platform.api("GET", f"/functions/{name}/logs").text,
            15,
            "the request in the function's logs",
        )
        code, _, err = platform.cli("scale", name, "2")
        assert code == 0, err
        assert task_nodes(platform, name) == [node(swarm, 1)] * 2
        assert shown(platform, name)["constraints"] == ["node.labels.faas.test.node==n2"]
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_what_swarm_cannot_do_is_refused_and_nothing_is_made(
    platform: SwarmStack, echo: str
) -> None:
    cases: list[tuple[dict[str, object], int, str]] = [
        ({"runtime": "runsc"}, 422, "runtime"),
        ({"gpus": 1}, 422, "gpus"),
        ({"constraints": ["node.labels.x=true"]}, 422, "constraints"),
        # A constraint no node meets fails the deploy at once, naming why.
        ({"constraints": ["node.labels.faas.test.node==n9"]}, 502, "no suitable node"),
    ]
    for extra, status, mentions in cases:
        name = fn_name("refused")
        got = platform.api("PUT", f"/functions/{name}", json={"image": echo, **extra})
        assert got.status_code == status, got.text
        assert mentions in got.json()["error"], got.text
        assert platform.services(name) == []


def test_scaled_to_zero_the_next_requests_wake_it_without_error(
    platform: SwarmStack, echo: str
) -> None:
    name = fn_name("wake")
    assert platform.api("PUT", f"/functions/{name}", json={"image": echo}).status_code == 200
    try:
        got = platform.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
        assert got.status_code == 200, got.text
        assert shown(platform, name)["state"] == "stopped"
        (service,) = platform.services(name)  # kept at 0 replicas: its labels are the state
        mode = platform.manager.docker("service", "inspect", "-f", "{{json .Spec.Mode}}", service)
        assert json.loads(mode) == {"Replicated": {"Replicas": 0}}
        assert traefik_servers(platform, name) == []
        answers: list[int] = []
        began = time.monotonic()

        def call() -> None:
            answers.append(platform.invoke(name, "/woken").status_code)

        callers = [threading.Thread(target=call) for _ in range(6)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        woke = time.monotonic() - began
        assert answers == [200] * 6
        # Until Traefik polls the new task, the catch-all sends requests to the
        # gateway, which forwards them to the task's address: no error meanwhile.
        with Load(platform, name, clients=2) as load:
            wait_for(lambda: len(traefik_servers(platform, name)) == 1, 15, "Traefik's route")
            served = load.served
            wait_for(lambda: load.served > served + 5, 10, "requests on the warm path")
        assert load.failures == []
        print(f"woken from zero in {woke:.2f} s")
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_load_adds_replicas_then_they_go_back_to_one_then_zero(
    platform: SwarmStack, echo: str
) -> None:
    name = fn_name("auto")
    got = platform.api(
        "PUT",
        f"/functions/{name}",
        json={"image": echo, "max_scale": 3, "concurrency": 1, "idle_timeout": 2,
              "limits": {"rate_average": 0, "max_in_flight": 0}},
    )  # fmt: skip
    assert got.status_code == 200, got.text
    statuses: Counter[int] = Counter()
    hosts: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                got = session.get(f"{platform.url}/function/{name}/?cpu=20", timeout=15)
                statuses[got.status_code] += 1
                if got.status_code == 200:
                    hosts.add(got.json()["hostname"])
            except requests.RequestException:
                statuses[0] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(hosts) >= 2, 30, "a second replica to serve")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert int(str(shown(platform, name)["ready_replicas"])) >= 2
    assert set(statuses) == {200}, statuses
    wait_for(lambda: shown(platform, name)["ready_replicas"] == 1, 40, "back to one replica")
    wait_for(lambda: shown(platform, name)["state"] == "stopped", 40, "scale to zero")
    # One service stays, at 0 replicas: the next request starts it.
    wait_for(lambda: len(platform.services(name)) == 1, 20, "the other replicas removed")
    platform.api("DELETE", f"/functions/{name}")


def test_key_auth_on_the_swarm(platform: SwarmStack, echo: str) -> None:
    name = fn_name("keyed")
    got = platform.api("PUT", f"/functions/{name}", json={"image": echo, "auth": "key"})
    assert got.status_code == 200, got.text
    try:
        assert platform.invoke(name).status_code == 401
        assert platform.invoke(name, headers={"X-Faas-Key": "nope"}).status_code == 403
        key = platform.api("POST", f"/functions/{name}/keys", json={}).json()["key"]
        answer = platform.invoke(name, headers={"X-Faas-Key": key})
        assert answer.status_code == 200, answer.text
        assert "x-faas-key" not in answer.json()["headers"]  # never reaches the function
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_a_build_is_pushed_to_the_registry_and_runs_on_a_worker(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    name = fn_name("built")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {echo}\nENV BUILT=yes\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    got = platform.api("POST", f"/functions/{name}/build", data=context.getvalue())
    assert got.status_code == 200, got.text
    last = json.loads(got.text.strip().splitlines()[-1])
    image = str(last.get("image"))
    assert image.startswith(f"{swarm.registry}/faas/{name}:"), got.text
    spec = {"image": image, "constraints": ["node.labels.faas.test.node==n3"]}
    assert platform.api("PUT", f"/functions/{name}", json=spec).status_code == 200
    try:
        assert task_nodes(platform, name) == [node(swarm, 2)]  # pulled there
        assert platform.invoke(name).status_code == 200
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_functions_survive_a_gateway_restart(platform: SwarmStack, echo: str) -> None:
    name = fn_name("kept")
    got = platform.api(
        "PUT", f"/functions/{name}", json={"image": echo, "env": {"K": "v"}, "min_scale": 1}
    )
    assert got.status_code == 200, got.text
    try:
        before = shown(platform, name)
        platform.restart()
        wait_for(
            lambda: _ok(platform, f"/functions/{name}"), 60, "the gateway back after a restart"
        )
        after = shown(platform, name)
        assert after["env"] == before["env"] == {"K": "v"}
        assert after["container"] == before["container"]  # the same service, untouched
        wait_for(lambda: platform.invoke(name).status_code == 200, 30, "its route")
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_functions_survive_a_restart_of_the_managers_dockerd(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    name = fn_name("managed")
    spec = {"image": echo, "env": {"K": "v"}, "min_scale": 1,
            "constraints": ["node.labels.faas.test.node==n2"]}  # fmt: skip
    assert platform.api("PUT", f"/functions/{name}", json=spec).status_code == 200
    try:
        before = shown(platform, name)
        swarm.restart_daemon(swarm.manager)  # the platform's container stops with it
        platform.manager.docker("start", platform.container)
        wait_for(lambda: _ok(platform, f"/functions/{name}"), 90, "the gateway back")
        after = shown(platform, name)
        assert (after["env"], after["constraints"]) == (before["env"], before["constraints"])
        assert after["container"] == before["container"]
        wait_for(lambda: _answers(platform, name), 60, "the function through Traefik again")
    finally:
        platform.api("DELETE", f"/functions/{name}")


def _metric(platform: SwarmStack, sample: str) -> float:
    """The value of one sample (name and labels) of the gateway's metrics; 0 if absent."""
    for line in platform.api("GET", "/metrics").text.splitlines():
        if line.startswith(f"{sample} "):
            return float(line.split()[-1])
    return 0.0


def _answers(platform: SwarmStack, name: str) -> bool:
    try:
        return platform.invoke(name).status_code == 200
    except requests.RequestException:
        return False


def _ok(platform: SwarmStack, path: str) -> bool:
    try:
        return platform.api("GET", path).status_code == 200
    except requests.RequestException:
        return False


def test_a_worker_lost_under_load(platform: SwarmStack, swarm: Cluster, echo: str) -> None:
    """A worker goes away (off the network, everything it ran killed) while 3
    replicas serve a constant load: the gateway fences its replica off long before
    the manager notices (Docker's default 5 s heartbeat); only the requests that
    were on their way to it fail; Swarm then moves the task to a live node."""
    name = fn_name("failover")
    got = platform.api("PUT", f"/functions/{name}", json={"image": echo, "min_scale": 3})
    assert got.status_code == 200, got.text
    engine = docker.DockerClient(base_url=platform.manager.socket)
    # A worker running one replica (or more, after the manager restart test).
    placed = Counter(task_nodes(platform, name))
    victim = min((n for n in swarm.nodes[1:] if placed[n.netns]), key=lambda n: placed[n.netns])
    victim_id = victim.docker("info", "-f", "{{.Swarm.NodeID}}")
    lost = {t["ServiceID"] for t in running_tasks(platform, name) if t["NodeID"] == victim_id}
    assert lost, placed
    # The gateway watches a node once it has answered there (its stats agent).
    wait_for(lambda: _metric(platform, 'faas_nodes{state="up"}') == 3, 60, "every node up")
    losses = _metric(platform, "faas_node_losses_total")
    api: Any = engine.api
    before = {t["ID"] for t in api.tasks() if t["ServiceID"] in lost}
    with Load(platform, name, clients=4) as load:
        wait_for(lambda: load.served > 50, 20, "load to flow")
        served_before = load.served
        killed = time.monotonic()
        swarm.stop_daemon(victim)
        wait_for(lambda: _metric(platform, "faas_node_losses_total") > losses, 10, "the fence")
        fenced = time.monotonic() - killed
        # Swarm gives each lost task's service a new task on a live node, once the
        # manager has missed the node's heartbeats (the autoscaler may then trim
        # the extra replica it started meanwhile: min_scale 3).
        moved: set[str] = set()

        def rescheduled() -> bool:
            for task in api.tasks():
                if (
                    task["ServiceID"] in lost
                    and task["ID"] not in before
                    and task.get("NodeID") not in ("", None, victim_id)
                ):
                    moved.add(task["ServiceID"])
            return moved == lost

        wait_for(rescheduled, 60, "Swarm to move the lost tasks")
        swarm_moved = time.monotonic() - killed
        wait_for(
            lambda: len(nodes := task_nodes(platform, name)) == 3 and victim.netns not in nodes,
            90,
            "three replicas again, none on the lost node",
        )
        recovered = time.monotonic() - killed
        served = load.served
        wait_for(lambda: load.served > served + 50, 20, "load after the recovery")
    # Until the fence, a request sent to the lost replica waits for a dial timeout
    # (250 ms) and goes to another; after it, none does.
    slow = [(at - killed, took) for at, took in load.times if at > killed and took > 0.25]
    late = [(at, took) for at, took in slow if fenced + 0.5 < at < swarm_moved]
    print(
        f"\nnode lost: fenced after {fenced:.1f} s; {len(load.failures)} failed of "
        f"{load.served - served_before} requests; {len(slow)} waited for a dial timeout, "
        f"the last sent {max((at for at, _ in slow), default=0.0):.1f} s after the loss; "
        f"Swarm moved the lost tasks after {swarm_moved:.1f} s; "
        f"3 replicas again after {recovered:.1f} s; "
        f"failures: {[f for _, f in load.failures[:4]]}"
    )
    # Only requests on their way to the lost node when it went fail (they wait
    # for their answer until FAAS_REQUEST_TIMEOUT): at most one per client.
    assert len(load.failures) <= 4, load.failures
    assert all(at - killed < fenced for at, _ in load.failures), (fenced, load.failures)
    assert fenced < 5, "the gateway noticed the loss no sooner than the manager would"
    assert len(late) <= 2, late
    assert shown(platform, name)["ready_replicas"] == 3
    assert engine.api.inspect_node(victim_id)["Status"]["State"] == "down"
    # The fence's drain is gone: the function is back on the warm path.
    drains = f"{platform.env['FAAS_STATE_DIR']}/traefik/dynamic/drains.yml"
    shell = f"test -e {drains} && cat {drains} || echo none"
    wait_for(
        lambda: name not in platform.manager.docker("exec", platform.container, "sh", "-c", shell),
        30,
        "the drain lifted",
    )
    platform.api("DELETE", f"/functions/{name}")
