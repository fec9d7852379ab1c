"""Peptide builder (NeRF geometry, templates, errors) and the chignolin_implicit system (energy vs OpenMM)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tomllib
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

import boltzflow as bf
from boltzflow.systems.observables import Angle, Dihedral, Distance
from boltzflow.systems.openmm_builder import build_openmm_system
from boltzflow.systems.peptide_builder import N_CHI, THREE_LETTER, add_hydrogens, build_peptide

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "systems" / "chignolin_implicit"
ALL20 = "ACDEFGHIKLMNPQRSTVWY"
KT_300 = (unit.MOLAR_GAS_CONSTANT_R * 300.0 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measure(positions: np.ndarray, observable) -> float:
    return float(observable(positions.reshape(1, -1))[0])


def _wrapped_difference(a: float, b: float) -> float:
    return (a - b + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def chignolin():
    return bf.load_system("chignolin_implicit", platform="Reference")


# ---------------------------------------------------------------------- builder geometry
@pytest.mark.parametrize("termini", ["capped", "charged"])
def test_built_chain_has_exactly_the_requested_internal_coordinates(termini):
    rng = np.random.default_rng(3)
    n = len(ALL20)
    phi, psi = rng.uniform(-180, 180, n), rng.uniform(-180, 180, n)
    omega = 180.0 + rng.uniform(-15, 15, n)
    chi = [tuple(rng.uniform(-180, 180, N_CHI[THREE_LETTER[s]])) for s in ALL20]
    peptide = build_peptide(ALL20, phi=phi, psi=psi, omega=omega, chi=chi, termini=termini)
    x = peptide.positions
    assert len(peptide.zmatrix) == len(x) - 3  # every atom but the first three
    for row in peptide.zmatrix:  # every placed atom: bond, angle and dihedral as requested
        assert _measure(x, Distance(row.c, row.atom)) == pytest.approx(row.bond, abs=1e-12)
        assert np.degrees(_measure(x, Angle(row.b, row.c, row.atom))) == pytest.approx(row.angle, abs=1e-8)
        measured = np.degrees(_measure(x, Dihedral(row.a, row.b, row.c, row.atom)))
        assert _wrapped_difference(measured, row.dihedral) == pytest.approx(0.0, abs=1e-8)

    # the backbone dihedrals, looked up by atom names (caps count as residues)
    off = 1 if termini == "capped" else 0
    idx = peptide.atom_index
    for i, name in enumerate(ALL20):
        r = i + off
        if i > 0 or termini == "capped":
            prev_c = idx(r - 1, "C")
            got = np.degrees(_measure(x, Dihedral(prev_c, idx(r, "N"), idx(r, "CA"), idx(r, "C"))))
            assert _wrapped_difference(got, phi[i]) == pytest.approx(0.0, abs=1e-8), ("phi", i)
        nxt = idx(r + 1, "N") if i < n - 1 or termini == "capped" else idx(r, "OXT")
        got = np.degrees(_measure(x, Dihedral(idx(r, "N"), idx(r, "CA"), idx(r, "C"), nxt)))
        assert _wrapped_difference(got, psi[i]) == pytest.approx(0.0, abs=1e-8), ("psi", i)
        if i < n - 1 or termini == "capped":
            after = idx(r + 1, "CA") if i < n - 1 else idx(r + 1, "C")
            got = np.degrees(_measure(x, Dihedral(idx(r, "CA"), idx(r, "C"), nxt, after)))
            assert _wrapped_difference(got, omega[i]) == pytest.approx(0.0, abs=1e-8), ("omega", i)
        for k, value in enumerate(chi[i]):  # chi1 = N-CA-CB-XG, the first placed side-chain atom
            if k == 0:
                gamma = {"SER": "OG", "CYS": "SG", "THR": "OG1", "VAL": "CG1", "ILE": "CG1"}.get(THREE_LETTER[name], "CG")
                got = np.degrees(_measure(x, Dihedral(idx(r, "N"), idx(r, "CA"), idx(r, "CB"), idx(r, gamma))))
                assert _wrapped_difference(got, value) == pytest.approx(0.0, abs=1e-8), ("chi1", name)


def test_rings_close_bonds_are_standard_and_chirality_is_natural():
    peptide = build_peptide(ALL20)
    x = peptide.positions
    placed = {frozenset((r.atom, r.c)) for r in peptide.zmatrix}
    closures = []
    for a, b in peptide.topology.bonds():  # OpenMM's standard bonds; each placed atom sits on one
        d = np.linalg.norm(x[a.index] - x[b.index])
        assert 0.12 < d < 0.185, (a.residue.name, a.name, b.name, d)
        if frozenset((a.index, b.index)) not in placed:
            closures.append((a.residue.name, a.name, b.name, d))
    assert all(frozenset((r.atom, r.c)) in {frozenset((a.index, b.index)) for a, b in peptide.topology.bonds()}
               for r in peptide.zmatrix)
    # rings (Phe, Tyr, His, Trp x2, Pro) close at bond length; the rest are the ACE atoms fixed by hand
    ring_closures = [c for c in closures if c[0] in ("PHE", "TYR", "HIS", "TRP", "PRO")]
    assert len(ring_closures) == 6
    for res, a, b, d in ring_closures:
        assert d == pytest.approx(0.1474 if res == "PRO" else (0.136 if res == "HIS" else 0.139), abs=2e-4), (res, a, b)

    def signed_volume(p0, p1, p2, p3):
        return float(np.dot(p1 - p0, np.cross(p2 - p0, p3 - p0)))

    # L-amino acids and L-threonine's CB (2S,3R), compared with chignolin's NMR model (PDB 1UAO,
    # model 1, Angstrom): THR6 N, CA, C, CB, OG1, CG2
    n, ca, c, cb, og1, cg2 = (np.array(v) for v in [
        (3.881, 1.383, 1.261), (4.684, 0.239, 0.748), (4.218, -0.101, -0.669), (4.486, -0.974, 1.661),
        (3.204, -1.540, 1.423), (4.589, -0.535, 3.123)])
    ca_sign, cb_sign = np.sign(signed_volume(ca, n, c, cb)), np.sign(signed_volume(cb, ca, og1, cg2))
    for i, name in enumerate(ALL20):
        r = i + 1
        if name == "G":
            continue
        p = {a: x[peptide.atom_index(r, a)] for a in ("N", "CA", "C", "CB")}
        assert np.sign(signed_volume(p["CA"], p["N"], p["C"], p["CB"])) == ca_sign, name
        if name in "TI":
            branch = ("OG1", "CG2") if name == "T" else ("CG1", "CG2")
            q = [x[peptide.atom_index(r, a)] for a in branch]
            assert np.sign(signed_volume(p["CB"], p["CA"], *q)) == cb_sign, name


def test_hydrogens_and_termini_match_amber14_templates_and_atom_counts():
    forcefield = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    counts = {}
    for sequence, termini in [(ALL20, "capped"), (ALL20, "charged"), ("YYDPETGTWY", "capped")]:
        topology, positions = add_hydrogens(build_peptide(sequence, termini=termini), forcefield)
        assert positions.shape == (topology.getNumAtoms(), 3) and np.all(np.isfinite(positions))
        counts[sequence, termini] = topology.getNumAtoms()
    assert counts["YYDPETGTWY", "capped"] == 175  # CLN025 with caps: the flow-perturbation paper's 175 atoms
    assert counts[ALL20, "capped"] - counts[ALL20, "charged"] == 9  # ACE + NME (12 atoms) - 2 NH3+ H - OXT


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"unknown residue letter 'X' at position 5 of 'GYDPXTGTWG'"):
        build_peptide("GYDPXTGTWG")
    with pytest.raises(ValueError, match="unknown residue letter 'g' at position 1"):
        build_peptide("gydp")
    with pytest.raises(ValueError, match="non-empty"):
        build_peptide("")
    with pytest.raises(ValueError, match=r"phi must .* one value per residue \(3\)"):
        build_peptide("GAG", phi=[-60.0, -60.0])
    with pytest.raises(ValueError, match="non-finite"):
        build_peptide("GAG", psi=[0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match=r"residue 2 \(TYR\) has 2 chi angles, got 1"):
        build_peptide("GYG", chi=[(), (60.0,), ()])
    with pytest.raises(ValueError, match="termini"):
        build_peptide("GAG", termini="amidated")


# ---------------------------------------------------------------------- the system
def test_system_loads_with_its_structure_and_observables(chignolin):
    system = chignolin
    assert system.dim == 441 and system.topology.n_atoms == 147
    assert system.openmm_system.getNumConstraints() == 0
    assert "GBSAOBCForce" in {type(f).__name__ for f in system.openmm_system.getForces()}
    residues = [r.name for r in system.topology.residues]
    assert residues == ["ACE", "GLY", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "GLY", "NME"]
    definition = tomllib.loads((FOLDER / "system.toml").read_text())
    names = [(a.residue.name, a.residue.index, a.name) for a in system.topology.atoms]
    assert [names[i] for i in definition["observables"]["d_y2w9"]["distance"]] == [("TYR", 2, "CA"), ("TRP", 9, "CA")]
    assert [names[i] for i in definition["observables"]["d_ends"]["distance"]] == [("GLY", 1, "CA"), ("GLY", 10, "CA")]
    # the start is the minimised hairpin: folded, compact, near a minimum
    x0 = system.x0.numpy()[None]
    assert system.states["folded"](x0)[0] and system.states["B"](x0)[0] and not system.states["A"](x0)[0]
    assert system.observables["d_y2w9"](x0)[0] < 0.45 and system.observables["rg"](x0)[0] < 0.7
    result = system.energy.evaluate(x0)
    assert result.energy[0] * KT_300 < -1000.0  # kJ/mol
    assert np.abs(result.gradient).max() * KT_300 < 100.0  # PDB rounding (1e-4 nm) only


def test_structure_file_is_the_built_hairpin_minimised(chignolin):
    script = _import(FOLDER / "make_structure.py", "chignolin_make_structure")
    peptide = build_peptide(script.SEQUENCE, phi=script.PHI, psi=script.PSI, chi=script.CHI)
    heavy = [(a.residue.name, a.residue.index, a.name) for a in chignolin.topology.atoms if a.element.symbol != "H"]
    assert heavy == [(a.residue.name, a.residue.index, a.name) for a in peptide.topology.atoms()]
    # minimisation kept the fold built from 1UAO's dihedrals: C-alpha RMSD (mdtraj, superposed) < 0.1 nm
    ca_built = [a.index for a in peptide.topology.atoms() if a.name == "CA"]
    ca_system = [a.index for a in chignolin.topology.atoms if a.name == "CA"]
    built = mdtraj.Trajectory(peptide.positions[ca_built][None], chignolin.topology.subset(ca_system))
    minimised = mdtraj.Trajectory(chignolin.x0.numpy().reshape(-1, 3)[ca_system][None], built.topology)
    assert mdtraj.rmsd(minimised, built)[0] < 0.1


def test_energy_and_forces_match_openmm_with_implicit_obc2_xml(chignolin):
    """The system's GBSAOBCForce route against a Context built from amber14 + implicit/obc2.xml (CustomGBForce)."""
    pdb = app.PDBFile(str(FOLDER / "chignolin.pdb"))
    reference = app.ForceField("amber14-all.xml", "implicit/obc2.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(reference, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(0)
    x = chignolin.x0.numpy().reshape(1, -1, 3) + 0.01 * rng.standard_normal((3, 147, 3))
    result = chignolin.energy.evaluate(x.reshape(3, -1))
    for k, positions in enumerate(x):
        context.setPositions(positions)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        assert result.energy[k] == pytest.approx(energy / KT_300, rel=1e-7, abs=1e-6)
        np.testing.assert_allclose(result.gradient[k], -forces.reshape(-1) / KT_300, rtol=1e-6,
                                   atol=1e-6 * np.abs(forces).max() / KT_300)


def test_forces_match_finite_differences(chignolin):
    rng = np.random.default_rng(1)
    x = chignolin.x0.numpy() + 0.005 * rng.standard_normal(chignolin.dim)
    gradient = chignolin.energy.evaluate(x[None]).gradient[0]
    coordinates = rng.choice(chignolin.dim, size=6, replace=False)
    h = 1e-5  # nm
    shifted = np.repeat(x[None], 2 * len(coordinates), axis=0)
    for k, i in enumerate(coordinates):
        shifted[2 * k, i] += h
        shifted[2 * k + 1, i] -= h
    u = chignolin.energy.evaluate(shifted, need_gradient=False).energy
    fd = (u[0::2] - u[1::2]) / (2 * h)
    np.testing.assert_allclose(fd, gradient[coordinates], rtol=1e-5, atol=1e-4)


def test_implicit_solvent_option_errors(tmp_path):
    shutil.copy(FOLDER / "chignolin.pdb", tmp_path / "chignolin.pdb")
    base = {"structure": "chignolin.pdb", "forcefield": ["amber14-all.xml"]}
    with pytest.raises(ValueError, match="unknown implicit_solvent 'gbn9'"):
        build_openmm_system(tmp_path, {**base, "implicit_solvent": "gbn9"})
    with pytest.raises(ValueError, match="already has implicit solvent"):
        build_openmm_system(tmp_path, {**base, "forcefield": ["amber14-all.xml", "implicit/obc2.xml"],
                                       "implicit_solvent": "obc2"})
    with pytest.raises(ValueError, match="NoCutoff"):
        build_openmm_system(tmp_path, {**base, "implicit_solvent": "obc2", "nonbonded_method": "CutoffNonPeriodic"})


def test_md_script_heavy_hydrogens_keep_total_mass(chignolin):
    script = _import(ROOT / "data" / "make_chignolin_data.py", "make_chignolin_data")
    heavy = script.heavy_hydrogens(chignolin.openmm_system, chignolin.topology, 3.0)

    def masses(s):
        return np.array([s.getParticleMass(i).value_in_unit(unit.dalton) for i in range(s.getNumParticles())])

    before, after = masses(chignolin.openmm_system), masses(heavy)
    hydrogen = np.array([a.element.symbol == "H" for a in chignolin.topology.atoms])
    assert after.sum() == pytest.approx(before.sum(), rel=1e-12)
    assert np.all(after[hydrogen] == 3.0) and np.all(after > 0.5)
    assert np.array_equal(masses(chignolin.openmm_system), before)  # the system itself is unchanged


def test_shipped_md_reference_is_consistent(chignolin):
    """data/make_chignolin_data.py's outputs: the reference entry is reliable where it claims to be, and the
    shipped frames reproduce it (energies recomputed by OpenMM, folded fraction, ⟨u⟩ within errors)."""
    entry = json.loads((ROOT / "data" / "reference.json").read_text())["chignolin_implicit"]["md"]
    frames = bf.SampleSet.load(ROOT / "data" / "chignolin_implicit")
    assert entry["run"]["temperature"] == 300.0 and entry["n"] >= 1000 and len(frames) >= 500
    for key in ("folded", "d_y2w9"):
        assert entry["observables"][key]["reliable"] and entry["observables"][key]["error"] < 0.02
    assert entry["mean_energy"]["reliable"] and entry["mean_energy"]["error"] < 1.0
    u = chignolin.energy.evaluate(frames.x[::20], need_gradient=False).energy
    np.testing.assert_allclose(u, frames.energies[::20], atol=1e-3)
    folded = chignolin.states["folded"](frames.x).mean()
    assert abs(folded - entry["observables"]["folded"]["value"]) < 3 * entry["observables"]["folded"]["error"] + 0.01
    assert abs(frames.energies.mean() - entry["mean_energy"]["value"]) < 3 * entry["mean_energy"]["error"]
