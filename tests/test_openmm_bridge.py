"""OpenMM bridge and alanine dipeptide systems: values against a direct OpenMM loop, failures,
gradients, worker replacement and shutdown."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
import tomllib
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from boltzflow.energy.base import EnergyShapeError
from boltzflow.energy.openmm_bridge import OpenMMEnergy, available_platforms, n_cores, select_platform
from boltzflow.energy.units import R_KJ_PER_MOL_K
from boltzflow.systems.openmm_builder import build_openmm_system

SYSTEMS = Path(__file__).resolve().parents[1] / "systems"
KT_300 = (unit.MOLAR_GAS_CONSTANT_R * 300.0 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)


def load(name: str) -> tuple[openmm.System, mdtraj.Topology, np.ndarray, dict]:
    folder = SYSTEMS / name
    with open(folder / "system.toml", "rb") as f:
        definition = tomllib.load(f)
    return (*build_openmm_system(folder, definition), definition)


@pytest.fixture(scope="module")
def vacuum():
    return load("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def implicit():
    return load("alanine_dipeptide_implicit")


def perturbed(positions: np.ndarray, n: int, scale: float = 0.005, seed: int = 0) -> np.ndarray:
    """``(n, n_atoms, 3)`` configurations (nm): Gaussian displacements of the PDB structure."""
    rng = np.random.default_rng(seed)
    return positions[None] + scale * rng.standard_normal((n, *positions.shape))


def direct_loop(system: openmm.System, x: np.ndarray, platform: str = "Reference") -> tuple[np.ndarray, np.ndarray]:
    """Energies (kJ/mol) and forces (kJ/mol/nm) with a plain single-Context OpenMM loop."""
    platform_ = openmm.Platform.getPlatformByName(platform)
    context = openmm.Context(system, openmm.VerletIntegrator(1.0 * unit.femtosecond), platform_)
    energies, forces = [], []
    for positions in x:
        context.setPositions(positions * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces).reshape(len(x), -1)


def assert_matches_direct(result, energy_kj: np.ndarray, forces: np.ndarray, rtol: float = 1e-8) -> None:
    np.testing.assert_allclose(result.energy, energy_kj / KT_300, rtol=rtol, atol=rtol)
    scale = np.abs(forces).max() / KT_300
    np.testing.assert_allclose(result.gradient, -forces / KT_300, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def vacuum_pool(vacuum):
    energy = OpenMMEnergy(vacuum[0], 300.0, platform="Reference", n_workers=2)
    yield energy
    energy.close()


@pytest.fixture(scope="module")
def implicit_pool(implicit):
    energy = OpenMMEnergy(implicit[0], 300.0, platform="Reference", n_workers=2)
    yield energy
    energy.close()


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (FileNotFoundError, IndexError):
        return False


def test_gas_constant_is_openmms():
    assert R_KJ_PER_MOL_K == unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


# ---------------------------------------------------------------------- system construction
def test_alanine_systems_build(vacuum, implicit):
    for system, topology, positions, _ in (vacuum, implicit):
        assert system.getNumParticles() == topology.n_atoms == 22
        assert positions.shape == (22, 3)
        assert system.getNumConstraints() == 0
        assert [r.name for r in topology.residues] == ["ACE", "ALA", "NME"]
    forces_vac = {type(f).__name__ for f in vacuum[0].getForces()}
    forces_imp = {type(f).__name__ for f in implicit[0].getForces()}
    assert "GBSAOBCForce" in forces_imp - forces_vac


def test_structure_is_minimised_c7eq_and_observables_point_at_backbone(vacuum):
    system, topology, positions, definition = vacuum
    names = [(a.residue.name, a.name) for a in topology.atoms]
    phi_idx = definition["observables"]["phi"]["dihedral"]
    psi_idx = definition["observables"]["psi"]["dihedral"]
    assert [names[i] for i in phi_idx] == [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C")]
    assert [names[i] for i in psi_idx] == [("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    traj = mdtraj.Trajectory(positions[None], topology)
    phi, psi = np.degrees(mdtraj.compute_dihedrals(traj, [phi_idx, psi_idx])[0])
    assert -90 < phi < -60 and 40 < psi < 90  # C7eq
    # a minimum: small forces
    e, f = direct_loop(system, positions[None])
    assert e[0] < -80 and np.abs(f).max() < 100.0  # PDB rounding (1e-4 nm) leaves ~30 kJ/mol/nm


def test_build_openmm_system_errors(tmp_path, vacuum):
    definition = dict(vacuum[3])
    with pytest.raises(FileNotFoundError, match="alanine_dipeptide.pdb"):
        build_openmm_system(tmp_path, definition)
    folder = SYSTEMS / "alanine_dipeptide_vacuum"
    with pytest.raises(ValueError, match="nonbonded_method"):
        build_openmm_system(folder, {**definition, "nonbonded_method": "Magic"})
    with pytest.raises(ValueError, match="constraints"):
        build_openmm_system(folder, {**definition, "constraints": "hbonds-ish"})
    hbonds, _, _ = build_openmm_system(folder, {**definition, "constraints": "HBonds"})
    assert hbonds.getNumConstraints() == 12


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("name", ["vacuum", "implicit"])
@pytest.mark.parametrize("workers", [1, 2])
def test_bridge_matches_direct_loop(name, workers, request):
    system, _, positions, _ = request.getfixturevalue(name)
    x = perturbed(positions, 24)
    expected = direct_loop(system, x)
    energy = request.getfixturevalue(f"{name}_pool") if workers == 2 else OpenMMEnergy(system, 300.0, platform="Reference")
    assert energy.kT == pytest.approx(KT_300, rel=1e-12)
    assert OpenMMEnergy(system, 300.0 * unit.kelvin, platform="Reference").kT == energy.kT
    assert_matches_direct(energy.evaluate(x), *expected)
    assert_matches_direct(energy.evaluate(x.reshape(len(x), -1)), *expected)  # (B, D) too
    u_only = energy.evaluate(x, need_gradient=False)
    assert u_only.gradient is None
    np.testing.assert_allclose(u_only.energy, expected[0] / KT_300, rtol=1e-8)


def test_odd_batch_sizes_with_workers(vacuum, vacuum_pool):
    system, _, positions, _ = vacuum
    for n in (1, 3):
        x = perturbed(positions, n, seed=n)
        assert_matches_direct(vacuum_pool.evaluate(x), *direct_loop(system, x))
    one = torch.as_tensor(positions)
    assert vacuum_pool(one).shape == ()


def test_cpu_platform_agrees_with_reference(implicit):
    system, _, positions, _ = implicit
    x = perturbed(positions, 8)
    e_ref, f_ref = direct_loop(system, x)
    result = OpenMMEnergy(system, 300.0, platform="CPU").evaluate(x)
    np.testing.assert_allclose(result.energy, e_ref / KT_300, atol=1e-3)
    np.testing.assert_allclose(result.gradient, -f_ref / KT_300, atol=1e-3 * np.abs(f_ref).max() / KT_300)


# ---------------------------------------------------------------------- failures
@pytest.mark.parametrize("workers", [1, 2])
def test_failed_rows_are_inf_and_counted(workers, vacuum, vacuum_pool):
    system, _, positions, _ = vacuum
    x = perturbed(positions, 6)
    expected_e, expected_f = direct_loop(system, x)
    x[1, 3, 0] = np.nan
    x[2, 7, 2] = np.inf
    x[4, 5] = x[4, 18]  # O(ACE) exactly on C(NME): OpenMM gives inf / nan
    energy = vacuum_pool if workers == 2 else OpenMMEnergy(system, 300.0, platform="Reference")
    failed_before = energy.n_failed
    result = energy.evaluate(x)
    bad = [1, 2, 4]
    good = [0, 3, 5]
    assert result.n_failed == 3 and energy.n_failed - failed_before == 3
    assert np.all(result.energy[bad] == np.inf)
    assert np.all(result.gradient[bad] == 0.0)
    np.testing.assert_allclose(result.energy[good], expected_e[good] / KT_300, rtol=1e-8)
    np.testing.assert_allclose(result.gradient[good], -expected_f[good] / KT_300, rtol=1e-8, atol=1e-8)
    # the next batch is unaffected by the failures
    clean = perturbed(positions, 4, seed=3)
    assert_matches_direct(energy.evaluate(clean), *direct_loop(system, clean))


class RaisingContext:
    """A Context stand-in that raises like OpenMM for positions with x[0, 0] > 100 nm."""

    def __init__(self, context: openmm.Context) -> None:
        self.context = context

    def setPositions(self, positions: np.ndarray) -> None:
        if positions[0, 0] > 100:
            raise openmm.OpenMMException("Particle coordinate is NaN")
        self.context.setPositions(positions)

    def getState(self, **kwargs):
        return self.context.getState(**kwargs)


def test_row_on_which_openmm_raises_is_inf_alone(vacuum):
    system, _, positions, _ = vacuum
    energy = OpenMMEnergy(system, 300.0, platform="Reference")
    x = perturbed(positions, 4, seed=4)
    expected_e, expected_f = direct_loop(system, x)
    x[1, 0, 0] = 1000.0
    energy.evaluate(x[:1])  # creates the in-process evaluator
    energy._evaluator.context = RaisingContext(energy._evaluator.context)
    result = energy.evaluate(x)
    assert result.n_failed == 1 and result.energy[1] == np.inf and np.all(result.gradient[1] == 0)
    good = [0, 2, 3]  # row 2 must not inherit row 1's (or row 0's) values
    np.testing.assert_allclose(result.energy[good], expected_e[good] / KT_300, rtol=1e-8)
    np.testing.assert_allclose(result.gradient[good], -expected_f[good] / KT_300, rtol=1e-8, atol=1e-8)


def test_wrong_shape_raises(vacuum):
    energy = OpenMMEnergy(vacuum[0], 300.0, platform="Reference")
    with pytest.raises(EnergyShapeError):
        energy.evaluate(np.zeros((4, 65)))
    with pytest.raises(EnergyShapeError):
        energy.evaluate(np.zeros((4, 21, 3)))


def test_invalid_arguments_and_in_process_default(vacuum):
    with pytest.raises(ValueError, match="platform"):
        OpenMMEnergy(vacuum[0], 300.0, platform="Metal")
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(vacuum[0], -1.0, platform="Reference")
    with pytest.raises(ValueError, match="properties"):
        OpenMMEnergy(vacuum[0], 300.0, platform="Reference", platform_properties={"Threads": "2"})
    with pytest.raises(TypeError):
        OpenMMEnergy("not a system", 300.0)
    with pytest.raises(ValueError, match="n_workers"):
        OpenMMEnergy(vacuum[0], 300.0, platform="Reference", n_workers=-1)
    assert OpenMMEnergy(vacuum[0], 300.0, platform="Reference", n_workers=0).n_workers == 1  # in-process


def test_cpu_threads_are_split_across_workers(vacuum):
    for n_workers in (1, 2, 64):
        energy = OpenMMEnergy(vacuum[0], 300.0, platform="CPU", n_workers=n_workers)
        assert energy.platform_properties["Threads"] == str(max(1, n_cores() // n_workers))
    pinned = OpenMMEnergy(vacuum[0], 300.0, platform="CPU", n_workers=2, platform_properties={"Threads": 3})
    assert pinned.platform_properties["Threads"] == "3"


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["vacuum", "implicit"])
def test_torch_gradient_is_minus_force_over_kT_and_matches_finite_difference(name, request):
    system, _, positions, _ = request.getfixturevalue(name)
    energy = OpenMMEnergy(system, 300.0, platform="Reference")
    x_np = perturbed(positions, 3, seed=7)
    _, forces = direct_loop(system, x_np)
    x = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    u = energy(x)
    assert u.shape == (3,) and u.dtype == torch.float64
    u.sum().backward()
    grad = x.grad.reshape(3, -1).numpy()
    np.testing.assert_allclose(grad, -forces / KT_300, rtol=1e-8, atol=1e-8 * np.abs(forces).max() / KT_300)

    rng = np.random.default_rng(11)
    direction = rng.standard_normal(x_np.shape)
    direction /= np.linalg.norm(direction.reshape(3, -1), axis=1)[:, None, None]
    h = 1e-5  # nm
    u_plus = energy.evaluate(x_np + h * direction, need_gradient=False).energy
    u_minus = energy.evaluate(x_np - h * direction, need_gradient=False).energy
    fd = (u_plus - u_minus) / (2 * h)
    analytic = np.einsum("bd,bd->b", grad, direction.reshape(3, -1))
    np.testing.assert_allclose(fd, analytic, rtol=1e-5, atol=1e-6 * np.abs(grad).max())


# ---------------------------------------------------------------------- workers
def test_killed_worker_between_calls_is_replaced(vacuum, vacuum_pool):
    system, _, positions, _ = vacuum
    x = perturbed(positions, 10, seed=5)
    expected = direct_loop(system, x)
    vacuum_pool.evaluate(x)
    pool = vacuum_pool.worker_pool
    old = pool.pids
    restarts = pool.n_restarts
    os.kill(old[1], signal.SIGKILL)
    time.sleep(0.1)
    assert_matches_direct(vacuum_pool.evaluate(x), *expected)
    assert pool.n_restarts == restarts + 1
    assert pool.pids[0] == old[0] and pool.pids[1] != old[1]
    assert not alive(old[1])


def test_workers_ignore_sigint(vacuum, vacuum_pool):
    system, _, positions, _ = vacuum
    x = perturbed(positions, 4, seed=9)
    vacuum_pool.evaluate(x)
    pool = vacuum_pool.worker_pool
    pids, restarts = pool.pids, pool.n_restarts
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert_matches_direct(vacuum_pool.evaluate(x), *direct_loop(system, x))
    assert pool.pids == pids and pool.n_restarts == restarts


def test_worker_killed_mid_chunk_redoes_chunk_and_close_stops_workers(implicit):
    system, _, positions, _ = implicit
    x = perturbed(positions, 8000, seed=2)  # ~0.3 s of Reference work per worker
    expected = direct_loop(system, x)
    with OpenMMEnergy(system, 300.0, platform="Reference", n_workers=2) as energy:
        energy.evaluate(x[:2])  # start the workers
        pool = energy.worker_pool
        victim = pool.pids[0]
        killer = threading.Timer(0.05, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        result = energy.evaluate(x)
        killer.join()
        assert pool.n_restarts == 1 and victim not in pool.pids
        assert_matches_direct(result, *expected)
        pids = pool.pids
        assert all(alive(pid) for pid in pids)
    assert energy.worker_pool is None
    assert not any(alive(pid) for pid in pids)
    assert not {p.pid for p in multiprocessing.active_children()} & set(pids)


# ---------------------------------------------------------------------- platform, repr, pickle
def test_auto_platform_is_measured_and_cached(vacuum):
    system = vacuum[0]
    name = select_platform(system)
    assert name in available_platforms()
    start = time.perf_counter()
    assert select_platform(system) == name
    assert time.perf_counter() - start < 0.05  # cached: no second measurement
    energy = OpenMMEnergy(system, 300.0, platform="auto", n_workers=2)
    assert energy.platform_name in available_platforms()
    assert f"platform={energy.platform_name!r}" in repr(energy) and "n_workers=2" in repr(energy)
    assert energy.worker_pool is None  # workers start on first use
    assert select_platform(system, 1, {"Threads": "1"}) in available_platforms()  # properties of some platforms


def test_pickle_round_trip(vacuum):
    system, _, positions, _ = vacuum
    energy = OpenMMEnergy(system, 300.0, platform="Reference")
    x = perturbed(positions, 3)
    u = energy.evaluate(x).energy
    clone = pickle.loads(pickle.dumps(energy))
    np.testing.assert_allclose(clone.evaluate(x).energy, u, rtol=1e-12)


# ---------------------------------------------------------------------- whole-process lifecycle
_SCRIPT = """
import sys
import numpy as np
import boltzflow as bf

if __name__ == "__main__":
    system = bf.load_system("alanine_dipeptide_vacuum", n_workers=2)
    x = np.repeat(system.x0.numpy()[None], 50_000 if sys.argv[1] == "loop" else 10, axis=0)
    system.energy.evaluate(x[:10])
    print(" ".join(map(str, system.energy.worker_pool.pids)), flush=True)
    while sys.argv[1] == "loop":
        system.energy.evaluate(x)
"""


@pytest.mark.parametrize("mode", ["exit", "loop"])
def test_no_worker_outlives_its_parent(tmp_path, mode):
    """Workers stop at interpreter exit without close(), and after Ctrl-C during a batch."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # a shell starting a job in the background (`cmd &`, nohup) hands it SIGINT *ignored*, which the
    # child would inherit: restore the default so that Ctrl-C is tested even under such a runner
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    if mode == "loop":
        time.sleep(0.5)  # inside a batch
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if mode == "loop":
        assert "KeyboardInterrupt" in err
    else:
        assert proc.returncode == 0, err
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
