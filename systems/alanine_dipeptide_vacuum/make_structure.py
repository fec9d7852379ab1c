"""Build the capped alanine dipeptide (ACE-ALA-NME, 22 atoms) from internal coordinates.

The molecule is grown atom by atom from standard (Amber ff14SB equilibrium) bond lengths and
angles, trans peptide bonds, staggered methyl groups and an L-alanine C-alpha, with the backbone
in the C7eq basin (phi = -80 deg, psi = 75 deg). The structure is then energy-minimised with
Amber ff99SB-ILDN in vacuum (no cutoff, no constraints) and written, with PDB atom names OpenMM maps
onto the Amber templates, to

* ``systems/alanine_dipeptide_vacuum/alanine_dipeptide.pdb``
* ``systems/alanine_dipeptide_implicit/alanine_dipeptide.pdb``

Run from anywhere: ``python systems/alanine_dipeptide_vacuum/make_structure.py``.
Lengths are in nm, angles in degrees, energies in kJ/mol.
"""

from __future__ import annotations

from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
OUTPUTS = [HERE / "alanine_dipeptide.pdb", HERE.parent / "alanine_dipeptide_implicit" / "alanine_dipeptide.pdb"]

PHI, PSI = -80.0, 75.0  # target backbone dihedrals (deg), C7eq basin

# Residue, atom name and element in output (PDB) order; phi = atoms 4-6-8-14, psi = 6-8-14-16.
ATOMS = [
    ("ACE", "H1", "H"), ("ACE", "CH3", "C"), ("ACE", "H2", "H"), ("ACE", "H3", "H"),
    ("ACE", "C", "C"), ("ACE", "O", "O"),
    ("ALA", "N", "N"), ("ALA", "H", "H"), ("ALA", "CA", "C"), ("ALA", "HA", "H"),
    ("ALA", "CB", "C"), ("ALA", "HB1", "H"), ("ALA", "HB2", "H"), ("ALA", "HB3", "H"),
    ("ALA", "C", "C"), ("ALA", "O", "O"),
    ("NME", "N", "N"), ("NME", "H", "H"), ("NME", "C", "C"),
    ("NME", "H1", "H"), ("NME", "H2", "H"), ("NME", "H3", "H"),
]  # fmt: skip

# Amber ff14SB equilibrium values: bonds (nm) and angles (deg).
B_CC, B_CO, B_CN, B_NH, B_NCT, B_CTC, B_CTCT, B_CH = 0.1522, 0.1229, 0.1335, 0.1010, 0.1449, 0.1522, 0.1526, 0.1090
A_CTCO, A_CTCN, A_CNCT, A_CNH, A_NCTC, A_NCTCT, A_TET = 120.4, 116.6, 121.9, 120.0, 110.1, 109.7, 109.5


