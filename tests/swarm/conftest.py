"""Fixtures of the Swarm tier: a 3-node swarm on this machine (cluster.py), the
echo image in its registry, and the platform on it (platform.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from .cluster import Cluster, cluster
from .platform import SwarmStack, running_platform

ECHO_IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
# The platform's web port, published on the manager node's own address.
WEB_PORT = 18500


@pytest.fixture(scope="session")
def swarm() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the Swarm tier makes network namespaces and daemons: run it as root")
    for tool in ("dockerd", "docker-registry", "skopeo", "nsenter", "unshare"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            pytest.fail(f"{tool} is missing; run `make test-deps`")
    with cluster(3) as c:
        yield c


@pytest.fixture(scope="session")
def echo(swarm: Cluster) -> str:
    """The echo image, as every node pulls it."""
    return swarm.push(ECHO_IMAGE)


@pytest.fixture(scope="session")
def platform(swarm: Cluster, echo: str) -> Iterator[SwarmStack]:
    with running_platform(
        swarm,
        echo,
        WEB_PORT,
        FAAS_AUTOSCALE_INTERVAL="0.5",
        FAAS_AUTOSCALE_PANIC_WINDOW="2",
        # Long enough for a test to look at 3 replicas before they go.
        FAAS_AUTOSCALE_STABLE_WINDOW="20",
    ) as s:
        yield s
