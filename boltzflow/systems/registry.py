"""Find, list and load systems: built-in ``systems/<name>/`` folders or a user's own folder.

A system folder holds a ``system.toml`` definition (and any structure file it names). Common keys::

    name, description, type, backend, temperature, units, x0 (optional), [parameters],
    [observables], [states]

``type`` selects a builder in :mod:`boltzflow.systems.builders`, imported only to build: reading
definitions, listing systems and :func:`declared_system` need neither torch nor OpenMM. Built-in
folders ship inside the wheel as the package ``boltzflow._systems``; from a source checkout they
are read from the repository's ``systems/`` folder.

A bare name (``"alanine_dipeptide_implicit"``) means the built-in system; a path (a
:class:`pathlib.Path`, or a string with a separator or starting with ``.`` or ``~``) means a
folder. A bare name that is also a system folder in the current directory is refused as ambiguous
(:class:`AmbiguousSystemError`). Loading checks the declared observables and states (indices within
``dim``, expressions that parse), with errors naming the ``system.toml``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .declared import SYSTEM_TYPES, DeclaredSystem, declare, declared_observables, declared_states
from .observables import check_observables

if TYPE_CHECKING:
    from .system import System

DEFINITION_FILE = "system.toml"


class UnknownSystemError(KeyError):
    """Raised for a system name that is neither built in nor a folder with a system.toml."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class SystemInfo:
    """What ``boltzflow systems`` prints about a system without building it."""

    name: str
    dim: int | None
    temperature: float
    units: str
    backend: str
    description: str
    folder: Path


