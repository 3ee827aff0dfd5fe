"""Runtimes, limits and GPUs, on the real runtimes registered with the engine."""

from __future__ import annotations

import platform
import time

import docker
import pytest
from docker.models.containers import Container

from faas.config import Settings
from faas.docker_provider import DockerProvider
from faas.errors import InvalidSpec
from faas.lifecycle import Lifecycle
from faas.spec import FunctionSpec

from .conftest import ECHO_IMAGE, Stack, fn_name

pytestmark = pytest.mark.integration

LIMITS = {"memory": "64m", "cpus": 0.5, "pids": 64, "ulimits": {"nofile": 1024}}
MIB64 = 64 << 20


def require(engine: docker.DockerClient, runtime: str) -> None:
    if runtime not in engine.info().get("Runtimes", {}):
        pytest.fail(f"runtime {runtime} is not registered with the engine; run `make runtimes`")


def exec_out(container: Container, *cmd: str) -> str:
    code, out = container.exec_run(list(cmd))
    assert code == 0, out
    assert isinstance(out, bytes)
    return out.decode()


def deployed(stack: Stack, engine: docker.DockerClient, runtime: str) -> tuple[str, Container]:
    name = fn_name(runtime)
    got = stack.deploy(name, runtime=runtime, resources=LIMITS, min_scale=1)
    assert got.status_code == 200, got.text
    assert got.json()["runtime"] == runtime
    (container,) = stack.containers(engine, name)
    return name, container


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_native_runtimes_enforce_limits(
    stack: Stack, engine: docker.DockerClient, runtime: str
) -> None:
    require(engine, runtime)
    name, container = deployed(stack, engine, runtime)
    assert stack.invoke(name).status_code == 200

    host = container.attrs["HostConfig"]
    assert host["Runtime"] == runtime
    assert (host["Memory"], host["MemorySwap"]) == (MIB64, MIB64)  # no swap
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["CapDrop"] == ["ALL"]

    # From the inside: the host's kernel, and the limits in the cgroups.
    assert stack.invoke(name).json()["kernel"] == platform.release()
    cg = "/sys/fs/cgroup"
    assert exec_out(container, "cat", f"{cg}/memory/memory.limit_in_bytes").strip() == str(MIB64)
    assert exec_out(container, "cat", f"{cg}/cpu/cpu.cfs_quota_us").strip() == "50000"
    assert exec_out(container, "cat", f"{cg}/cpu/cpu.cfs_period_us").strip() == "100000"
    assert exec_out(container, "cat", f"{cg}/pids/pids.max").strip() == "64"

    # A fork bomb hits the pids limit, and the function keeps serving.
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(2); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
    )
    forked, errno = exec_out(container, "python3", "-c", bomb).split()
    assert int(forked) < 64
    assert errno == "11"  # EAGAIN: the pids cgroup said no
    deadline = time.monotonic() + 10
    while stack.invoke(name).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stack.api("DELETE", f"/functions/{name}")


def test_gvisor_runs_functions_in_its_own_kernel(stack: Stack, engine: docker.DockerClient) -> None:
    require(engine, "runsc")
    name, container = deployed(stack, engine, "runsc")
    got = stack.invoke(name, "/via/traefik", method="POST", data=b"gvisor")
    assert got.status_code == 200
    assert got.json()["body"] == "gvisor"
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    # From the inside, as the function itself reports it (no `docker exec`:
    # the Debian runsc of 2022 can crash a sandbox on exec): gVisor's Sentry
    # answers as kernel 4.4.0 and sizes memory to the limit.
    assert got.json()["kernel"] == "4.4.0"
    assert got.json()["memtotal_kb"] == MIB64 // 1024
    # And it wakes from zero like any other function.
    assert stack.api("POST", f"/functions/{name}/scale", json={"replicas": 0}).status_code == 200
    assert stack.invoke(name).status_code == 200
    stack.api("DELETE", f"/functions/{name}")


