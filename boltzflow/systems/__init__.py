"""Systems: an energy at a temperature with a start configuration, loadable by name or folder."""

from .observables import State
from .registry import SystemInfo, UnknownSystemError, list_systems, load_system
from .system import System

__all__ = ["State", "System", "SystemInfo", "UnknownSystemError", "list_systems", "load_system"]
