"""Build chignolin (GYDPETGTWG, ACE/NME caps) from ideal geometry and minimise it: ``chignolin.pdb``.

No structure is downloaded. :mod:`boltzflow.systems.peptide_builder` grows the heavy atoms from
Engh & Huber bond lengths and angles with the backbone dihedrals of the chignolin β-hairpin (model
1 of the NMR structure PDB 1UAO, Honda et al. 2004, rounded to whole degrees; strands G1-D3 and
T8-G10, turn D3-P4-E5-T6-G7) and its side-chain χ angles, except:

* φ(G1) and ψ(G10): undefined in 1UAO (free termini); here the builder's β-strand defaults
  (−120°, 130°) next to the caps;
* P4: the builder's Cγ-endo ring (χ1 = 30°, χ2 = −32°, closes to 0.147 nm); the NMR model's
  flattened ring (22°, −22°) would leave the CD–N bond at 0.135 nm.

OpenMM's ``Modeller.addHydrogens`` adds hydrogens at pH 7 (D3 and E5 charged, net charge −2) and
the caps' methyl hydrogens. The structure is then minimised with the system's own energy (Amber
ff14SB, OBC2 implicit solvent, no cutoff, no constraints) and written with standard PDB names.

Run from anywhere: ``python systems/chignolin_implicit/make_structure.py``. It prints the atom
count and the atom indices that ``system.toml`` declares as observables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from boltzflow.systems.openmm_builder import add_obc2
from boltzflow.systems.peptide_builder import add_hydrogens, build_peptide, write_pdb

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "chignolin.pdb"

SEQUENCE = "GYDPETGTWG"
PHI = [-120, -85, -72, -76, -60, -107, 91, -161, -69, -50]  # degrees, 1UAO model 1 (G1: builder default)
PSI = [-177, 98, 115, -13, -39, -23, 34, 165, 107, 130]  # (G10: builder default)
CHI = [(), (-180, 87), (-175, 57), None, (-156, -107, 28), (75,), (), (16,), (-36, 95), ()]  # P4: default
FORCEFIELD = ["amber14-all.xml"]  # + OBC2 through add_obc2, as system.toml's implicit_solvent = "obc2"


def build() -> tuple[app.Topology, np.ndarray]:
    """All-atom chignolin (hydrogens added), unminimised: topology and positions (nm)."""
    peptide = build_peptide(SEQUENCE, phi=PHI, psi=PSI, chi=CHI, termini="capped")
    return add_hydrogens(peptide, [*FORCEFIELD, "implicit/obc2.xml"])


def minimise(topology: app.Topology, positions: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Minimise with ff14SB + OBC2; return positions (nm) and energies before/after (kJ/mol)."""
    system = app.ForceField(*FORCEFIELD).createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    add_obc2(system, topology)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    before = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
    state = context.getState(getEnergy=True, getPositions=True)
    after = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), before, after


def main() -> None:
    topology, positions = build()
    positions, before, after = minimise(topology, positions)
    write_pdb(OUTPUT, topology, positions)
    print(f"{OUTPUT}: {topology.getNumAtoms()} atoms (dim {3 * topology.getNumAtoms()}); "
          f"ff14SB/OBC2 energy built {before:.1f} kJ/mol, minimised {after:.1f} kJ/mol")
    ca = {r.index: next(a.index for a in r.atoms() if a.name == "CA") for r in topology.residues() if r.name not in
          ("ACE", "NME")}
    print("CA atom indices by residue (1-based residue number after ACE):",
          {f"{r.name}{r.index}": ca[r.index] for r in topology.residues() if r.index in ca})
    d = {k: float(np.linalg.norm(positions[ca[i]] - positions[ca[j]])) for k, (i, j) in
         {"CA(Y2)-CA(W9)": (2, 9), "CA(G1)-CA(G10)": (1, 10), "CA(D3)-CA(T8)": (3, 8)}.items()}
    print("distances (nm):", {k: round(v, 3) for k, v in d.items()})


if __name__ == "__main__":
    main()
