"""The OpenFaaS gateway API on the real stack, used exactly as faas-cli uses it:
Basic auth, PUT-then-POST deploy, DELETE with a JSON body, NDJSON logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import docker
import pytest
import requests

from tests.integration.conftest import ECHO_IMAGE, Stack, fn_name, wait_for


@pytest.fixture
def cli(stack: Stack) -> requests.Session:
    """What `faas-cli login -u admin --password <token>` gives every /system call."""
    session = requests.Session()
    session.auth = ("admin", stack.token)
    return session


def system(
    session: requests.Session, stack: Stack, method: str, path: str, **kw: object
) -> requests.Response:
    return session.request(method, f"{stack.url}/system{path}", timeout=60, **kw)  # type: ignore[arg-type]


def deploy(session: requests.Session, stack: Stack, body: dict[str, object]) -> requests.Response:
    """faas-cli deploy: PUT, and POST when the PUT says 404."""
    got = system(session, stack, "PUT", "/functions", json=body)
    if got.status_code == 404:
        got = system(session, stack, "POST", "/functions", json=body)
    return got


@pytest.fixture
def function(cli: requests.Session, stack: Stack) -> Iterator[str]:
    name = fn_name("of")
    body: dict[str, object] = {
        "service": name,
        "image": ECHO_IMAGE,
        "envVars": {"ECHO_GREETING": "hi"},
        "labels": {"team": "a", "com.openfaas.scale.max": "3"},
        "annotations": {"topic": "orders"},
        "limits": {"memory": "128Mi"},
    }
    got = deploy(cli, stack, body)
    assert got.status_code == 202, got.text  # a new function: POST
    try:
        yield name
    finally:
        system(cli, stack, "DELETE", "/functions", json={"functionName": name})


def status(cli: requests.Session, stack: Stack, name: str) -> dict[str, object]:
    got = system(cli, stack, "GET", f"/function/{name}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert isinstance(body, dict)
    return body


def test_health_info_and_namespaces(cli: requests.Session, stack: Stack) -> None:
    assert requests.get(f"{stack.url}/healthz", timeout=10).status_code == 200  # no auth
    info = system(cli, stack, "GET", "/info").json()
    assert info["provider"]["provider"] == "faas"
    assert info["provider"]["orchestration"] == "docker"
    assert info["version"]["sha"]
    assert info["version"]["release"]
    assert info["arch"]
    assert system(cli, stack, "GET", "/namespaces").json() == [stack.namespace]


def test_wrong_credentials_are_refused_with_a_basic_challenge(stack: Stack) -> None:
    for auth in (None, ("admin", "wrong-token-wrong-token"), ("root", stack.token)):
        got = requests.get(f"{stack.url}/system/functions", auth=auth, timeout=10)
        assert got.status_code == 401, got.text
        assert got.headers["WWW-Authenticate"] == 'Basic realm="faas"'
        assert "error" in got.json()
    name = fn_name("of")
    got = requests.post(
        f"{stack.url}/system/functions",
        json={"service": name, "image": ECHO_IMAGE},
        auth=("admin", "nope-nope-nope-nope"),
        timeout=10,
    )
    assert got.status_code == 401
    assert stack.api("GET", f"/functions/{name}").status_code == 404  # nothing created
    bearer = {"Authorization": f"Bearer {stack.token}"}
    assert requests.get(f"{stack.url}/system/functions", headers=bearer, timeout=10).ok


def test_deploy_invoke_describe_scale_logs_remove(
    cli: requests.Session, stack: Stack, function: str
) -> None:
    name = function
    # Invoke with each verb and a query string; env and the path reach the function.
    for method in ("GET", "POST", "PUT", "DELETE"):
        got = requests.request(
            method, f"{stack.url}/function/{name}/x?a=1&b=2", data=b"body", timeout=30
        )
        assert got.status_code == 200, got.text
        echoed = got.json()
        assert echoed["method"] == method
        assert echoed["path"] == "/x"
        assert echoed["query"] == {"a": ["1"], "b": ["2"]}
        assert echoed["env"]["ECHO_GREETING"] == "hi"
    # A redirect passes through unchanged (not followed, not rewritten).
    got = requests.get(
        f"{stack.url}/function/{name}",
        headers={"X-Echo-Status": "302"},
        allow_redirects=False,
        timeout=30,
    )
    assert got.status_code == 302
    # The namespaced form reaches the same function, through its own router.
    for ns in (stack.namespace, "openfaas-fn"):
        got = requests.post(f"{stack.url}/function/{name}.{ns}/y?q=1", data=b"z", timeout=30)
        assert got.status_code == 200, got.text
        assert (got.json()["path"], got.json()["query"], got.json()["body"]) == (
            "/y",
            {"q": ["1"]},
            "z",
        )
    assert requests.get(f"{stack.url}/function/{name}.elsewhere", timeout=30).status_code == 404

    # Describe and list: metadata as deployed, replicas, invocations.
    def counted() -> bool:
        return float(status(cli, stack, name)["invocationCount"]) >= 7  # type: ignore[arg-type]

    wait_for(counted, 10, "Traefik's counter to show the invocations")
    described = status(cli, stack, name)
    assert described["namespace"] == stack.namespace
    assert described["image"] == ECHO_IMAGE
    assert described["envVars"] == {"ECHO_GREETING": "hi"}
    assert described["labels"] == {"team": "a", "com.openfaas.scale.max": "3"}
    assert described["annotations"] == {"topic": "orders"}
    assert described["limits"] == {"memory": "128Mi", "cpu": described["limits"]["cpu"]}  # type: ignore[index]
    assert (described["replicas"], described["availableReplicas"]) == (1, 1)
    listed = system(cli, stack, "GET", "/functions").json()
    assert [f["name"] for f in listed if f["name"] == name] == [name]

    # Scale: beyond the label's max is refused; 2 runs two; 0 stops; an invoke wakes it.
    scale = f"/scale-function/{name}"
    got = system(cli, stack, "POST", scale, json={"serviceName": name, "replicas": 4})
    assert got.status_code == 400
    assert "replicas" in got.json()["error"]
    got = system(cli, stack, "POST", scale, json={"serviceName": name, "replicas": 2})
    assert got.status_code == 202, got.text
    assert status(cli, stack, name)["availableReplicas"] == 2
    got = system(cli, stack, "POST", scale, json={"serviceName": name, "replicas": 0})
    assert got.status_code == 202, got.text
    assert (
        status(cli, stack, name)["replicas"],
        status(cli, stack, name)["availableReplicas"],
    ) == (0, 0)
    got = requests.get(f"{stack.url}/function/{name}?woke=1", timeout=30)
    assert got.status_code == 200
    assert got.json()["query"] == {"woke": ["1"]}
    assert status(cli, stack, name)["availableReplicas"] == 1

    # Logs: NDJSON messages, since and tail honoured.
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    got = system(
        cli,
        stack,
        "GET",
        "/logs",
        params={"name": name, "since": since, "tail": "3", "follow": "false"},
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-ndjson"
    messages = [json.loads(line) for line in got.text.splitlines()]
    assert 1 <= len(messages) <= 3
    for message in messages:
        assert set(message) == {"name", "namespace", "instance", "timestamp", "text"}
        assert (message["name"], message["namespace"]) == (name, stack.namespace)
        datetime.fromisoformat(message["timestamp"][:26] + "+00:00")  # RFC 3339
    # follow: the stream stays open and brings new lines.
    with system(
        cli,
        stack,
        "GET",
        "/logs",
        params={"name": name, "follow": "true", "tail": "1"},
        stream=True,
    ) as live:
        assert live.status_code == 200
        requests.get(f"{stack.url}/function/{name}/followed", timeout=30)
        seen = ""
        for line in live.iter_lines():
            seen += json.loads(line)["text"]
            if "/followed" in seen:
                break
        assert "/followed" in seen

    # Update through PUT (200): new env, still the same function.
    got = deploy(
        cli, stack, {"service": name, "image": ECHO_IMAGE, "envVars": {"ECHO_GREETING": "bye"}}
    )
    assert got.status_code == 200, got.text
    assert (
        requests.get(f"{stack.url}/function/{name}", timeout=30).json()["env"]["ECHO_GREETING"]
        == "bye"
    )

    # Remove: DELETE with a JSON body; a second one is 404.
    got = system(cli, stack, "DELETE", "/functions", json={"functionName": name})
    assert got.status_code == 200, got.text
    got = system(cli, stack, "DELETE", "/functions", json={"functionName": name})
    assert got.status_code == 404
    assert system(cli, stack, "GET", f"/function/{name}").status_code == 404


NEW = {"service": "of-x", "image": ECHO_IMAGE}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "mentions"),
    [
        ("POST", "/functions", "{not json", 400, "JSON"),
        ("POST", "/functions", {"service": "Bad_Name", "image": ECHO_IMAGE}, 400, "service"),
        ("POST", "/functions", {**NEW, "secrets": ["db"]}, 400, "secrets"),
        ("POST", "/functions", {**NEW, "constraints": ["a"]}, 400, "constraints"),
        # Valid, but placement needs a Swarm (FAAS_PROVIDER=swarm).
        ("POST", "/functions", {**NEW, "constraints": ["node.role==manager"]}, 400, "Swarm"),
        ("POST", "/functions", {**NEW, "requests": {"cpu": "1"}}, 400, "requests"),
        ("POST", "/functions", {**NEW, "limits": {"memory": "lots"}}, 400, "limits.memory"),
        ("POST", "/functions", {**NEW, "namespace": "kube-system"}, 400, "namespace"),
        ("PUT", "/functions", {"service": "of-missing", "image": ECHO_IMAGE}, 404, "of-missing"),
        ("DELETE", "/functions", {"functionName": "of-missing"}, 404, "of-missing"),
        ("DELETE", "/functions", {"name": "of-missing"}, 400, "functionName"),
        ("GET", "/function/of-missing", None, 404, "of-missing"),
        ("GET", "/function/Bad_Name", None, 400, "name"),
        ("POST", "/scale-function/of-missing", {"replicas": 1}, 404, "of-missing"),
        ("POST", "/scale-function/of-missing", {"replicas": -1}, 400, "replicas"),
        ("GET", "/logs?name=of-missing", None, 404, "of-missing"),
        ("GET", "/logs?name=x&since=yesterday", None, 400, "since"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    cli: requests.Session,
    stack: Stack,
    engine: docker.DockerClient,
    method: str,
    path: str,
    body: object,
    status: int,
    mentions: str,
) -> None:
    before = [c.id for c in stack.containers(engine)]
    kw: dict[str, object] = {"data": body} if isinstance(body, str) else {"json": body}
    got = system(cli, stack, method, path, **kw)
    assert got.status_code == status, got.text
    assert mentions in got.json()["error"]
    assert [c.id for c in stack.containers(engine)] == before


def test_invoking_an_unknown_function_is_404(stack: Stack) -> None:
    assert requests.get(f"{stack.url}/function/of-nobody", timeout=30).status_code == 404
    assert (
        requests.get(f"{stack.url}/function/of-nobody.{stack.namespace}", timeout=30).status_code
        == 404
    )
