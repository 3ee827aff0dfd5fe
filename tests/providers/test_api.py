"""The API and CLI, the same on every provider (conftest.py: the Docker
provider on this host, the Swarm provider on a single-node swarm): deploy,
update, list, scale, scale to zero and wake, keys, logs, stats, bad input,
removal; and what only one of them does, refused by the other with 422."""

from __future__ import annotations

import threading

import pytest

from tests.integration.conftest import Load, wait_for
from tests.platforms import Platform, fn_name

pytestmark = pytest.mark.integration


def shown(platform: Platform, name: str) -> dict[str, object]:
    got = platform.api("GET", f"/functions/{name}")
    assert got.status_code == 200, got.text
    return dict(got.json())


def scale(platform: Platform, name: str, replicas: int) -> dict[str, object]:
    got = platform.api("POST", f"/functions/{name}/scale", json={"replicas": replicas})
    assert got.status_code == 200, got.text
    return dict(got.json())


def stats(platform: Platform, name: str) -> dict[str, object]:
    got = platform.api("GET", "/stats", params={"name": name})
    assert got.status_code == 200, got.text
    (row,) = got.json()
    return dict(row)


def gone(platform: Platform, name: str) -> None:
    """Nothing of the function is left. A Swarm node removes a removed
    service's task containers after the API answered."""
    wait_for(lambda: platform.leftovers(name) == [], 20, f"nothing of {name} left")


def test_deploy_invoke_update_remove(platform: Platform) -> None:
    name = fn_name("hello")
    assert platform.deploy(name, env={"ECHO_GREETING": "hi"}).status_code == 200
    try:
        # deploy returns once Traefik routes it: no polling needed.
        got = platform.invoke(name)
        assert got.status_code == 200, got.text
        assert got.json()["env"] == {"ECHO_GREETING": "hi", "FAAS_FUNCTION_NAME": name}

        body = b'{"x": [1, 2, 3]}\x00\xff'
        got = platform.invoke(
            name,
            "/sub/path?q=1&q=2&empty=",
            method="POST",
            data=body,
            headers={"X-Custom": "yes", "Content-Type": "application/octet-stream"},
        )
        assert got.status_code == 200
        assert got.headers["X-Echo"] == "1"  # response headers come back
        echo = got.json()
        assert echo["method"] == "POST"
        assert echo["path"] == "/sub/path"  # prefix stripped
        assert echo["query"] == {"q": ["1", "2"], "empty": [""]}
        assert echo["headers"]["x-custom"] == "yes"
        assert echo["body"] == body.decode("utf-8", "replace")
        for method in ("PUT", "DELETE", "PATCH"):
            assert platform.invoke(name, "/m", method=method).json()["method"] == method
        # The function's own status codes pass through.
        assert platform.invoke(name, headers={"X-Echo-Status": "418"}).status_code == 418
        # Another function's path prefix does not reach this one.
        assert platform.invoke(name + "x").status_code == 404

        # Updates under load: each answers at once with the new env, no request
        # fails, and the old replica is replaced by one new one.
        old = platform.instances(name)
        with Load(platform, name, clients=2) as load:
            for version in range(2):
                got = platform.deploy(name, env={"ECHO_V": str(version)})
                assert got.status_code == 200, got.text
                assert platform.invoke(name).json()["env"]["ECHO_V"] == str(version)
        assert load.failures == []
        assert load.served > 0
        (now,) = platform.instances(name)
        assert now not in old
    finally:
        assert platform.api("DELETE", f"/functions/{name}").status_code == 204
    assert platform.invoke(name).status_code == 404
    assert platform.api("GET", f"/functions/{name}").status_code == 404
    gone(platform, name)


def test_list_and_inspect_show_the_spec_and_state(platform: Platform) -> None:
    with platform.deployed("shape", env={"ECHO_K": "v"}, idle_timeout=600) as name:
        one = shown(platform, name)
        assert (one["name"], one["image"], one["env"]) == (name, platform.echo, {"ECHO_K": "v"})
        assert (one["state"], one["replicas"], one["ready_replicas"]) == ("running", 1, 1)
        assert one["idle_timeout"] == 600
        assert one["resources"] == {"memory": "256m", "cpus": 1.0, "pids": 256, "ulimits": {}}
        assert isinstance(one["container"], str)
        assert one["container"]
        listed = {f["name"]: f for f in platform.api("GET", "/functions").json()}
        # The list shows each function as inspect does, but for the moment it was read.
        assert set(listed[name]) == set(one)
        assert listed[name]["env"] == one["env"]
        assert listed[name]["state"] == "running"


