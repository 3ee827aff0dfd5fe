"""Property-based fuzz of the management API from its own OpenAPI document:
whatever the input, no 5xx and no crash."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faas import openapi

from .conftest import Stack

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = [
    (path, method)
    for path, item in openapi.document()["paths"].items()  # type: ignore[attr-defined]
    for method in item
    if method in ("get", "put", "post", "delete")
]
# An image id the engine cannot have: a deploy stops at "no such image" without
# pulling anything, so the fuzz creates nothing and sends nothing off the host.
NO_IMAGE = "sha256:" + "0" * 64


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_input_makes_the_api_fail(stack: Stack, path: str, method: str) -> None:
    operation = SCHEMA[path][method.upper()]

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), token=st.sampled_from([stack.token, "wrong"]))
    def run(case: Any, token: str) -> None:
        if isinstance(case.body, dict) and "image" in case.body:
            case.body["image"] = NO_IMAGE
        if isinstance(case.query, dict):
            case.query.pop("follow", None)  # a follow never ends by itself
        response = case.call(
            base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        if token == "wrong" and path.startswith("/api/v1/auth/"):
            # forwardAuth's key check: "wrong" is presented as a key, and is not one
            # (a name that cannot be a function's is refused first, 422).
            assert response.status_code in (401, 403, 422)
        elif token == "wrong" and path.startswith("/api/v1/async-function/"):
            # Open to a function's callers (its key, if it has one): the fuzz names
            # no function, or sends what an enqueue refuses.
            assert response.status_code in (400, 401, 403, 404, 413)
        elif token == "wrong" and not path.endswith("/healthz"):
            assert response.status_code == 401
        if response.status_code >= 400:
            assert "error" in response.json()

    run()
