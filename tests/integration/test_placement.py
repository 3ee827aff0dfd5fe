"""Placement (`constraints`, `spread`) is the Swarm provider's: one Docker engine
refuses it by name, and creates nothing."""

from __future__ import annotations

import docker
import pytest

from .conftest import ECHO_IMAGE, Stack, assert_refused, fn_name

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("field", "value"),
    [("constraints", ["node.labels.gpu==true"]), ("spread", ["node.labels.zone"])],
)
def test_placement_is_refused_on_one_engine(
    stack: Stack, engine: docker.DockerClient, field: str, value: list[str]
) -> None:
    name = fn_name("placed")
    body = {"image": ECHO_IMAGE, field: value}
    assert_refused(stack, engine, "PUT", f"/functions/{name}", body, 422, field)
    assert stack.api("GET", f"/functions/{name}").status_code == 404