def test_scale_to_two_and_back_to_one(platform: Platform) -> None:
    with platform.deployed("two") as name:
        assert scale(platform, name, 2)["state"] == "running"
        assert shown(platform, name)["ready_replicas"] == 2
        assert len(platform.instances(name)) == 2
        seen: set[str] = set()

        def both_answer() -> bool:
            got = platform.invoke(name)
            assert got.status_code == 200, got.text
            seen.add(got.json()["hostname"])
            return len(seen) == 2

        wait_for(both_answer, 20, "both replicas to answer through Traefik")
        scale(platform, name, 1)
        assert shown(platform, name)["ready_replicas"] == 1
        assert len(platform.instances(name)) == 1
        assert platform.invoke(name).status_code == 200


def test_scaled_to_zero_concurrent_requests_wake_it_once(platform: Platform) -> None:
    with platform.deployed("wake") as name:
        assert scale(platform, name, 0)["state"] == "stopped"
        assert shown(platform, name)["ready_replicas"] == 0
        # One instance stays, stopped: its labels keep the function.
        assert len(platform.instances(name)) == 1
        woken = int(str(stats(platform, name)["cold_starts"]))
        answers: list[int] = []

        def call(i: int) -> None:
            got = platform.invoke(name, f"/woken/{i}")
            answers.append(got.status_code if got.json()["path"] == f"/woken/{i}" else 0)

        callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        assert answers == [200] * 8
        assert stats(platform, name)["cold_starts"] == woken + 1
        assert shown(platform, name)["state"] == "running"
        assert len(platform.instances(name)) == 1


def test_key_auth(platform: Platform) -> None:
    with platform.deployed("keyed", auth="key") as name:
        assert platform.invoke(name).status_code == 401
        assert platform.invoke(name, headers={"X-Faas-Key": "nope"}).status_code == 403
        issued = platform.api("POST", f"/functions/{name}/keys", json={}).json()
        headers = {"X-Faas-Key": issued["key"]}
        got = platform.invoke(name, headers=headers)
        assert got.status_code == 200, got.text
        assert "x-faas-key" not in got.json()["headers"]  # never reaches the function
        # The API answers once the revocation is in force.
        assert platform.api("DELETE", f"/keys/{issued['kid']}").status_code == 204
        got = platform.invoke(name, headers=headers)
        assert (got.status_code, got.json()["error"]) == (
            403,
            f"key {issued['kid']} has been revoked",
        )


def test_logs_through_the_cli(platform: Platform) -> None:
    with platform.deployed("logs") as name:
        assert platform.invoke(name, "/logged-path").status_code == 200

        def logged() -> bool:
            code, out, err = platform.cli("logs", name)
            assert code == 0, err
            return "/logged-path" in out

        wait_for(logged, 20, "the request in the function's logs")
        _, out, _ = platform.cli("logs", name)
        assert "echo listening on :8080" in out


def test_stats_count_the_calls_and_sample_the_replica(platform: Platform) -> None:
    with platform.deployed("stats") as name:
        wait_for(lambda: stats(platform, name)["memory_bytes"] is not None, 15, "a memory sample")
        row = stats(platform, name)
        # The echo's resident memory, under the platform's default limit (256m).
        assert 1 << 20 < int(str(row["memory_bytes"])) < 256 << 20
        assert row["memory_limit_bytes"] == 256 << 20

        # Traefik counts the requests its router for the function served. Right
        # after a deploy, one may still reach the gateway by the catch-all,
        # counted under the gateway's service: count from the first the function's had.
        def counted() -> bool:
            assert platform.invoke(name).status_code == 200
            return int(str(stats(platform, name)["invocations"])) > 0

        wait_for(counted, 15, "a request counted for the function")
        before = int(str(stats(platform, name)["invocations"]))
        for _ in range(7):
            assert platform.invoke(name).status_code == 200
        # One error, last: see test_a_functions_own_5xx_leaves_it_routed.
        assert platform.invoke(name, headers={"X-Echo-Status": "503"}).status_code == 503
        row = stats(platform, name)
        assert (row["name"], row["state"], row["cold_starts"]) == (name, "running", 0)
        assert row["invocations"] == before + 8
        assert row["error_rate"] == pytest.approx(1 / (before + 8))
        p50, p99 = float(str(row["p50_seconds"])), float(str(row["p99_seconds"]))
        assert 0 < p50 <= p99 < 5


