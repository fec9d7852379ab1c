"""Ice XI of rigid TIP4P/Ew water: our own lattice generator, the "ice" system type, the MD/MBAR reference."""

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import boltzflow as bf
from boltzflow.flows.rigid import RigidBodyCoordinates
from boltzflow.reference_data import builtin_data_dir, reference_estimates
from boltzflow.systems import ice

torch.set_num_threads(1)

CHARGES = {"H": 0.52422, "M": -1.04844}  # tip4pew.xml


@pytest.fixture(scope="module")
def system16():
    return bf.load_system("ice_xi_tip4p")


@pytest.fixture(scope="module")
def md_small():
    folder = builtin_data_dir() / "ice_xi_tip4p"
    path = folder / "md_250K_small.npz"  # tracked in git (data/make_ice_reference.py makes it)
    assert path.is_file(), f"{path} is missing: run data/make_ice_reference.py"
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def direct_energy(openmm_system, sites, platform="Reference"):
    """OpenMM's energy (kJ/mol) with OpenMM placing the virtual sites."""
    context = openmm.Context(openmm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    energies = []
    for x in np.asarray(sites, dtype=np.float64).reshape(len(sites), -1, 3):
        context.setPositions(x)
        context.computeVirtualSites()
        energies.append(context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return np.array(energies)


def test_water_model_is_read_from_tip4pew_xml():
    model = ice.water_model()
    assert model.oh == pytest.approx(0.09572) and np.degrees(model.angle) == pytest.approx(104.52, abs=1e-6)
    assert model.m_weights == pytest.approx((0.786646558, 0.106676721, 0.106676721))
    body = model.body_sites()
    assert np.linalg.norm(body[3]) == pytest.approx(0.0125, abs=1e-5)  # TIP4P/Ew O–M distance


def test_ice_rules_and_hydrogens_along_bonds():
    mask = ice.ice_xi_ordering()
    assert (ice.donors_per_site(ice._all_masks()[mask]) == 2).all()
    sites, box = ice.ice_xi_lattice((2, 1, 1))
    oxygens = sites[:, 0]
    acceptors = np.zeros(len(sites), dtype=int)
    for i, water in enumerate(sites):
        for h in water[1:3]:
            d = oxygens - water[0]
            d -= box * np.round(d / box)
            r = np.linalg.norm(d, axis=1)
            r[i] = np.inf
            neighbours = np.flatnonzero(np.abs(r - ice.R_OO) < 1e-9)
            assert len(neighbours) == 4
            oh = (h - water[0]) / np.linalg.norm(h - water[0])
            cosines = d[neighbours] @ oh / ice.R_OO
            # every O–H lies along an O–O bond: off by half the difference to the tetrahedral angle
            half_gap = (np.degrees(np.arccos(-1 / 3)) - 104.52) / 2
            assert np.degrees(np.arccos(cosines.max())) == pytest.approx(half_gap, abs=1e-6)
            acceptors[neighbours[np.argmax(cosines)]] += 1
    assert (acceptors == 2).all()


def test_ordering_is_ferroelectric_along_c_and_cmc21():
    assert ice.ice_xi_candidates() == [13740, 22122, 25542]
    mask = ice.ice_xi_ordering()
    assert mask == ice.ICE_XI_MASK == 25542
    assert all(ice.is_invariant(mask, op) for op in ice.SYMMETRY_OPERATIONS)  # centring, mirror, glide, screw
    assert ice.is_centring_invariant(mask)
    assert not ice.is_invariant(13740, "mirror_a") and ice.is_centring_invariant(13740)
    dipole = ice.net_dipole(mask)
    assert np.abs(dipole[:2]).max() < 1e-12 and dipole[2] == pytest.approx(8 * 2 / 3)
    # the physical dipole of the placed charges: along +c only
    sites, _ = ice.ice_xi_lattice((1, 1, 1))
    mu = CHARGES["H"] * (sites[:, 1] + sites[:, 2]).sum(0) + CHARGES["M"] * sites[:, 3].sum(0)
    assert np.abs(mu[:2]).max() < 1e-10 and mu[2] > 0.05


@pytest.mark.parametrize("name, n, box, replicate", [
    ("ice_xi_tip4p", 16, (0.90141, 0.78065, 0.73600), (2, 1, 1)),
    ("ice_xi_tip4p_128", 128, (1.80282, 1.56129, 1.47200), (4, 2, 2)),
])
def test_box_molecules_cutoff_and_stored_lattice(name, n, box, replicate):
    system = bf.load_system(name)
    spec = system.rigid_bodies
    assert spec.n_molecules == n and system.dim == n * 12 and system.topology.n_residues == n
    assert spec.box == pytest.approx(box, abs=1e-5)
    nonbonded = next(f for f in system.openmm_system.getForces() if isinstance(f, openmm.NonbondedForce))
    cutoff = nonbonded.getCutoffDistance().value_in_unit(unit.nanometer)
    assert cutoff == pytest.approx(min(1.0, 0.49 * min(box)), abs=1e-4)
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.PME and nonbonded.getUseDispersionCorrection()
    assert nonbonded.getSwitchingDistance().value_in_unit(unit.nanometer) == pytest.approx(0.9 * cutoff)
    assert nonbonded.getEwaldErrorTolerance() == 1e-4
    assert system.openmm_system.getNumConstraints() == 3 * n
    assert all(system.openmm_system.isVirtualSite(4 * i + 3) for i in range(n))
    # the stored minimised lattice: near the ideal one, exactly rigid
    ideal, _ = ice.ice_xi_lattice(replicate)
    x0 = system.x0.numpy().reshape(n, 4, 3)
    assert np.abs(x0 - ideal).max() < 0.03
    assert np.abs(ice.rigidify(x0) - x0).max() < 1e-12


def test_energy_equals_direct_openmm_and_virtual_site_placement(system16):
    rng = np.random.default_rng(1)
    coords = RigidBodyCoordinates(system16.rigid_bodies.reference, system16.rigid_bodies.virtual)
    positions, q, _ = coords.from_atoms(system16.x0.reshape(1, 16, 4, 3))
    positions = positions + 0.005 * torch.as_tensor(rng.normal(size=(4, 16, 3)))
    q = q + 0.03 * torch.as_tensor(rng.normal(size=(4, 16, 4)))
    sites = coords.to_atoms(positions, q / q.norm(dim=-1, keepdim=True)).reshape(4, -1).numpy()
    kT = system16.energy.kT
    u = system16.energy.evaluate(sites, need_gradient=False).energy
    assert np.isfinite(u).all()
    # the System's energy (CPU platform) equals OpenMM's own evaluation on the same platform
    direct = direct_energy(system16.openmm_system, sites, system16.energy.platform_name)
    np.testing.assert_allclose(u * kT, direct, rtol=0, atol=1e-6 * np.abs(direct).max())
    # the rigid-geometry M equals OpenMM's virtual-site placement: same energy with M given or placed
    context = openmm.Context(system16.openmm_system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for x in sites.reshape(4, -1, 3):
        context.setPositions(x)
        given = context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        context.computeVirtualSites()
        placed = context.getState(energy=True, positions=True)
        assert np.abs(placed.getPositions(asNumpy=True).value_in_unit(unit.nanometer) - x).max() < 1e-12
        assert placed.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) == pytest.approx(given, abs=1e-9)
    # and the System does not rely on the input M: a garbage M gives the same energy
    garbage = sites.reshape(4, 16, 4, 3).copy()
    garbage[:, :, 3] += 0.05
    assert system16.energy.evaluate(garbage.reshape(4, -1), need_gradient=False).energy == pytest.approx(u, abs=1e-9)
    # CPU (single-precision PME) vs Reference: same energy within 0.01 kJ/mol per molecule
    np.testing.assert_allclose(u * kT, direct_energy(system16.openmm_system, sites), atol=0.01 * 16)


def test_rigid_body_spec_and_minimised_lattice_energy(system16):
    spec = system16.rigid_bodies
    masses = ice.water_model().site_masses()
    assert spec.virtual == (False, False, False, True)
    assert np.abs(masses @ spec.reference).max() < 1e-12  # reference around the centre of mass
    x0 = system16.x0.numpy().reshape(16, 4, 3)
    np.testing.assert_allclose(spec.centres, masses @ x0 / masses.sum(), atol=1e-12)
    coords = RigidBodyCoordinates(spec.reference, spec.virtual)
    positions, q, residual = coords.from_atoms(torch.as_tensor(x0))
    assert residual.max() < 1e-7 and torch.allclose(positions, torch.as_tensor(spec.centres), atol=1e-10)
    # minimised lattice: −61.71 kJ/mol per molecule (short 0.36 nm cutoff + dispersion correction; TIP4P/Ew
    # ice Ih lattice energies are around −60 to −62 kJ/mol)
    per_molecule = system16.observables["energy_per_molecule"](x0.reshape(1, -1))[0]
    assert per_molecule == pytest.approx(-61.71, abs=0.02)
    assert -65.0 < per_molecule < -57.0


def test_md_samples_are_whole_rigid_and_round_trip(system16, md_small):
    sites = md_small["sites"].astype(np.float64).reshape(-1, 16, 4, 3)
    assert md_small["sites"].dtype == np.float32 and len(sites) >= 1000
    model = ice.water_model()
    oh1 = np.linalg.norm(sites[:, :, 1] - sites[:, :, 0], axis=-1)
    oh2 = np.linalg.norm(sites[:, :, 2] - sites[:, :, 0], axis=-1)
    hh = np.linalg.norm(sites[:, :, 1] - sites[:, :, 2], axis=-1)
    assert np.abs(oh1 - model.oh).max() < 1e-5 and np.abs(oh2 - model.oh).max() < 1e-5
    assert np.abs(hh - 2 * model.oh * np.sin(model.angle / 2)).max() < 1e-5
    w = model.m_weights
    m = w[0] * sites[:, :, 0] + w[1] * sites[:, :, 1] + w[2] * sites[:, :, 2]
    assert np.abs(m - sites[:, :, 3]).max() < 1e-5
    # whole molecules: O in the box, H and M next to it (never wrapped apart)
    box = system16.rigid_bodies.box
    assert (sites[:, :, 0] >= -1e-5).all() and (sites[:, :, 0] <= box + 1e-5).all()
    # rigid coordinates round trip on MD frames
    coords = RigidBodyCoordinates(system16.rigid_bodies.reference, system16.rigid_bodies.virtual)
    x = torch.as_tensor(sites[::50])
    positions, q, residual = coords.from_atoms(x)
    back = coords.to_atoms(positions, q)
    assert residual.max() < 1e-5 and (back - x).abs().max() < 1e-5
    p2, q2, _ = coords.from_atoms(back)
    assert torch.allclose(p2, positions, atol=1e-12) and torch.allclose(q2, q, atol=1e-10)
    # stored energies are the system's energies of the frames (float32 rounding of the positions)
    frames = sites[:5].reshape(5, -1)
    u = system16.energy.evaluate(frames, need_gradient=False).energy * system16.energy.kT
    np.testing.assert_allclose(u, md_small["energies"][:5], atol=0.05)
    assert 0 <= md_small["decorrelated"].min() and md_small["g"] >= 1.0


def test_reference_entry():
    entry = reference_estimates("ice_xi_tip4p")
    assert entry is not None, "no ice_xi_tip4p entry in data/reference.json: run data/make_ice_reference.py"
    mbar = entry["mbar"]
    assert mbar["temperatures"][0] == 250.0 and mbar["temperatures"][-1] == pytest.approx(100.0)
    assert len(mbar["n_samples"]) == len(mbar["temperatures"])
    assert -720.0 < mbar["delta_f_250_to_100"] < -620.0 and 0 < mbar["error"] < 0.1
    assert mbar["cutoff_nm"] == pytest.approx(0.36064, abs=1e-5) and mbar["min_neighbour_overlap"] > 0.03
