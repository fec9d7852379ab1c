"""Lazy, quiet import of pymbar for BAR / EXP (it logs a JAX banner when imported)."""

from __future__ import annotations

import logging
from types import ModuleType


def import_pymbar() -> ModuleType:
    """Import and return :mod:`pymbar`, silencing its import-time log messages.

    The ``pymbar`` logger is raised to ERROR unless the user already configured its level.
    """
    logger = logging.getLogger("pymbar")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    import pymbar

    return pymbar