def test_a_functions_own_5xx_leaves_it_routed(platform: Platform) -> None:
    """A 5xx is the function's answer, not a sign its replica is gone: the next
    requests still reach it."""
    with platform.deployed("own5xx") as name:
        for _ in range(3):
            got = platform.invoke(name, headers={"X-Echo-Status": "503"})
            assert (got.status_code, got.headers.get("X-Echo")) == (503, "1"), got.text
        got = platform.invoke(name)
        assert (got.status_code, got.headers.get("X-Echo")) == (200, "1"), got.text


# The request path and body, and what the error names.
BAD_INPUT = [
    ("/functions/Bad_Name", {"image": "faas/echo:latest"}, "name"),
    ("/functions/{name}", {"image": "Not An Image"}, "image"),
    ("/functions/{name}", {"image": "faas/echo:latest", "port": 70000}, "port"),
    ("/functions/{name}", {"image": "faas/echo:latest", "privileged": True}, "privileged"),
    ("/functions/{name}", "{broken", "JSON"),
]


@pytest.mark.parametrize(("path", "body", "mentions"), BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_is_a_4xx_json_error_and_creates_nothing(
    platform: Platform, path: str, body: object, mentions: str
) -> None:
    name = fn_name("bad")
    before = platform.instances()
    if isinstance(body, str):
        got = platform.api("PUT", path.format(name=name), data=body)
    else:
        got = platform.api("PUT", path.format(name=name), json=body)
    assert got.status_code == 422, got.text
    assert mentions in got.json()["error"]
    assert platform.instances() == before
    assert platform.api("GET", f"/functions/{name}").status_code == 404


def test_the_cli_deploys_invokes_lists_and_removes(platform: Platform) -> None:
    name = fn_name("cli")
    code, out, err = platform.cli("deploy", name, "--image", platform.echo, "-e", "ECHO_C=1")
    assert code == 0, err
    assert f"/function/{name}" in out
    try:
        code, out, err = platform.cli("invoke", name, "/x?y=1", "-d", "hello", "-H", "X-A: b")
        assert code == 0, err
        assert '"body": "hello"' in out
        assert '"x-a": "b"' in out
        code, out, _ = platform.cli("list")
        assert code == 0
        assert any(line.split()[:2] == [name, "running"] for line in out.splitlines())
        code, out, _ = platform.cli("scale", name, "0")
        assert (code, out.strip()) == (0, f"{name}: stopped, 0/0 replicas")
    finally:
        code, _, err = platform.cli("rm", name)
        assert code == 0, err
    assert platform.invoke(name).status_code == 404
    gone(platform, name)
    code, _, err = platform.cli("rm", name)
    assert (code, err.strip()) == (1, f"faas: error: function '{name}' not found")


# What one provider does and the other refuses by name, creating nothing:
# the field and value, and the provider that takes it.
ONE_PROVIDER_ONLY = [
    ("runtime", "runc", "docker"),  # a service runs on each node's default runtime
    ("constraints", ["node.labels.faas.test.node==n1"], "swarm"),  # placement
    ("spread", ["node.labels.zone"], "swarm"),
]


@pytest.mark.parametrize(
    ("field", "value", "taken_by"), ONE_PROVIDER_ONLY, ids=[f for f, _, _ in ONE_PROVIDER_ONLY]
)
def test_what_one_provider_cannot_do_is_refused(
    platform: Platform, field: str, value: object, taken_by: str
) -> None:
    name = fn_name("only")
    before = platform.instances()
    got = platform.deploy(name, **{field: value})
    try:
        if platform.provider == taken_by:
            assert got.status_code == 200, got.text
            assert shown(platform, name)[field] == value
            assert platform.invoke(name).status_code == 200
        else:
            assert got.status_code == 422, got.text
            assert field in got.json()["error"]
            assert platform.instances() == before
            assert platform.api("GET", f"/functions/{name}").status_code == 404
    finally:
        platform.api("DELETE", f"/functions/{name}")


def test_pause_where_the_engine_can_freeze(platform: Platform) -> None:
    with platform.deployed("pause") as name:
        got = platform.api("POST", f"/functions/{name}/pause")
        if platform.provider == "swarm":  # Swarm cannot freeze a task
            assert got.status_code == 422, got.text
            assert "pause" in got.json()["error"]
            assert shown(platform, name)["state"] == "running"
        else:
            assert got.status_code == 200, got.text
            assert shown(platform, name)["state"] == "paused"
        # Either way the next request is answered.
        assert platform.invoke(name).status_code == 200
