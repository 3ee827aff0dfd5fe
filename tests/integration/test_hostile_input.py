"""Hostile input against a running stack of its own: JSON bombs and huge bodies on
the admin API (each gets a 4xx with {"error"}, the next request is served, and the
gateway's memory stays bounded), and token and key guessing (throttled per client
address, never the right credential from another address)."""

from __future__ import annotations

import secrets
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from requests.adapters import HTTPAdapter

from .conftest import Stack, running_stack

pytestmark = pytest.mark.integration

MIB = 1 << 20


@pytest.fixture(scope="module")
def stack(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The throttle at its defaults (conftest switches it off for the other modules).
    with running_stack(
        engine, tmp_path_factory.mktemp("hostile"), FAAS_AUTH_MAX_FAILURES="10"
    ) as s:
        yield s


def gateway_pid(stack: Stack) -> int:
    """The uvicorn process `faas up` started (a child of it)."""
    assert stack.process is not None
    parent = stack.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError(f"no uvicorn among the children of {parent}")


def memory_kib(pid: int, field: str) -> int:
    """A line of /proc/<pid>/status in KiB: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def send_huge(stack: Stack, path: str, total: int, *, chunked: bool) -> tuple[int, bytes, int]:
    """PUT `total` bytes, reading the answer as it comes: a server that refuses
    early is heard even though it stops reading. (status, body, bytes sent)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (
        f"PUT /api/v1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {stack.token}\r\nContent-Type: application/json\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    )
    block = b"9" * (256 << 10)
    frame = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=30) as sock:
        sock.sendall(head.encode())
        while b"\r\n\r\n" not in answer:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 30)
            assert readable or writable, "neither an answer nor room to send in 30 s"
            if readable:
                data = sock.recv(65536)
                assert data, f"closed without an answer after {sent} bytes"
                answer += data
            elif writable:
                try:
                    sock.sendall(frame)
                except (BrokenPipeError, ConnectionResetError):
                    sent = total  # refused and closed: the answer is waiting
                    continue
                sent += len(block)
                if chunked and sent >= total:
                    sock.sendall(b"0\r\n\r\n")
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            answer += chunk
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), body, sent


BOMBS = [
    # 10 MB of digits: over the body limit, refused by its Content-Length.
    (b"9" * (10 * MIB), 413),
    # Under the limit but past the parser's 4300-digit integer limit.
    (b"9" * 1_000_000, 422),
    (b'{"image": ' + b"1" * 5000 + b"}", 422),
    # Nesting far past the recursion limit, arrays and objects.
    (b"[" * 500_000 + b"]" * 500_000, 422),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 422),
    # Past the 64 levels a spec could ever need, below the recursion limit.
    (b'{"image": "x", "env": ' + b"[" * 200 + b"]" * 200 + b"}", 422),
    (b"NaN", 422),
    (b"\x80\x81", 422),
]


@pytest.mark.parametrize(("body", "status"), BOMBS, ids=[str(i) for i in range(len(BOMBS))])
def test_json_bombs_get_4xx_and_the_next_request_is_served(
    stack: Stack, body: bytes, status: int
) -> None:
    got = stack.api("PUT", "/functions/bomb", data=body)
    assert got.status_code == status, got.text[:300]
    assert got.json()["error"].startswith("request body")
    assert stack.api("GET", "/functions").status_code == 200
    assert stack.api("GET", "/functions/bomb").status_code == 404  # nothing was made


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_body_is_refused_without_buffering_it(stack: Stack, chunked: bool) -> None:
    pid = gateway_pid(stack)
    assert stack.api("GET", "/functions").status_code == 200
    reset_peak(pid)
    before = memory_kib(pid, "VmRSS")
    started = time.monotonic()
    status, body, sent = send_huge(stack, "/functions/huge", 200 * MIB, chunked=chunked)
    took = time.monotonic() - started
    peak = memory_kib(pid, "VmHWM")
    print(
        f"\n200 MB {'chunked' if chunked else 'with Content-Length'}: {status} after "
        f"{sent / MIB:.1f} MiB sent in {took:.2f}s; gateway RSS {before // 1024} MiB, "
        f"peak {peak // 1024} MiB"
    )
    assert status == 413, body[:300]
    assert b"over the" in body
    assert peak - before < 32 * 1024, f"gateway grew from {before} to {peak} KiB"
    assert stack.api("GET", "/functions").status_code == 200


# -- credential guessing -------------------------------------------------------
# The body tests above use 127.0.0.1 with the right token; each test here sends
# from addresses of its own (all of 127/8 reaches loopback listeners on Linux).


