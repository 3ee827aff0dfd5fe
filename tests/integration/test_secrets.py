"""Secrets on the real stack: created and updated through the OpenFaaS API as
faas-cli sends them (Basic auth), through /api/v1 and the CLI; read by a
function as a file at /var/openfaas/secrets/<name>; and never leaked.

The stack here is this module's own, its stderr (the gateway's and Traefik's
logs) in a file, so that the leak test can read every line it wrote.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from typer.testing import CliRunner

from faas.cli import app
from tests.integration.conftest import (
    ECHO_IMAGE,
    Stack,
    fn_name,
    image_from,
    running_stack,
    wait_for,
)

# The echo image serving its secrets folder: GET /<name> answers the file,
# GET / lists the folder.
SERVE_SECRETS = f"""FROM {ECHO_IMAGE}
CMD ["python3", "-m", "http.server", "8080", "--directory", "/var/openfaas/secrets"]
"""


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets-log") / "stack.log"


@pytest.fixture(scope="module")
def stack(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory, log: Path
) -> Iterator[Stack]:
    with running_stack(engine, tmp_path_factory.mktemp("state"), log=log) as s:
        yield s


@pytest.fixture(scope="module")
def reader(engine: docker.DockerClient) -> Iterator[str]:
    with image_from(engine, "secrets", SERVE_SECRETS) as tag:
        yield tag


@pytest.fixture
def faas_cli(stack: Stack) -> requests.Session:
    """What `faas-cli login -u admin --password <token>` gives every /system call."""
    session = requests.Session()
    session.auth = ("admin", stack.token)
    return session


def system(
    session: requests.Session, stack: Stack, method: str, path: str, **kw: object
) -> requests.Response:
    return session.request(method, f"{stack.url}/system{path}", timeout=60, **kw)  # type: ignore[arg-type]


def secret_name(prefix: str = "s") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def listed(session: requests.Session, stack: Stack) -> list[str]:
    got = system(session, stack, "GET", "/secrets")
    assert got.status_code == 200, got.text
    return sorted(s["name"] for s in got.json())


def test_secret_crud_and_a_function_reading_it_as_faas_cli_does(
    faas_cli: requests.Session, stack: Stack, reader: str
) -> None:
    db, other, fn = secret_name("db"), secret_name("other"), fn_name("sec")
    # faas-cli secret create (value from --from-literal, rawValue from --from-file).
    got = system(faas_cli, stack, "POST", "/secrets", json={"name": db, "value": "first"})
    assert got.status_code == 201, got.text
    raw = base64.b64encode(b"\x00binary\xff").decode()
    got = system(faas_cli, stack, "POST", "/secrets", json={"name": other, "rawValue": raw})
    assert got.status_code == 201, got.text
    got = system(faas_cli, stack, "POST", "/secrets", json={"name": db, "value": "again"})
    assert got.status_code == 409
    assert db in got.json()["error"]
    found = system(faas_cli, stack, "GET", "/secrets", params={"namespace": "openfaas-fn"}).json()
    assert {"name": db, "namespace": stack.namespace} in found
    try:
        # faas-cli deploy: PUT says 404, then POST; env, labels and a secret.
        body = {
            "service": fn,
            "image": reader,
            "envVars": {"MODE": "test"},
            "labels": {"team": "a"},
            "secrets": [db],
        }
        assert system(faas_cli, stack, "PUT", "/functions", json=body).status_code == 404
        got = system(faas_cli, stack, "POST", "/functions", json=body)
        assert got.status_code == 202, got.text
        assert got.json()["secrets"] == [db]
        read = requests.get(f"{stack.url}/function/{fn}/{db}", timeout=30)
        assert (read.status_code, read.text) == (200, "first")
        # Its folder holds its own secrets only.
        folder = requests.get(f"{stack.url}/function/{fn}/", timeout=30).text
        assert db in folder
        assert other not in folder
        status = system(faas_cli, stack, "GET", f"/function/{fn}").json()
        assert (status["secrets"], status["envVars"], status["labels"]) == (
            [db],
            {"MODE": "test"},
            {"team": "a"},
        )

        # faas-cli secret update: the running function reads the new value.
        got = system(faas_cli, stack, "PUT", "/secrets", json={"name": db, "value": "second"})
        assert got.status_code == 200, got.text
        wait_for(
            lambda: requests.get(f"{stack.url}/function/{fn}/{db}", timeout=30).text == "second",
            10,
            "the new value in the function",
        )
        # In place: the same container, not a restart.
        assert (
            status["createdAt"]
            == system(faas_cli, stack, "GET", f"/function/{fn}").json()["createdAt"]
        )

        # faas-cli secret remove while in use: 409 naming the function, nothing removed.
        got = system(faas_cli, stack, "DELETE", "/secrets", json={"name": db})
        assert got.status_code == 409
        assert fn in got.json()["error"]
        assert db in listed(faas_cli, stack)
    finally:
        system(faas_cli, stack, "DELETE", "/functions", json={"functionName": fn})
    assert not (stack.state_dir / "secret-mounts" / fn).exists()
    for name in (db, other):
        got = system(faas_cli, stack, "DELETE", "/secrets", json={"name": name})
        assert got.status_code == 200, got.text
    got = system(faas_cli, stack, "DELETE", "/secrets", json={"name": db})
    assert got.status_code == 404
    assert db not in listed(faas_cli, stack)
    got = system(faas_cli, stack, "PUT", "/secrets", json={"name": db, "value": "x"})
    assert got.status_code == 404


BIG = base64.b64encode(b"x" * (1 << 20)).decode()  # a 1 MiB value: the body is over 1 MiB
OVER = "y" * (512 * 1024 + 1)  # under the body limit, over the value limit


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "mentions"),
    [
        ("POST", "/secrets", {"name": "a/b", "value": "v"}, 400, "'a/b'"),
        ("POST", "/secrets", {"name": "..", "value": "v"}, 400, "'..'"),
        ("POST", "/secrets", {"name": "../etc", "value": "v"}, 400, "not a valid secret name"),
        ("POST", "/secrets", {"name": "x" * 64, "value": "v"}, 400, "not a valid secret name"),
        ("POST", "/secrets", {"name": "sb-big", "rawValue": BIG}, 413, "limit"),
        ("POST", "/secrets", {"name": "sb-over", "value": OVER}, 413, "at most 524288 bytes"),
        ("POST", "/secrets", {"name": "sb-raw", "rawValue": "not base64!"}, 400, "rawValue"),
        ("POST", "/secrets", {"name": "sb-none"}, 400, "value"),
        ("POST", "/secrets", {"name": "sb-x", "value": "v", "extra": 1}, 400, "extra"),
        ("POST", "/secrets", {"name": "sb-ns", "value": "v", "namespace": "kube"}, 400, "kube"),
        ("POST", "/secrets", '{"name": "sb-json", "value": ', 400, "JSON"),
        ("PUT", "/secrets", {"name": "sb-missing", "value": "v"}, 404, "sb-missing"),
        ("DELETE", "/secrets", {"name": "sb-missing"}, 404, "sb-missing"),
        ("DELETE", "/secrets", {"name": "../x"}, 400, "'../x'"),
        ("POST", "/functions", {"service": "sb-fn", "image": ECHO_IMAGE, "secrets": ["nosuch"]},
         400, "'nosuch'"),
        ("POST", "/functions", {"service": "sb-fn", "image": ECHO_IMAGE, "secrets": ["a/b"]},
         400, "secrets"),
    ],
)  # fmt: skip
def test_bad_secret_input_is_a_clear_4xx_and_changes_nothing(
    faas_cli: requests.Session,
    stack: Stack,
    engine: docker.DockerClient,
    method: str,
    path: str,
    body: object,
    status: int,
    mentions: str,
) -> None:
    before = ([c.id for c in stack.containers(engine)], listed(faas_cli, stack))
    kw: dict[str, object] = {"data": body} if isinstance(body, str) else {"json": body}
    got = system(faas_cli, stack, method, path, **kw)
    assert got.status_code == status, got.text
    assert mentions in got.json()["error"]
    assert ([c.id for c in stack.containers(engine)], listed(faas_cli, stack)) == before
    assert not list((stack.state_dir / "secrets").glob(".tmp-*"))  # no temp file left


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "mentions"),
    [
        ("POST", "/secrets", {"name": "a/b", "value": "v"}, 422, "'a/b'"),
        ("POST", "/secrets", {"name": "sb-big", "raw_value": BIG}, 413, "limit"),
        ("POST", "/secrets", {"name": "sb-x", "value": 1}, 422, "value"),
        ("POST", "/secrets", "[1", 422, "JSON"),
        ("GET", "/secrets/sb-missing", None, 404, "sb-missing"),
        ("PUT", "/secrets/sb-missing", {"value": "v"}, 404, "sb-missing"),
        ("DELETE", "/secrets/sb-missing", None, 404, "sb-missing"),
        ("PUT", "/functions/sb-fn", {"image": ECHO_IMAGE, "secrets": ["nosuch"]}, 422, "nosuch"),
    ],
)  # fmt: skip
def test_bad_secret_input_on_api_v1(
    stack: Stack,
    engine: docker.DockerClient,
    method: str,
    path: str,
    body: object,
    status: int,
    mentions: str,
) -> None:
    before = [c.id for c in stack.containers(engine)], stack.api("GET", "/secrets").json()
    kw: dict[str, object] = {"data": body} if isinstance(body, str) else {"json": body}
    got = stack.api(method, path, **kw)
    assert got.status_code == status, got.text
    assert mentions in got.json()["error"]
    assert ([c.id for c in stack.containers(engine)], stack.api("GET", "/secrets").json()) == before


def test_a_secret_value_appears_nowhere_but_in_the_function(
    faas_cli: requests.Session,
    stack: Stack,
    engine: docker.DockerClient,
    reader: str,
    log: Path,
) -> None:
    first, second = f"leak-{secrets.token_hex(16)}", f"leak-{secrets.token_hex(16)}"
    name, fn = secret_name("leak"), fn_name("leak")
    answers: list[str] = []

    def seen(got: requests.Response) -> requests.Response:
        answers.append(f"{got.status_code} {got.headers} {got.text}")
        return got

    assert seen(stack.api("POST", "/secrets", json={"name": name, "value": first})).ok
    try:
        spec = {"image": reader, "env": {"MODE": "x"}, "labels": {"team": "a"}, "secrets": [name]}
        assert seen(stack.api("PUT", f"/functions/{fn}", json=spec)).ok
        assert requests.get(f"{stack.url}/function/{fn}/{name}", timeout=30).text == first
        raw = base64.b64encode(second.encode()).decode()
        got = seen(system(faas_cli, stack, "PUT", "/secrets", json={"name": name, "rawValue": raw}))
        assert got.ok
        assert requests.get(f"{stack.url}/function/{fn}/{name}", timeout=30).text == second
        # Errors that concern the secret and the function.
        seen(stack.api("POST", "/secrets", json={"name": name, "value": first}))
        seen(system(faas_cli, stack, "POST", "/secrets", json={"name": name, "value": second}))
        seen(stack.api("DELETE", f"/secrets/{name}"))
        seen(system(faas_cli, stack, "DELETE", "/secrets", json={"name": name}))
        seen(stack.api("PUT", f"/secrets/{name}", json={"name": "other", "value": first}))
        # Every listing and description.
        for path in ("/functions", f"/functions/{fn}", "/secrets", f"/secrets/{name}", "/stats"):
            assert seen(stack.api("GET", path)).ok
        assert seen(stack.api("GET", f"/functions/{fn}/logs")).ok
        for path in ("/functions", f"/function/{fn}", "/secrets", f"/logs?name={fn}"):
            assert seen(system(faas_cli, stack, "GET", path)).ok
        inspected = [json.dumps(c.attrs) for c in stack.containers(engine, fn)]
        assert inspected
        assert all("/var/openfaas/secrets" in i for i in inspected)  # the mount, by path
        logged = log.read_text(errors="replace")
        assert f"secret {name}" in logged  # the log is the right one: it names the secret
        for value in (first, second):
            for where, text in (
                ("an API answer", "\n".join(answers)),
                ("docker inspect", "\n".join(inspected)),
                ("the stack's log", logged),
            ):
                assert value not in text, f"the value leaked into {where}"
                assert base64.b64encode(value.encode()).decode() not in text, where
    finally:
        stack.api("DELETE", f"/functions/{fn}")
        stack.api("DELETE", f"/secrets/{name}")


def run(stack: Stack, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["--url", stack.url, "--token", stack.token, *args], input=stdin
    )
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_manages_secrets_and_deploys_with_them(
    stack: Stack, reader: str, tmp_path: Path
) -> None:
    name, fn = secret_name("cli"), fn_name("cli")
    code, out, _ = run(stack, "secrets", "create", name, stdin=b"from-stdin\n")
    assert (code, out.strip()) == (0, f"created secret {name}")
    code, _, err = run(stack, "secrets", "create", name, stdin=b"again")
    assert code == 1
    assert err.strip() == f"faas: error: secret {name!r} already exists (update it instead)"
    code, _, err = run(stack, "secrets", "create", "Bad/Name", stdin=b"x")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "not a valid secret name" in err
    try:
        code, out, err = run(stack, "deploy", fn, "--image", reader, "--secret", name)
        assert code == 0, err
        # stdin loses its one trailing newline (what echo and heredocs add).
        assert requests.get(f"{stack.url}/function/{fn}/{name}", timeout=30).text == "from-stdin"
        code, out, _ = run(stack, "secrets", "ls")
        assert code == 0
        assert [line.split() for line in out.splitlines() if line.startswith(name)] == [[name, fn]]
        value = tmp_path / "value"
        value.write_bytes(b"from-file\n")
        code, out, _ = run(stack, "secrets", "update", name, "--from-file", str(value))
        assert (code, out.strip()) == (0, f"updated secret {name} (used by: {fn})")
        # A file is taken as it is, newline and all.
        assert requests.get(f"{stack.url}/function/{fn}/{name}", timeout=30).text == "from-file\n"
        code, _, err = run(stack, "secrets", "rm", name)
        assert code == 1
        assert fn in err
    finally:
        stack.api("DELETE", f"/functions/{fn}")
    code, out, _ = run(stack, "secrets", "rm", name)
    assert (code, out.strip()) == (0, f"removed secret {name}")
    code, out, _ = run(stack, "secrets", "ls")
    assert name not in out
