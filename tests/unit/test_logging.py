import json
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from faas.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_default_sink() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)


def test_json_format_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    with logger.contextualize(call_id="abc"):
        logger.info("woke {}", "f")
    logger.debug("below the level")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)["record"]
    assert record["message"] == "woke f"
    assert record["level"]["name"] == "INFO"
    assert record["extra"] == {"call_id": "abc"}


def test_text_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    logger.info("hello")
    err = capsys.readouterr().err
    assert err.rstrip().endswith("hello")
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)
