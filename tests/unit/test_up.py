"""`faas up`'s own parts: the URLs it checks and prints, its hold on the state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faas.config import Settings
from faas.errors import FaasError
from faas.up import holding_state_dir, urls


@pytest.mark.parametrize(
    ("http_host", "gateway_host", "web", "direct"),
    [
        ("127.0.0.1", "127.0.0.1", "http://127.0.0.1:8080", "http://127.0.0.1:8081"),
        # A wildcard is reached at this host's loopback, an IPv6 address in brackets.
        ("0.0.0.0", "0.0.0.0", "http://127.0.0.1:8080", "http://127.0.0.1:8081"),
        ("::", "::", "http://[::1]:8080", "http://[::1]:8081"),
        ("::1", "::1", "http://[::1]:8080", "http://[::1]:8081"),
        ("fd00::5", "127.0.0.1", "http://[fd00::5]:8080", "http://127.0.0.1:8081"),
    ],
)
def test_urls_bracket_ipv6_and_reach_wildcards_on_loopback(
    tmp_path: Path, http_host: str, gateway_host: str, web: str, direct: str
) -> None:
    settings = Settings(state_dir=tmp_path, http_host=http_host, gateway_host=gateway_host)
    got = urls(settings)
    assert (got.web, got.direct) == (web, direct)
    assert got.healthz == f"{web}/api/v1/healthz"
    assert got.traefik_ping == "http://127.0.0.1:8082/ping"


def test_one_faas_up_per_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", namespace="one")
    with holding_state_dir(settings):
        assert (tmp_path / "state" / "up.lock").read_text() == f"pid {os.getpid()}, namespace one\n"
        # Another namespace pointed at the same directory is refused too: the
        # directory, not the name, is what the two would fight over.
        other = Settings(state_dir=tmp_path / "state", namespace="two")
        with pytest.raises(FaasError) as refused, holding_state_dir(other):
            pass
        assert refused.value.message == (
            f"another faas up (pid {os.getpid()}, namespace one) is running on the state dir "
            f"{tmp_path / 'state'}: stop it, or give this one its own FAAS_NAMESPACE "
            "(or FAAS_STATE_DIR)"
        )
    with holding_state_dir(other):  # released on exit
        pass


HOLD = """
import sys, time
from pathlib import Path
from faas.config import Settings
from faas.up import holding_state_dir
with holding_state_dir(Settings(state_dir=Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_crashed_faas_up_leaves_no_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        with (
            pytest.raises(FaasError, match="another faas up"),
            holding_state_dir(Settings(state_dir=tmp_path)),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with holding_state_dir(Settings(state_dir=tmp_path)):
        pass
