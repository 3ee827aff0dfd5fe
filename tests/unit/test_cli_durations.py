"""`faas logs --since`: durations."""

import pytest
import typer

from faas.cli import duration, parse_ttl


@pytest.mark.parametrize(
    ("raw", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("45", 45)]
)
def test_log_since_durations(raw: str, seconds: int) -> None:
    assert duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "m", "1.5m", "-1s", "10x"])
def test_log_since_rejects_non_durations(raw: str) -> None:
    with pytest.raises(typer.BadParameter):
        duration(raw)


def test_key_lifetimes_use_the_same_durations() -> None:
    assert parse_ttl("30d") == 30 * 86400
    assert parse_ttl(None) is None
    with pytest.raises(typer.BadParameter):
        parse_ttl("0")
