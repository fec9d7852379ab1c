"""Build an OpenMM system from a system folder's ``system.toml`` definition.

A molecular system folder holds a PDB structure and a ``system.toml`` naming the force field::

    structure = "alanine_dipeptide.pdb"
    forcefield = ["amber99sbildn.xml", "amber99_obc.xml"]
    nonbonded_method = "NoCutoff"   # default
    constraints = "none"            # default; flows need every atom free
    rigid_water = false             # default

Positions are in nm, energies in kJ/mol (OpenMM's units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

NONBONDED_METHODS: dict[str, Any] = {
    "NoCutoff": app.NoCutoff,
    "CutoffNonPeriodic": app.CutoffNonPeriodic,
    "CutoffPeriodic": app.CutoffPeriodic,
    "Ewald": app.Ewald,
    "PME": app.PME,
    "LJPME": app.LJPME,
}
"""``nonbonded_method`` values accepted in ``system.toml``."""

CONSTRAINTS: dict[str, Any] = {
    "none": None,
    "HBonds": app.HBonds,
    "AllBonds": app.AllBonds,
    "HAngles": app.HAngles,
}
"""``constraints`` values accepted in ``system.toml``."""


def build_openmm_system(folder: Path, definition: dict) -> tuple[openmm.System, mdtraj.Topology, np.ndarray]:
    """Create the OpenMM system, topology and positions of a molecular system folder.

    Parameters
    ----------
    folder : pathlib.Path
        The system folder; ``definition["structure"]`` is resolved inside it.
    definition : dict
        Parsed ``system.toml`` with keys ``structure`` (PDB file name), ``forcefield`` (list of
        OpenMM force field XML names), and optionally ``nonbonded_method`` (``"NoCutoff"``),
        ``nonbonded_cutoff`` (nm, for cutoff methods), ``constraints`` (``"none"``) and
        ``rigid_water`` (``false``).

    Returns
    -------
    system : openmm.System
        The system (energies in kJ/mol).
    topology : mdtraj.Topology
        Its topology, atoms in PDB order.
    positions : np.ndarray
        ``(n_atoms, 3)`` float64 positions of the PDB structure in nm.

    Raises
    ------
    FileNotFoundError
        If the structure file does not exist.
    KeyError
        If ``structure`` or ``forcefield`` is missing from ``definition``.
    ValueError
        For an unknown ``nonbonded_method`` or ``constraints`` value, or an empty force field list.
    """
    folder = Path(folder)
    for key in ("structure", "forcefield"):
        if key not in definition:
            raise KeyError(f"system definition in {folder} lacks the required key '{key}'")
    structure = folder / definition["structure"]
    if not structure.is_file():
        raise FileNotFoundError(f"structure file not found: {structure}")

    forcefield_files = definition["forcefield"]
    if isinstance(forcefield_files, str):
        forcefield_files = [forcefield_files]
    if not forcefield_files:
        raise ValueError(f"system definition in {folder}: 'forcefield' lists no force field files")

    method_name = definition.get("nonbonded_method", "NoCutoff")
    if method_name not in NONBONDED_METHODS:
        raise ValueError(
            f"unknown nonbonded_method '{method_name}'; expected one of {sorted(NONBONDED_METHODS)}"
        )
    constraints_name = definition.get("constraints", "none")
    if constraints_name not in CONSTRAINTS:
        raise ValueError(f"unknown constraints '{constraints_name}'; expected one of {sorted(CONSTRAINTS)}")

    options: dict[str, Any] = {
        "nonbondedMethod": NONBONDED_METHODS[method_name],
        "constraints": CONSTRAINTS[constraints_name],
        "rigidWater": bool(definition.get("rigid_water", False)),
    }
    if "nonbonded_cutoff" in definition:
        options["nonbondedCutoff"] = float(definition["nonbonded_cutoff"]) * unit.nanometer

    pdb = app.PDBFile(str(structure))
    forcefield = app.ForceField(*forcefield_files)
    system = forcefield.createSystem(pdb.topology, **options)
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return system, mdtraj.Topology.from_openmm(pdb.topology), positions
