"""Capture what gmta logs during a unit test, whatever logging setup ran before."""

from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def captured_log(level: int = logging.INFO, name: str = "gmta"):
    """The ``key=value`` lines logger *name* logs at *level* or above inside the block.

    ``logging.NOTSET`` keeps the level the logger inherits.
    """
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    saved_level = logger.level
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
