"""The Swarm stats agent (faas/agent.py): its HTTP answers, the gateway's client of
it (finding a node's agent, failures read as zeros), its token, and what the
agents' service runs, taken from the gateway's own container."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from loguru import logger

from faas import agent
from faas.config import Settings
from faas.docker_provider import sent_of, usage_of
from faas.errors import ProviderError
from faas.provider import Usage
from faas.swarm_provider import agent_service
from tests.unit.test_metrics import Client

CONTAINER = "ab" * 32
USAGE = Usage(12 << 20, 256 << 20, 1.5, 0, False)
SECRET = "s3cret"


class Reader:
    def __init__(self, found: agent.Sample | Exception | None) -> None:
        self.found = found
        self.asked: list[str] = []

    def sample(self, container_id: str) -> agent.Sample | None:
        self.asked.append(container_id)
        if isinstance(self.found, Exception):
            raise self.found
        return self.found


def get(reader: Reader, path: str, token: str | None = SECRET) -> httpx.Response:
    client = Client(httpx.ASGITransport(app=agent.app(reader, SECRET)))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, headers=headers)


def test_the_agent_answers_a_containers_usage_and_sent_bytes() -> None:
    reader = Reader((USAGE, 4096))
    got = get(reader, f"/containers/{CONTAINER}")
    assert got.status_code == 200, got.text
    assert got.json() == {
        "usage": {"memory_bytes": 12 << 20, "memory_limit_bytes": 256 << 20,
                  "cpu_seconds": 1.5, "restarts": 0, "oom_killed": False},
        "sent_bytes": 4096,
    }  # fmt: skip
    assert reader.asked == [CONTAINER]


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_without_the_token_the_agent_reads_nothing(token: str | None) -> None:
    reader = Reader((USAGE, 1))
    got = get(reader, f"/containers/{CONTAINER}", token)
    assert got.status_code == 401
    assert "token" in got.json()["error"]
    assert reader.asked == []


@pytest.mark.parametrize("bad", ["abc", "AB" * 32, "ab" * 33, "..%2F..%2Fimages"])
def test_only_full_container_ids_reach_the_engine(bad: str) -> None:
    reader = Reader((USAGE, 1))
    got = get(reader, f"/containers/{bad}")
    assert got.status_code in (400, 404)
    assert reader.asked == []


def test_a_container_not_of_the_namespace_here_is_404_and_an_engine_failure_502() -> None:
    assert get(Reader(None), f"/containers/{CONTAINER}").status_code == 404
    got = get(Reader(ProviderError("Docker engine unreachable")), f"/containers/{CONTAINER}")
    assert got.status_code == 502
    assert "unreachable" in got.json()["error"]
    assert get(Reader(None), f"/containers/{CONTAINER}", token=SECRET).status_code == 404
    client = Client(httpx.ASGITransport(app=agent.app(Reader(None), SECRET)))
    assert client.request("POST", f"/containers/{CONTAINER}").status_code == 405


def test_the_agents_token_is_derived_from_the_admin_token_and_reveals_nothing() -> None:
    one = agent.token("admin-token-0123456789")
    assert one == agent.token("admin-token-0123456789")  # no state to keep
    assert one != agent.token("admin-token-9876543210")  # rotates with it
    assert "admin-token" not in one
    assert len(one) == 64


@pytest.fixture
def log() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO")
    yield lines
    logger.remove(sink)


def agents(handler: httpx.MockTransport, found: dict[str, str] | None = None) -> agent.Agents:
    return agent.Agents(lambda: found or {"node2": "10.0.0.2:8099"}, "tok", transport=handler)


def test_the_gateway_asks_the_agent_of_the_tasks_node_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"usage": {"memory_bytes": 7, "memory_limit_bytes": 9, "cpu_seconds": 0.5,
                          "restarts": 0, "oom_killed": True}, "sent_bytes": 33}  # fmt: skip
        return httpx.Response(200, json=body)

    got = agents(httpx.MockTransport(answer)).sample("node2", CONTAINER)
    assert got == (Usage(7, 9, 0.5, 0, True), 33)
    (request,) = seen
    assert str(request.url) == f"http://10.0.0.2:8099/containers/{CONTAINER}"
    assert request.headers["authorization"] == "Bearer tok"


def test_a_container_the_agent_does_not_run_is_no_sample() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"error": "no"}))
    assert agents(transport).sample("node2", CONTAINER) is None


def test_an_agent_away_reads_as_zeros_logged_once_until_it_answers(
    log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("faas.agent.time.monotonic", lambda: now[0])
    up, dials = False, [0]

    def answer(request: httpx.Request) -> httpx.Response:
        dials[0] += 1
        if not up:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"usage": vars(USAGE), "sent_bytes": 5})

    a = agents(httpx.MockTransport(answer))
    assert a.sample("node2", CONTAINER) == agent.UNKNOWN
    assert a.sample("node2", CONTAINER) == agent.UNKNOWN
    assert dials == [1]  # a failed node is not dialed again for a while
    assert a.sample("node3", CONTAINER) == agent.UNKNOWN  # no agent listed there
    warnings = [line for line in log if "no stats from node" in line]
    assert len(warnings) == 2, log
    assert "connection refused" in warnings[0]
    assert "no stats agent runs there" in warnings[1]
    up = True
    assert a.sample("node2", CONTAINER) == agent.UNKNOWN  # still within the back-off
    now[0] += agent.AGENTS_TTL
    assert a.sample("node2", CONTAINER) == (USAGE, 5)
    assert any("stats from node node2 again" in line for line in log)
    # Away again: zeros, but the bytes it last sent, so that no traffic is seen.
    up = False
    now[0] += agent.AGENTS_TTL
    assert a.sample("node2", CONTAINER) == (agent.UNKNOWN[0], 5)


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(401, json={"error": "missing or wrong token"}), httpx.Response(200, text="{")],
)
def test_a_wrong_answer_reads_as_zeros(answer: httpx.Response) -> None:
    assert agents(httpx.MockTransport(lambda r: answer)).sample("n", CONTAINER) == agent.UNKNOWN


def test_the_agents_list_is_read_again_only_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("faas.agent.time.monotonic", lambda: now[0])
    reads: list[int] = []

    def find() -> dict[str, str]:
        reads.append(1)
        return {"node2": "10.0.0.2:8099"}

    a = agent.Agents(find, "tok", transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    a.sample("node2", CONTAINER)
    a.sample("node2", CONTAINER)
    assert len(reads) == 1
    now[0] += agent.AGENTS_TTL
    a.sample("node2", CONTAINER)
    assert len(reads) == 2


def test_the_engines_stats_become_usage_and_sent_bytes() -> None:
    stats = {
        "memory_stats": {"usage": 5 << 20, "limit": 256 << 20},
        "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
        "networks": {"eth0": {"tx_bytes": 100}, "eth1": {"tx_bytes": 20}},
    }
    state = {"RestartCount": 2, "State": {"OOMKilled": True}}
    assert usage_of(stats, state) == Usage(5 << 20, 256 << 20, 2.5, 2, True)
    assert sent_of(stats) == 120
    assert sent_of({"networks": {}}) is None  # not running: an empty sample


def test_the_agents_run_the_gateways_image_interpreter_and_read_only_mounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/src/faas")
    me = {
        "Mounts": [
            {"Type": "bind", "Source": "/src/faas", "Destination": "/src/faas", "RW": False},
            {"Type": "bind", "Source": "/run/n1/docker.sock",
             "Destination": "/var/run/docker.sock", "RW": True},
            {"Type": "bind", "Source": "/etc/secret-stuff", "Destination": "/data", "RW": True},
            {"Type": "volume", "Source": "", "Destination": "/state", "RW": False},
        ]
    }  # fmt: skip
    settings = Settings(namespace="ns1", swarm_docker_socket="/run/{{.Node.Hostname}}/d.sock")
    wanted = agent_service(me, settings, "reg:5000/faas/swarm@sha256:00")
    assert wanted["image"] == "reg:5000/faas/swarm@sha256:00"
    assert wanted["command"][1:] == ["-m", "faas.agent"]
    assert wanted["binds"] == [("/src/faas", "/src/faas")]  # read-only binds only
    assert wanted["socket"] == "/run/{{.Node.Hostname}}/d.sock"
    assert wanted["env"]["FAAS_NAMESPACE"] == "ns1"
    assert wanted["env"]["PYTHONPATH"] == "/src/faas"
    # Nothing secret in its environment: the token comes as a Docker secret file.
    assert not any("TOKEN" in key for key in wanted["env"])
