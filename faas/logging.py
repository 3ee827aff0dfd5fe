"""Log set-up, called only by entry points (the gateway factory, `faas up`)."""

from __future__ import annotations

import sys

from loguru import logger


def configure_logging(level: str) -> None:
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}: {message}",
    )
