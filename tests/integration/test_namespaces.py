"""Two `faas up` on one host: each namespace its own state dir (token, Traefik
config), and no second `faas up` on a state dir that one already holds."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from typer.testing import CliRunner

from faas.cli import app

from .conftest import Stack, fn_name, free_port

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def default_dirs_stack(engine: docker.DockerClient, xdg: Path) -> Iterator[Stack]:
    """A stack whose state dir is the default one, under `xdg` as XDG_STATE_HOME."""
    s = Stack(xdg)
    del s.env["FAAS_STATE_DIR"]
    s.env["XDG_STATE_HOME"] = str(xdg)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        s.remove_all(engine)


def gateway_route(state_dir: Path) -> str:
    """Where the Traefik of the stack in `state_dir` sends /api/v1."""
    config = yaml.safe_load((state_dir / "traefik" / "dynamic" / "gateway.yml").read_text())
    (server,) = config["http"]["services"]["faas-gateway"]["loadBalancer"]["servers"]
    return str(server["url"])


def test_two_stacks_side_by_side(engine: docker.DockerClient, tmp_path: Path) -> None:
    with default_dirs_stack(engine, tmp_path) as one, default_dirs_stack(engine, tmp_path) as two:
        dirs = {s: tmp_path / "faas" / "namespaces" / s.namespace for s in (one, two)}
        for s in (one, two):
            assert gateway_route(dirs[s]) == s.direct
            assert (dirs[s] / "admin-token").read_text().strip() == s.token
        assert one.token != two.token

        # Each Traefik sends /api/v1 to its own gateway: a deploy through the
        # first stack lands in the first namespace, and only its token opens it.
        name = fn_name("mine")
        assert one.deploy(name).status_code == 200
        assert [c.labels["faas.namespace"] for c in engine.containers.list(
            filters={"label": f"faas.function={name}"}
        )] == [one.namespace]  # fmt: skip
        assert one.api("GET", f"/functions/{name}").status_code == 200
        assert two.api("GET", f"/functions/{name}").status_code == 404
        assert (
            one.api(
                "GET", "/functions", headers={"Authorization": f"Bearer {two.token}"}
            ).status_code
            == 401
        )

        # The CLI on this host finds the token of FAAS_NAMESPACE's `faas up` itself.
        env = {"XDG_STATE_HOME": str(tmp_path), "FAAS_NAMESPACE": one.namespace,
               "FAAS_STATE_DIR": None, "FAAS_TOKEN": None}  # fmt: skip
        listed = CliRunner().invoke(app, ["--url", one.url, "list"], env=env)
        assert listed.exit_code == 0, listed.stderr
        assert name in listed.stdout

        # A second `faas up` on the first namespace (other ports) is refused,
        # in one line, before it touches the first one's config.
        before = (dirs[one] / "traefik" / "dynamic" / "gateway.yml").stat().st_mtime_ns
        again = {**one.env, "FAAS_GATEWAY_PORT": str(free_port()),
                 "FAAS_TRAEFIK_API_PORT": str(free_port())}  # fmt: skip
        refused = subprocess.run(
            [sys.executable, "-m", "faas.cli", "up", "--port", str(free_port())],
            env=again, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 1
        assert refused.stdout == ""
        (line,) = refused.stderr.splitlines()
        assert line.startswith("faas: error: another faas up (pid ")
        assert f"namespace {one.namespace}) is running on the state dir {dirs[one]}" in line
        assert (dirs[one] / "traefik" / "dynamic" / "gateway.yml").stat().st_mtime_ns == before
        assert one.invoke(name).status_code == 200

        # The stopped stack's lock goes with it: the namespace can start again.
        one.stop()
        one.start()
        assert one.api("GET", f"/functions/{name}").status_code == 200
