"""The CLI's API client: a stream that breaks off is one readable error."""

from __future__ import annotations

import io

import pytest
import requests
import urllib3

from faas.client import Client
from faas.errors import FaasError


class _Cut(io.RawIOBase):
    """A body that gives one line, then the connection drops."""

    def __init__(self) -> None:
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self.sent:
            raise urllib3.exceptions.ProtocolError("Response ended prematurely")
        self.sent = True
        line = b'{"stream": "Step 1/2"}\n'
        buffer[: len(line)] = line
        return len(line)


def test_a_stream_that_breaks_off_is_a_faas_error() -> None:
    response = requests.Response()
    response.raw = urllib3.HTTPResponse(body=_Cut(), preload_content=False)
    response.url = "http://127.0.0.1:1/api/v1/functions/x/build"
    events = Client("http://127.0.0.1:1", None)._events(response)
    with pytest.raises(FaasError, match="broke off: Response ended prematurely"):
        list(events)