def place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of atom d bonded to c with |cd| = bond, angle b-c-d and dihedral a-b-c-d (NeRF)."""
    theta, phi = np.radians(angle), np.radians(dihedral)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d_local = bond * np.array([-np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])
    return c + d_local[0] * bc + d_local[1] * m + d_local[2] * n


def build_positions(phi: float = PHI, psi: float = PSI) -> np.ndarray:
    """``(22, 3)`` positions (nm) of ACE-ALA-NME grown from internal coordinates."""
    p: dict[tuple[str, str], np.ndarray] = {}
    p["ACE", "CH3"] = np.zeros(3)
    p["ACE", "C"] = np.array([B_CC, 0.0, 0.0])
    t = np.radians(180.0 - A_CTCN)
    p["ALA", "N"] = p["ACE", "C"] + B_CN * np.array([np.cos(t), np.sin(t), 0.0])
    ch3, c0, n = p["ACE", "CH3"], p["ACE", "C"], p["ALA", "N"]
    p["ACE", "O"] = place(n, ch3, c0, B_CO, A_CTCO, 180.0)
    for name, dihedral in (("H1", 180.0), ("H2", 60.0), ("H3", -60.0)):
        p["ACE", name] = place(n, c0, ch3, B_CH, A_TET, dihedral)
    # trans peptide bond: CH3-C-N-CA = 180 deg, amide H anti to O
    p["ALA", "CA"] = place(ch3, c0, n, B_NCT, A_CNCT, 180.0)
    p["ALA", "H"] = place(ch3, c0, n, B_NH, A_CNH, 0.0)
    ca = p["ALA", "CA"]
    p["ALA", "C"] = place(c0, n, ca, B_CTC, A_NCTC, phi)
    c1 = p["ALA", "C"]
    # L-alanine: CB and HA on the two remaining tetrahedral sites, fixed relative to C
    p["ALA", "CB"] = place(c1, n, ca, B_CTCT, A_NCTCT, -122.7)
    p["ALA", "HA"] = place(c1, n, ca, B_CH, A_TET, 118.2)
    cb = p["ALA", "CB"]
    for name, dihedral in (("HB1", 180.0), ("HB2", 60.0), ("HB3", -60.0)):
        p["ALA", name] = place(n, ca, cb, B_CH, A_TET, dihedral)
    p["NME", "N"] = place(n, ca, c1, B_CN, A_CTCN, psi)
    p["ALA", "O"] = place(n, ca, c1, B_CO, A_CTCO, psi + 180.0)
    n2 = p["NME", "N"]
    p["NME", "C"] = place(ca, c1, n2, B_NCT, A_CNCT, 180.0)
    p["NME", "H"] = place(ca, c1, n2, B_NH, A_CNH, 0.0)
    c2 = p["NME", "C"]
    for name, dihedral in (("H1", 180.0), ("H2", 60.0), ("H3", -60.0)):
        p["NME", name] = place(c1, n2, c2, B_CH, A_TET, dihedral)
    return np.array([p[res, name] for res, name, _ in ATOMS])


def build_topology() -> app.Topology:
    """OpenMM topology of ACE-ALA-NME in ``ATOMS`` order, with its standard bonds."""
    topology = app.Topology()
    chain = topology.addChain("A")
    residues: dict[str, app.Residue] = {}
    for res_name, atom_name, element in ATOMS:
        if res_name not in residues:
            residues[res_name] = topology.addResidue(res_name, chain)
        topology.addAtom(atom_name, app.Element.getBySymbol(element), residues[res_name])
    topology.createStandardBonds()
    return topology


def minimise(topology: app.Topology, positions: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Minimise with Amber ff14SB in vacuum; return positions (nm) and energies before/after (kJ/mol)."""
    system = app.ForceField("amber99sbildn.xml").createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    before = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    state = context.getState(getEnergy=True, getPositions=True)
    after = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), before, after


def check(path: Path) -> None:
    """Re-read a written PDB and check bonds, chirality and backbone dihedrals; print a summary."""
    pdb = app.PDBFile(str(path))
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    assert system.getNumParticles() == 22, system.getNumParticles()
    traj = mdtraj.load(str(path))
    bonds = np.array([[a.index, b.index] for a, b in traj.topology.bonds])
    lengths = mdtraj.compute_distances(traj, bonds)[0]
    assert len(bonds) == 21 and np.all((lengths > 0.095) & (lengths < 0.156)), lengths
    x = traj.xyz[0]
    n, ca, c, cb = x[6], x[8], x[14], x[10]
    assert np.dot(n - ca, np.cross(c - ca, cb - ca)) > 0, "C-alpha is not L"
    phi = np.degrees(mdtraj.compute_dihedrals(traj, [[4, 6, 8, 14]])[0, 0])
    psi = np.degrees(mdtraj.compute_dihedrals(traj, [[6, 8, 14, 16]])[0, 0])
    omegas = np.degrees(mdtraj.compute_dihedrals(traj, [[1, 4, 6, 8], [8, 14, 16, 18]])[0])
    assert phi < -60 and phi > -100 and psi > 50 and psi < 100, (phi, psi)
    assert np.all(np.abs(omegas) > 165), omegas
    print(
        f"{path}: bonds {lengths.min():.4f}-{lengths.max():.4f} nm, phi {phi:.1f} deg, psi {psi:.1f} deg, "
        f"omega {omegas[0]:.1f}/{omegas[1]:.1f} deg"
    )


def main() -> None:
    topology = build_topology()
    positions, before, after = minimise(topology, build_positions())
    print(f"amber99sbildn vacuum energy: built {before:.2f} kJ/mol, minimised {after:.2f} kJ/mol")
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            app.PDBFile.writeFile(topology, positions * unit.nanometer, fh, keepIds=True)
        check(path)


if __name__ == "__main__":
    main()
