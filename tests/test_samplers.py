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
