"""One platform per provider, for the API tests both must pass alike.

`platform` is parametrised over the providers, session-scoped: pytest runs
every test on the Docker provider's platform (`faas up` on this host's
engine), tears it down, then runs them again on a single-node swarm (an extra
dockerd in a network namespace, tests/swarm/cluster.py) with the platform in
a container on it. Both are torn down, with whatever their functions left,
even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from tests.integration.conftest import ECHO_IMAGE, running_stack
from tests.platforms import Platform
from tests.swarm.cluster import cluster
from tests.swarm.platform import running_platform

PROVIDERS = ["docker", "swarm"]
# The swarm platform's web port, published on the node's own address.
WEB_PORT = 18500


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.images.get(ECHO_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{ECHO_IMAGE} is missing; run `make images`")
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine ({exc}); run `make engine`")
    return client


def _can_make_a_swarm() -> None:
    if os.geteuid() != 0:
        pytest.fail("the swarm platform makes network namespaces and daemons: run as root")
    for tool in ("dockerd", "docker-registry", "skopeo", "nsenter", "unshare"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            pytest.fail(f"{tool} is missing; run `make test-deps`")


@pytest.fixture(scope="session", params=PROVIDERS)
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    engine = _engine()
    if request.param == "docker":
        with running_stack(engine, tmp_path_factory.mktemp("state")) as stack:
            yield stack
        return
    _can_make_a_swarm()
    with (
        cluster(1) as one_node,
        running_platform(one_node, one_node.push(ECHO_IMAGE), WEB_PORT) as swarm,
    ):
        yield swarm
