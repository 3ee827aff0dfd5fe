"""The platform broken on purpose, on a stack of its own: whatever one function
or one container does, listings work and every other function still scales to zero."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from .conftest import ECHO_IMAGE, Stack, fn_name, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faulty(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_stack(engine, tmp_path_factory.mktemp("faults")) as s:
        yield s


def state(stack: Stack, name: str) -> str:
    return str(stack.api("GET", f"/functions/{name}").json()["state"])


def test_a_container_with_invalid_labels_disturbs_nothing(
    faulty: Stack, engine: docker.DockerClient, tmp_path: Path
) -> None:
    name = fn_name("idle")
    assert faulty.deploy(name, idle_timeout=1).status_code == 200
    broken = fn_name("broken")
    # As a hand-made container or an older version might leave it: a port no
    # spec allows.
    engine.containers.create(
        ECHO_IMAGE,
        name=f"faas-{faulty.namespace}-{broken}",
        labels={
            "faas.namespace": faulty.namespace,
            "faas.function": broken,
            "faas.schema": "1",
            "faas.spec.name": broken,
            "faas.spec.image": ECHO_IMAGE,
            "faas.spec.port": "70000",
            "faas.test": "1",
        },
    )
    listed = faulty.api("GET", "/functions")
    assert listed.status_code == 200, listed.text
    shown = {f["name"]: f for f in listed.json()}
    assert shown[broken]["state"] == "invalid"
    assert "port" in shown[broken]["reason"]
    assert shown[name]["state"] == "running"
    one = faulty.api("GET", f"/functions/{broken}")
    assert (one.status_code, one.json()["state"]) == (200, "invalid")
    # Its requests fail clearly, never hang; the others' are served.
    got = faulty.invoke(broken)
    assert got.status_code == 503
    assert got.json()["detail"]["cause"] == "invalid"
    # The idle loop goes on: the healthy function still scales to zero.
    wait_for(lambda: state(faulty, name) == "stopped", 20, f"{name} to scale to zero")
    assert faulty.api("DELETE", f"/functions/{broken}").status_code == 204
    assert faulty.containers(engine, broken) == []
    assert faulty.api("DELETE", f"/functions/{name}").status_code == 204


def test_a_function_dying_mid_answer_on_the_cold_path_still_scales_to_zero(
    faulty: Stack, engine: docker.DockerClient
) -> None:
    name = fn_name("dies")
    assert faulty.deploy(name, idle_timeout=1).status_code == 200
    got = faulty.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
    assert got.json()["state"] == "stopped"

    lines: list[bytes] = []
    done = threading.Event()

    def stream() -> None:
        # A cold request (through the gateway) for a slow stream: 40 lines, 10 s.
        try:
            with requests.get(
                f"{faulty.url}/function/{name}/?stream=40", stream=True, timeout=30
            ) as response:
                for line in response.iter_lines():
                    lines.append(line)
        except requests.RequestException:
            pass  # the function died under it: the caller sees a cut answer
        finally:
            done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_for(lambda: len(lines) >= 2, 15, "the stream to start")
    (container,) = faulty.containers(engine, name)
    container.kill()  # dies mid-answer
    assert done.wait(15)
    assert len(lines) < 40
    # The next requests wake it (once Traefik has applied the death: an
    # unexpected one cannot be drained); nothing is left counted in flight, so
    # it goes back to zero at its idle timeout (1 s, plus the quiet window).
    wait_for(lambda: faulty.invoke(name).status_code == 200, 20, f"{name} to wake")
    began = time.monotonic()
    wait_for(lambda: state(faulty, name) == "stopped", 20, f"{name} to scale to zero")
    assert time.monotonic() - began < 15
    assert faulty.api("DELETE", f"/functions/{name}").status_code == 204
