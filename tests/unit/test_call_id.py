"""The gateway's rule for a caller's X-Call-Id (Traefik's callid plugin has the same)."""

from __future__ import annotations

import re

import pytest

from faas.invoke import call_id


@pytest.mark.parametrize("given", ["abc-123", "A.b_C-9", "0", "a" * 128])
def test_a_sane_id_is_kept(given: str) -> None:
    assert call_id(given) == given


@pytest.mark.parametrize(
    "given", [None, "", " ", "has space", "semi;colon", "a" * 129, "caf\u00e9", "x\n", "abc\n"]
)
def test_anything_else_is_replaced_by_a_new_one(given: str | None) -> None:
    made = call_id(given)
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert made != call_id(given)
