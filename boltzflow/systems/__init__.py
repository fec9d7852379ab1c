"""Systems: an energy at a temperature with a start configuration, loadable by name or folder.

:class:`System` (which needs torch) is imported on first use, so reading a system's definition,
observables and states (:func:`declared_system`) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .declared import DeclaredSystem
from .observables import State
from .registry import AmbiguousSystemError, SystemInfo, UnknownSystemError, declared_system, list_systems, load_system

if TYPE_CHECKING:
    from .system import System

__all__ = [
    "AmbiguousSystemError", "DeclaredSystem", "State", "System", "SystemInfo", "UnknownSystemError", "declared_system", "list_systems",
    "load_system",
]


def __getattr__(name: str) -> Any:
    """Import :class:`System` on first access (PEP 562)."""
    if name != "System":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .system import System

    return System
