"""Build an OpenMM system from a system folder's ``system.toml`` definition.

A molecular system folder holds a PDB structure and a ``system.toml`` naming the force field::

    structure = "alanine_dipeptide.pdb"
    forcefield = ["amber99sbildn.xml", "amber99_obc.xml"]
    nonbonded_method = "NoCutoff"   # default
    constraints = "none"            # default; flows need every atom free
    rigid_water = false             # default
    implicit_solvent = "obc2"       # optional: OBC2 as a native GBSAOBCForce (see below)

``implicit_solvent = "obc2"`` adds OBC2 generalized Born solvation (Amber igb=5: mbondii radii and
HCT scale factors from OpenMM's ``GBSAOBC2Force.getStandardParameters``, solvent dielectric 78.5,
ACE surface term) as OpenMM's built-in ``GBSAOBCForce``. The energy equals that of the force field
file ``implicit/obc2.xml``, which implements the same model as a ``CustomGBForce`` several times
slower; use it with a force field list that has no implicit solvent file.

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


def add_obc2(system: openmm.System, topology: app.Topology) -> None:
    """Add OBC2 implicit solvent to ``system`` as a ``GBSAOBCForce`` (no cutoff).

    Charges come from the system's NonbondedForce; radii and scale factors are the ones
    ``implicit/obc2.xml`` uses (``GBSAOBC2Force.getStandardParameters``).

    Raises
    ------
    ValueError
        If the system already has a generalized Born force or not exactly one NonbondedForce.
    """
    from openmm.app.internal.customgbforces import GBSAOBC2Force

    forces = system.getForces()
    if any(isinstance(f, (openmm.GBSAOBCForce, openmm.CustomGBForce)) for f in forces):
        raise ValueError("the force field already has implicit solvent; drop it or drop implicit_solvent")
    nonbonded = [f for f in forces if isinstance(f, openmm.NonbondedForce)]
    if len(nonbonded) != 1:
        raise ValueError(f"implicit solvent needs exactly one NonbondedForce, the system has {len(nonbonded)}")
    gb = openmm.GBSAOBCForce()
    gb.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    gb.setSolventDielectric(78.5)
    gb.setSoluteDielectric(1.0)
    for i, (radius, scale) in enumerate(GBSAOBC2Force.getStandardParameters(topology)):
        charge = nonbonded[0].getParticleParameters(i)[0]
        gb.addParticle(charge, radius, scale)
    system.addForce(gb)


IMPLICIT_SOLVENTS: dict[str, Any] = {"obc2": add_obc2}
"""``implicit_solvent`` values accepted in ``system.toml``."""


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
        ``rigid_water`` (``false``) and ``implicit_solvent`` (none; ``"obc2"``).

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
        For an unknown ``nonbonded_method``, ``constraints`` or ``implicit_solvent`` value, an
        empty force field list, or ``implicit_solvent`` with a cutoff method or with a force field
        that already has implicit solvent.
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

    implicit = definition.get("implicit_solvent")
    if implicit is not None and implicit not in IMPLICIT_SOLVENTS:
        raise ValueError(f"unknown implicit_solvent '{implicit}'; expected one of {sorted(IMPLICIT_SOLVENTS)}")
    if implicit is not None and method_name != "NoCutoff":
        raise ValueError(f"implicit_solvent '{implicit}' is implemented for nonbonded_method 'NoCutoff' only")

    pdb = app.PDBFile(str(structure))
    forcefield = app.ForceField(*forcefield_files)
    system = forcefield.createSystem(pdb.topology, **options)
    if implicit is not None:
        IMPLICIT_SOLVENTS[implicit](system, pdb.topology)
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return system, mdtraj.Topology.from_openmm(pdb.topology), positions
