"""structlog JSON logging, configured once per process."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None) -> None:
    """JSON lines on stderr (``CLOUDLESS_LOG_FORMAT=console`` for humans)."""
    lvl = getattr(logging, (level or os.environ.get("CLOUDLESS_LOG_LEVEL", "INFO")).upper())
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if os.environ.get("CLOUDLESS_LOG_FORMAT") == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