def test_unknown_runtime_lists_the_available_ones(
    stack: Stack, engine: docker.DockerClient
) -> None:
    before = [c.id for c in stack.containers(engine)]
    got = stack.deploy(fn_name("rt"), runtime="nosuch")
    assert got.status_code == 422
    assert "'nosuch' is not a runtime of this engine; available: " in got.json()["error"]
    assert "runc" in got.json()["error"]
    assert [c.id for c in stack.containers(engine)] == before


def test_gpus_without_gpu_support_is_a_clear_error(
    stack: Stack, engine: docker.DockerClient
) -> None:
    if "nvidia" in engine.info().get("Runtimes", {}):
        pytest.skip("this engine has GPU support")
    before = [c.id for c in stack.containers(engine)]
    got = stack.deploy(fn_name("gpu"), gpus="all")
    assert got.status_code == 422
    assert "no GPU support" in got.json()["error"]
    assert [c.id for c in stack.containers(engine)] == before


def test_allowed_runtimes_are_enforced(stack: Stack, engine: docker.DockerClient) -> None:
    settings = Settings(namespace=stack.namespace, allowed_runtimes="runsc", traefik_api_url="")
    life = Lifecycle(DockerProvider(settings, client=engine), None, settings)
    with pytest.raises(InvalidSpec) as info:
        life.deploy(FunctionSpec(name=fn_name("deny"), image=ECHO_IMAGE, runtime="runc"))
    assert info.value.field == "runtime"
    assert "allowed here; allowed: runsc" in info.value.reason
    with pytest.raises(InvalidSpec):  # nor the engine's default, when none is named
        life.deploy(FunctionSpec(name=fn_name("deny"), image=ECHO_IMAGE))


def test_default_runtime_setting(stack: Stack, engine: docker.DockerClient) -> None:
    require(engine, "crun")
    settings = Settings(namespace=stack.namespace, default_runtime="crun", traefik_api_url="")
    life = Lifecycle(DockerProvider(settings, client=engine), None, settings)
    name = fn_name("default-rt")
    function = life.deploy(FunctionSpec(name=name, image=ECHO_IMAGE))
    try:
        assert function.spec.runtime == "crun"
        (container,) = stack.containers(engine, name)
        assert container.attrs["HostConfig"]["Runtime"] == "crun"
    finally:
        life.remove(name)


def test_defaults_are_recorded_and_shown(stack: Stack) -> None:
    name = fn_name("defaults")
    assert stack.deploy(name).status_code == 200
    shown = stack.api("GET", f"/functions/{name}").json()
    assert shown["resources"] == {"memory": "256m", "cpus": 1.0, "pids": 256, "ulimits": {}}
    stack.api("DELETE", f"/functions/{name}")


def test_out_of_memory_is_reported(stack: Stack, engine: docker.DockerClient) -> None:
    name = fn_name("oom")
    # min_scale 0: no restart policy, so the killed container stays to be seen.
    got = stack.deploy(name, resources={"memory": "48m"})
    assert got.status_code == 200, got.text
    assert stack.invoke(name, "/?alloc=200").status_code >= 500  # killed mid-request
    deadline = time.monotonic() + 15
    while (shown := stack.api("GET", f"/functions/{name}").json())["state"] != "failed":
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    assert shown["reason"] == "out of memory"
    listed = {f["name"]: f for f in stack.api("GET", "/functions").json()}
    assert (listed[name]["state"], listed[name]["reason"]) == ("failed", "out of memory")
    # Requests wake it again, once Traefik has applied the death (~100 ms): an
    # unexpected death, unlike a scale-down, cannot be drained beforehand.
    deadline = time.monotonic() + 10
    while stack.invoke(name).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # A version that runs out of memory while starting is refused, saying why;
    # a wake would fail the same way (503).
    crash = stack.deploy(name, resources={"memory": "48m"}, env={"ECHO_ALLOC_MB": "200"})
    assert crash.status_code == 502
    assert crash.json()["detail"]["reason"] == "out of memory"
    stack.api("DELETE", f"/functions/{name}")
