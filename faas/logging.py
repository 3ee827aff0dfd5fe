"""Log set-up, called only by entry points (the gateway factory, `faas up`)."""

from __future__ import annotations

import sys

from loguru import logger


def configure_logging(level: str, fmt: str = "text") -> None:
    """Text lines for people, or (`json`) one JSON object per line for collectors."""
    logger.remove()
    if fmt == "json":
        logger.add(sys.stderr, level=level.upper(), serialize=True)
        return
    logger.add(
        sys.stderr,
        level=level.upper(),
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}: {message}",
    )
