"""Baseline samplers (MALA, OpenMM Langevin MD): exactness checked against analytic moments."""

import numpy as np
import openmm
import pytest
import torch

import boltzflow as bf
from boltzflow.energy.openmm_bridge import OpenMMEnergy
from boltzflow.samplers.checkpoint import CheckpointError

K = torch.tensor([1.0, 4.0], dtype=torch.float64)


def _gaussian():
    return bf.System.from_energy(lambda x: 0.5 * (K * x**2).sum(-1), dim=2, name="gauss", x0=[2.0, -1.0])


def _within(estimate, exact, sigmas=3.0):
    assert estimate.reliable
    assert abs(estimate.value - exact) < sigmas * estimate.error, (estimate, exact)


def test_mala_samples_a_gaussian_exactly():
    samples = bf.sample(_gaussian(), sampler="mala", n=8000, seed=1, n_chains=16, thin=5, warmup=500,
                        progress=False)
    assert len(samples) == 8000 and samples.correlated and not samples.is_weighted
    assert 0.45 < samples.metadata["acceptance_rate"] < 0.7
    assert set(np.unique(samples.chain)) == set(range(16))
    for i, k in enumerate(K.tolist()):
        _within(bf.estimate.expectation(samples, lambda x, i=i: x[:, i] ** 2), 1.0 / k)
        _within(bf.estimate.expectation(samples, lambda x, i=i: x[:, i]), 0.0)
    # reduced energies stored are the system's: <u> = d/2 for a Gaussian
    _within(bf.estimate.expectation(samples, lambda x: 0.5 * (K.numpy() * x**2).sum(1)), 1.0)
    assert np.allclose(samples.energies, 0.5 * (K.numpy() * samples.x**2).sum(1))


def test_md_on_toy_system_is_mala_and_rejects_unknown_options():
    system = bf.load_system("double_well_2d")
    samples = bf.sample(system, sampler="md", n=64, seed=0, n_chains=8, warmup=50, progress=False)
    assert samples.metadata["sampler"] == "mala" and samples.metadata["system"] == "double_well_2d"
    with pytest.raises(TypeError, match="no option.*timestep_fs"):
        bf.sample(system, sampler="md", n=10, timestep_fs=1.0)
    with pytest.raises(ValueError, match="unknown sampler 'gibbs'"):
        bf.sample(system, sampler="gibbs", n=10)


class _Interrupt(bf.energy.FunctionEnergy):
    """An energy that raises KeyboardInterrupt on its n-th evaluation, as a Ctrl-C would."""

    def __init__(self, after):
        super().__init__(lambda x: 0.5 * (K * x**2).sum(-1), dim=2)
        self.after = after

    def _evaluate(self, x, need_gradient):
        self.after -= 1
        if self.after == 0:
            raise KeyboardInterrupt
        return super()._evaluate(x, need_gradient)


def test_mala_resumes_from_checkpoint_bit_identically(tmp_path):
    options = dict(n=400, seed=3, n_chains=4, thin=2, warmup=50, progress=False, checkpoint_seconds=0.0)
    reference = bf.sample(_gaussian(), sampler="mala", **options)
    system = _gaussian()
    system.energy = _Interrupt(after=120)
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        bf.sample(system, sampler="mala", checkpoint=ckpt, **options)
    assert ckpt.exists()
    resumed = bf.sample(_gaussian(), sampler="mala", checkpoint=ckpt, **options)
    assert np.array_equal(resumed.x, reference.x)
    with pytest.raises(CheckpointError, match="different run"):
        bf.sample(_gaussian(), sampler="mala", checkpoint=ckpt, **{**options, "seed": 4})
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        bf.sample(_gaussian(), sampler="mala", checkpoint=ckpt, **options)


def _harmonic_openmm(n_particles=20, k=500.0, temperature=300.0):
    """Independent 3D harmonic wells U = k/2 |r|^2 (kJ/mol/nm^2), mass 12 amu."""
    omm = openmm.System()
    force = openmm.CustomExternalForce("0.5*k*(x^2+y^2+z^2)")
    force.addGlobalParameter("k", k)
    for i in range(n_particles):
        omm.addParticle(12.0)
        force.addParticle(i, [])
    omm.addForce(force)
    energy = OpenMMEnergy(omm, temperature=temperature, platform="Reference")
    return bf.System(name="harmonic", energy=energy, temperature=temperature,
                     x0=np.zeros(3 * n_particles), openmm_system=omm, backend="openmm", units="nm, kJ/mol, K")