def builtin_systems_dir() -> Path:
    """The folder holding the built-in system folders."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_systems"  # the wheel's copy of systems/
    return installed if installed.is_dir() else package.parent / "systems"


def is_builtin(system: System | DeclaredSystem) -> bool:
    """Whether ``system`` was loaded from a built-in system folder (so the project's data fit it)."""
    return system.source is not None and Path(system.source).resolve().parent == builtin_systems_dir().resolve()


def read_definition(folder: Path) -> dict[str, Any]:
    """Parse ``folder/system.toml`` with clear errors."""
    path = folder / DEFINITION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a system folder: no {DEFINITION_FILE} in it")
    try:
        with open(path, "rb") as f:
            definition = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from None
    for key in ("name", "type", "temperature"):
        if key not in definition:
            raise ValueError(f"{path}: missing required key '{key}'")
    if definition["type"] not in SYSTEM_TYPES:
        known = ", ".join(sorted(SYSTEM_TYPES))
        raise ValueError(f"{path}: unknown system type '{definition['type']}' (known: {known})")
    return definition


def builtin_names() -> list[str]:
    """Names of the built-in systems, sorted."""
    root = builtin_systems_dir()
    return sorted(p.name for p in root.iterdir() if (p / DEFINITION_FILE).is_file()) if root.is_dir() else []


class AmbiguousSystemError(ValueError):
    """Raised for a bare name that is both a built-in system and a system folder in the current directory."""


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a system reference is a path rather than a name.

    A :class:`pathlib.Path` (any ``os.PathLike``) is a path; so is a string containing a path
    separator or starting with ``.`` or ``~``. Anything else is a bare name.

    Examples
    --------
    >>> looks_like_path("double_well_2d"), looks_like_path("./double_well_2d"), looks_like_path(Path("w"))
    (False, True, True)
    """
    if not isinstance(name_or_path, str):
        return True
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return name_or_path.startswith((".", "~")) or any(sep in name_or_path for sep in separators)


def find_system_folder(name_or_path: str | os.PathLike) -> Path:
    """Resolve a built-in name or a path to a system folder.

    A bare name (see :func:`looks_like_path`) means the built-in system of that name; a folder of
    that name in the current directory is used only when no built-in has the name. A path is
    always a folder (or its ``system.toml``).

    Raises
    ------
    AmbiguousSystemError
        For a bare name that is a built-in system and also a system folder in the current
        directory: the caller must write ``./name`` for the folder.
    UnknownSystemError
        With the close matches among the built-in names.

    Examples
    --------
    >>> find_system_folder("double_well_2d") == builtin_systems_dir() / "double_well_2d"
    True
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if looks_like_path(name_or_path):
        if path.is_dir():
            return path
        if path.name == DEFINITION_FILE and path.is_file():
            return path.parent
        raise UnknownSystemError(f"no system folder at {text}: it does not exist")
    folder = builtin_systems_dir() / text
    if (folder / DEFINITION_FILE).is_file():
        if (path / DEFINITION_FILE).is_file() and path.resolve() != folder.resolve():
            raise AmbiguousSystemError(
                f"'{text}' is a built-in system and also a folder ./{text}; write ./{text} for the folder"
            )
        return folder
    if path.is_dir():
        return path
    if path.name == DEFINITION_FILE and path.is_file():
        return path.parent
    names = builtin_names()
    close = difflib.get_close_matches(text, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownSystemError(
        f"unknown system '{text}': not a built-in system and not a folder with a {DEFINITION_FILE}."
        f"{hint} Built-in systems: {', '.join(names)}."
    )


def system_info(name_or_path: str | os.PathLike) -> SystemInfo:
    """Describe a system from its definition file, without building it."""
    folder = find_system_folder(name_or_path)
    d = read_definition(folder)
    return SystemInfo(
        name=d["name"],
        dim=d.get("dim"),
        temperature=float(d["temperature"]),
        units=d.get("units", "reduced"),
        backend=d.get("backend", "numba"),
        description=d.get("description", ""),
        folder=folder,
    )


def declared_system(name_or_path: str | os.PathLike) -> DeclaredSystem | None:
    """A system's name, temperature, observables and states from its definition file, without building it.

    Parameters
    ----------
    name_or_path : str or path
        As for :func:`load_system`.

    Returns
    -------
    DeclaredSystem or None
        ``None`` for a system whose observables only its code knows (``type = "python"``,
        ``tetrahedron_field``, ``ice``): :func:`load_system` it instead.
    """
    folder = find_system_folder(name_or_path)
    return declare(folder, read_definition(folder))


def list_systems() -> list[SystemInfo]:
    """Information on every built-in system."""
    return [system_info(builtin_systems_dir() / name) for name in builtin_names()]


def load_system(name_or_path: str | os.PathLike, **options: Any) -> System:
    """Build a system by built-in name or from a folder with a ``system.toml``.

    Parameters
    ----------
    name_or_path : str or path
        E.g. ``"alanine_dipeptide_implicit"`` or ``"path/to/my_system"``.
    **options
        Builder options overriding the definition, e.g. ``platform="CPU"`` or ``n_workers=2``
        for OpenMM systems, ``temperature=350.0`` for any system.

    Returns
    -------
    System
    """
    from .builders import BUILDERS

    folder = find_system_folder(name_or_path)
    definition = read_definition(folder)
    where = str(folder / DEFINITION_FILE)
    kind = SYSTEM_TYPES[definition["type"]]
    if kind.n_dims is not None:  # check the declarations before building: errors name the file
        observables = declared_observables(definition, where)
        if kind.observables_declared:  # else states may use observables made in code
            declared_states(definition, observables, where)
    temperature = options.pop("temperature", None)
    is_openmm = definition.get("backend") == "openmm" or definition["type"] in ("openmm", "ice")
    if not is_openmm and {"platform", "n_workers"} & set(options):
        raise ValueError(f"'{definition['name']}' is not an OpenMM system: platform/n_workers do not apply")
    system = BUILDERS[definition["type"]](folder, definition, **options)
    check_observables(system.observables, system.dim, where)
    if temperature is not None:
        system = system.at_temperature(float(temperature))
    return system
