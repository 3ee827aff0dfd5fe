"""Log set-up, called only by entry points (the gateway factory, `faas up`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from loguru import logger

from .errors import FaasError

if TYPE_CHECKING:
    from loguru import Logger


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


def logged(exc: BaseException) -> Logger:
    """The logger for a failed background round: the platform's own errors (the
    engine or Traefik away) in one line, anything else with its traceback."""
    return logger if isinstance(exc, FaasError) else logger.opt(exception=exc)