def test_langevin_md_samples_harmonic_wells_at_the_right_temperature(tmp_path):
    system = _harmonic_openmm()
    kT = openmm.unit.MOLAR_GAS_CONSTANT_R.value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.kelvin) * 300.0
    samples = bf.sample(system, sampler="md", n=1500, seed=2, thin=100, equilibration_ps=2.0, minimize=False,
                        progress=False, checkpoint=tmp_path / "md.npz")
    assert samples.metadata["sampler"] == "md" and samples.time[-1] == pytest.approx(150.0)
    # equipartition: <u> = 3N/2 in kT, <x^2> = kT/k per coordinate
    _within(bf.estimate.expectation(samples, lambda x: 0.5 * 500.0 * (x**2).sum(1) / kT), 30.0)
    _within(bf.estimate.expectation(samples, lambda x: (x**2).mean(1)), kT / 500.0)
    assert np.allclose(samples.energies, 0.5 * 500.0 * (samples.x**2).sum(1) / kT, rtol=1e-6)
    # the finished run's checkpoint makes a rerun of the same command instant and identical
    again = bf.sample(system, sampler="md", n=1500, seed=2, thin=100, equilibration_ps=2.0, minimize=False,
                      progress=False, checkpoint=tmp_path / "md.npz")
    assert np.array_equal(again.x, samples.x)


def test_md_needs_an_openmm_system():
    with pytest.raises(ValueError, match="has no OpenMM system"):
        bf.samplers.sample_openmm_md(_gaussian(), n=10)


def _torsion_molecule(temperature=300.0):
    """Four atoms, stiff bonds/angles, torsion U(φ) = k(1 + cos 2φ) + kT(1 + cos(φ − 0.6)).

    Minima near φ = ±π/2 separated by ~12 kT barriers at 0 and π; the n = 1 term makes them unequal.

    Bonds and angles do not couple to φ (the Jacobian of internal coordinates has no φ term), so
    the φ marginal is exactly ∝ exp(−U(φ)/kT): a 1D quadrature gives the exact ΔF(φ>0 − φ<0).
    """
    kT = openmm.unit.MOLAR_GAS_CONSTANT_R.value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.kelvin) * temperature
    k = 6.0 * kT
    omm = openmm.System()
    for _ in range(4):
        omm.addParticle(12.0)
    bonds, angles, torsion = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce(), openmm.PeriodicTorsionForce()
    for i in range(3):
        bonds.addBond(i, i + 1, 0.15, 2.0e5)
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, 1.9, 400.0)
    torsion.addTorsion(0, 1, 2, 3, 2, 0.0, k)
    torsion.addTorsion(0, 1, 2, 3, 1, 0.6, kT)
    for force in (bonds, angles, torsion):
        omm.addForce(force)
    x0 = np.array([[0.0, 0.15, 0.0], [0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.15, 0.05, 0.14]])
    from boltzflow.systems.observables import Dihedral

    phi = Dihedral(0, 1, 2, 3)
    system = bf.System(name="torsion", energy=OpenMMEnergy(omm, temperature, platform="Reference"),
                       temperature=temperature, x0=x0.reshape(-1), openmm_system=omm, backend="openmm",
                       observables={"phi": phi}, states={"A": bf.systems.State("phi < 0", {"phi": phi}),
                                                         "B": bf.systems.State("phi > 0", {"phi": phi})})
    grid = np.linspace(-np.pi, np.pi, 20001)
    p = np.exp(-k * (1 + np.cos(2 * grid)) / kT - (1 + np.cos(grid - 0.6)))
    exact = -np.log(np.trapezoid(p[grid > 0], grid[grid > 0]) / np.trapezoid(p[grid < 0], grid[grid < 0]))
    return system, exact


def test_umbrella_md_recovers_exact_free_energy_across_a_barrier(tmp_path):
    system, exact = _torsion_molecule()
    samples = bf.sample(system, sampler="umbrella", n=3000, seed=0, metadynamics_ns=0.3, thin=200,
                        timestep_fs=2.0, equilibration_ps=5.0, progress=False, checkpoint=tmp_path / "u.npz")
    assert samples.is_weighted and samples.correlated and samples.metadata["sampler"] == "umbrella"
    assert (tmp_path / "u.bias.npy").exists()
    delta_f = bf.estimate.free_energy_difference(samples, system.states["A"], system.states["B"])
    assert abs(exact) > 0.5  # the torsion is asymmetric enough for the test to mean something
    _within(delta_f, exact, sigmas=4.0)
    assert delta_f.error < 0.3
    # without the weights the biased frames say something else: the weights carry the answer
    unweighted = bf.SampleSet(samples.x, samples.energies, chain=samples.chain, metadata=samples.metadata)
    wrong = bf.estimate.free_energy_difference(unweighted, system.states["A"], system.states["B"])
    assert abs(wrong.value - exact) > 5 * wrong.error
    # and plain MD of the same length never crosses the 12 kT barriers
    plain = bf.sample(system, sampler="md", n=3000, seed=0, thin=200, timestep_fs=2.0, equilibration_ps=5.0,
                      progress=False)
    with pytest.warns(bf.estimate.LowESSWarning):
        stuck = bf.estimate.free_energy_difference(plain, system.states["A"], system.states["B"])
    assert not stuck.reliable
    # the weights are the bias the dynamics felt: exp(-V/kT)-weighted histogram of phi is flat-ish
    phi = system.observables["phi"](samples.x)
    assert (phi > 0).mean() > 0.1 and (phi < 0).mean() > 0.1