class SourceAdapter(HTTPAdapter):
    """Connections from a given local address."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **kwargs: object
    ) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(connections, maxsize, block, **kwargs)


def client_from(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAdapter(source))
    return session


def guess(
    session: requests.Session, url: str, count: int, headers: dict[str, str] | None = None
) -> tuple[Counter[int], float]:
    """`count` wrong credentials: the statuses, and the seconds it took."""
    statuses: Counter[int] = Counter()
    start = time.monotonic()
    for _ in range(count):
        wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}", **(headers or {})}
        got = session.get(url, headers=wrong, timeout=10)
        assert "error" in got.json()
        statuses[got.status_code] += 1
    return statuses, time.monotonic() - start


def test_admin_token_guessing_is_throttled_and_the_admin_still_gets_in(stack: Stack) -> None:
    guesser, admin = client_from("127.0.0.2"), client_from("127.0.0.3")
    right = {"Authorization": f"Bearer {stack.token}"}
    statuses, took = guess(guesser, f"{stack.url}/api/v1/functions", 1000)
    print(f"\n1000 wrong admin tokens through Traefik in {took:.2f}s: {dict(statuses)}")
    assert set(statuses) == {401, 429}
    assert statuses[401] <= 20  # 10, then one more after each lockout (1 s, 2 s, 4 s ...)
    got = guesser.get(f"{stack.url}/api/v1/functions", headers=right, timeout=10)
    assert got.status_code == 429  # the guesser's own right token waits its lockout out
    assert int(got.headers["Retry-After"]) >= 1
    # Another address, through Traefik and straight to the gateway: never refused.
    assert admin.get(f"{stack.url}/api/v1/functions", headers=right, timeout=10).ok
    assert admin.get(f"{stack.direct}/api/v1/functions", headers=right, timeout=10).ok


def test_a_forged_x_forwarded_for_does_not_dodge_the_throttle(stack: Stack) -> None:
    """Traefik replaces the X-Forwarded-For of its clients; the gateway trusts it
    only from Traefik's (loopback) address."""
    forged = {"X-Forwarded-For": "192.0.2.1, 127.0.0.1", "X-Real-Ip": "192.0.2.1"}
    # What Traefik's web entrypoint passes on (the same for the gateway's router),
    # seen by a function, from 127.0.0.1 itself, the address the gateway trusts.
    with stack.deployed("xff") as name:
        seen = stack.invoke(name, headers=forged).json()["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    guesser = client_from("127.0.0.4")
    statuses, _ = guess(guesser, f"{stack.url}/api/v1/functions", 100, forged)
    assert statuses[401] == 10
    assert statuses[429] == 90
    # Straight to the gateway from a non-proxy address: the header is ignored too.
    direct = client_from("127.0.0.5")
    statuses, _ = guess(direct, f"{stack.direct}/api/v1/functions", 30, forged)
    assert statuses == Counter({401: 10, 429: 20})


def test_invoke_key_guessing_is_throttled_at_the_key_check(stack: Stack) -> None:
    with stack.deployed("keyed", auth="key") as name:
        got = stack.api("POST", f"/functions/{name}/keys", json={"ttl": None})
        key = got.json()["key"]
        guesser, caller = client_from("127.0.0.6"), client_from("127.0.0.7")
        url = f"{stack.url}/function/{name}/"
        statuses, took = guess(guesser, url, 200)
        print(f"\n200 wrong keys through forwardAuth in {took:.2f}s: {dict(statuses)}")
        assert statuses[403] <= 15
        assert statuses[429] >= 180
        assert caller.get(url, headers={"X-Faas-Key": key}, timeout=10).status_code == 200
        assert guesser.get(url, headers={"X-Faas-Key": key}, timeout=10).status_code == 429


def test_an_encoded_slash_never_sends_a_request_elsewhere(stack: Stack) -> None:
    """`/function/<name>%2F@host/x` straight to the gateway (Traefik refuses encoded
    slashes itself): the rest of the path never becomes the URL's user info, which
    would send the request, and with async calls its answer, to `host`."""
    with stack.deployed("slash", min_scale=1) as name:
        for prefix in ("function", "async-function"):
            url = f"{stack.direct}/{prefix}/{name}%2F@127.0.0.1:{stack.gateway_port}/api/v1/x"
            got = requests.post(url, data=b"x", timeout=10)
            assert got.status_code == 404, (prefix, got.status_code, got.text)
            assert "error" in got.json()
