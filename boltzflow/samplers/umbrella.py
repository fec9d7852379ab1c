"""Umbrella MD: OpenMM dynamics under a static bias on one dihedral, reweighted exactly.

Plain MD of alanine dipeptide almost never crosses into φ > 0 at 300 K, so it cannot give a
reference ΔF. Here a short well-tempered metadynamics run on the dihedral (OpenMM's
``app.Metadynamics``) learns a bias ``V(φ)`` that flattens the barriers; production MD then runs
with that bias *frozen*, so the biased ensemble is an ordinary Boltzmann distribution
``∝ exp(−(U + V)/kT)``. Each frame gets the exact log importance weight ``+V(φ)/kT`` back to the
target, ``exp(−U/kT)``: the estimates are unbiased whether or not the metadynamics converged
(only their efficiency depends on it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
from openmm import unit
from tqdm.auto import tqdm

from ..energy.units import R_KJ_PER_MOL_K
from ..samples import SampleSet
from ..systems.observables import Dihedral
from ..systems.system import System
from .checkpoint import Checkpoint
from .openmm_md import sample_openmm_md

def dihedral_atoms(system: System, observable: str) -> tuple[int, int, int, int]:
    """Atom indices of a dihedral observable declared by the system (e.g. ``"phi"``)."""
    obs = system.observables.get(observable)
    if not isinstance(obs, Dihedral):
        declared = [k for k, v in system.observables.items() if isinstance(v, Dihedral)]
        raise ValueError(
            f"system '{system.name}' has no dihedral observable '{observable}' (dihedrals: {declared or 'none'})"
        )
    return (obs.i, obs.j, obs.k, obs.l)


def bias_force(atoms: tuple[int, int, int, int], bias_kj: np.ndarray) -> openmm.CustomCVForce:
    """A periodic tabulated bias ``V(φ)`` (kJ/mol on an even grid over [−π, π], ends equal)."""
    dihedral = openmm.CustomTorsionForce("theta")
    dihedral.addTorsion(*atoms, [])
    force = openmm.CustomCVForce("umbrella_bias(dihedral)")
    force.addCollectiveVariable("dihedral", dihedral)
    force.addTabulatedFunction(
        "umbrella_bias", openmm.Continuous1DFunction(list(map(float, bias_kj)), -math.pi, math.pi, True)
    )
    return force


def _openmm_topology(system: System) -> app.Topology:
    """The system's topology for ``app.Simulation``, or a bare one for systems without."""
    if system.topology is not None:
        return system.topology.to_openmm()
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for i in range(system.openmm_system.getNumParticles()):
        topology.addAtom(f"X{i}", None, residue)
    return topology


def metadynamics_bias(
    system: System,
    atoms: tuple[int, int, int, int],
    ns: float = 2.0,
    seed: int = 0,
    bias_factor: float = 6.0,
    height_kj: float = 1.0,
    width_rad: float = 0.35,
    deposit_every: int = 500,
    timestep_fs: float = 1.0,
    progress: bool = True,
) -> np.ndarray:
    """Learn a bias on one dihedral by well-tempered metadynamics.

    Parameters
    ----------
    system : System
        OpenMM-backed system.
    atoms : tuple of 4 int
        The dihedral.
    ns : float
        Length of the metadynamics run in ns.
    seed : int
        Integrator seed.
    bias_factor : float
        Well-tempered bias factor γ (the bias converges to ``−(1 − 1/γ) F``).
    height_kj : float
        Initial Gaussian height (kJ/mol).
    width_rad : float
        Gaussian width (radians).
    deposit_every : int
        Steps between Gaussians.
    timestep_fs : float
        Time step.
    progress : bool
        Show a progress bar.

    Returns
    -------
    np.ndarray
        The bias in kJ/mol on ``grid`` points evenly spanning [−π, π] (first = last).
    """
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.openmm_system))
    cv = openmm.CustomTorsionForce("theta")
    cv.addTorsion(*atoms, [])
    variable = app.BiasVariable(cv, -math.pi, math.pi, width_rad, periodic=True)
    temperature = system.temperature * unit.kelvin
    meta = app.Metadynamics(omm, [variable], temperature, bias_factor, height_kj * unit.kilojoule_per_mole,
                            deposit_every)
    integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0 / unit.picosecond, timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed % 2**31 + 1)
    platform = getattr(system.energy, "platform_name", None) or "Reference"
    simulation = app.Simulation(_openmm_topology(system), omm, integrator, openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(system.x0.numpy().reshape(-1, 3))
    openmm.LocalEnergyMinimizer.minimize(simulation.context)
    simulation.context.setVelocitiesToTemperature(temperature, seed % 2**31 + 1)
    total = int(round(ns * 1e6 / timestep_fs))
    chunk = 50 * deposit_every
    with tqdm(total=total, desc=f"metadynamics {system.name}", unit="step", disable=not progress) as bar:
        for done in range(0, total, chunk):
            steps = min(chunk, total - done)
            meta.step(simulation, steps)
            bar.update(steps)
    free_energy = meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)
    delta_t = (bias_factor - 1.0) * system.temperature
    bias = -free_energy * delta_t / (system.temperature + delta_t)
    return bias - bias.min()


def _bias_energies(system: System, atoms: tuple[int, int, int, int], bias_kj: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bias energy (kJ/mol) of each frame, evaluated by OpenMM with exactly the force MD used."""
    omm = openmm.System()
    for _ in range(system.openmm_system.getNumParticles()):
        omm.addParticle(1.0)
    omm.addForce(bias_force(atoms, bias_kj))
    context = openmm.Context(omm, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference"))
    energies = np.empty(x.shape[0])
    for i, frame in enumerate(x.reshape(x.shape[0], -1, 3)):
        context.setPositions(frame)
        energies[i] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return energies


def sample_umbrella_md(
    system: System,
    n: int,
    seed: int = 0,
    observable: str = "phi",
    bias_kj: list[float] | np.ndarray | None = None,
    metadynamics_ns: float = 2.0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    **md_options,
) -> SampleSet:
    """MD under a frozen dihedral bias, with exact importance weights back to the target.

    Parameters
    ----------
    system : System
        OpenMM-backed system with a dihedral observable.
    n : int
        Number of frames.
    seed : int
        Seed of metadynamics and production dynamics.
    observable : str
        The biased dihedral (a :class:`~boltzflow.systems.observables.Dihedral` of the system).
    bias_kj : array-like, optional
        A ready bias (kJ/mol on an even periodic grid over [−π, π], first = last); by default it is
        learnt by :func:`metadynamics_bias` for ``metadynamics_ns``.
    metadynamics_ns : float
        Length of the metadynamics run that learns the bias.
    progress : bool
        Show progress bars.
    checkpoint : path, optional
        Checkpoint of the production run; the learnt bias is kept beside it so a resumed run
        uses the same bias.
    **md_options
        Options of :func:`~boltzflow.samplers.openmm_md.sample_openmm_md` (``thin``,
        ``timestep_fs``, ``equilibration_ps``...).

    Returns
    -------
    SampleSet
        Correlated frames with ``log_weights = V(φ)/kT``; metadata holds the bias grid.
    """
    if system.openmm_system is None:
        raise ValueError(f"system '{system.name}' has no OpenMM system; umbrella MD needs one")
    atoms = dihedral_atoms(system, observable)
    # the learnt bias is kept, checksummed, beside the checkpoint (under its former name)
    bias_store = Checkpoint(None if checkpoint is None else Path(checkpoint).with_suffix(".bias.npy"), run={
        "system": system.name, "observable": observable, "seed": seed, "metadynamics_ns": metadynamics_ns})
    saved_bias = bias_store.load() if bias_kj is None else None
    if saved_bias is not None:
        bias_kj = saved_bias[0]["bias_kj"]
    if bias_kj is None:
        bias_kj = metadynamics_bias(system, atoms, ns=metadynamics_ns, seed=seed, progress=progress)
        bias_store.save({"bias_kj": np.asarray(bias_kj, dtype=np.float64)}, {})
    bias_kj = np.asarray(bias_kj, dtype=np.float64)
    if bias_kj.ndim != 1 or bias_kj.size < 4 or not np.isfinite(bias_kj).all():
        raise ValueError("bias_kj must be a finite 1D grid of at least 4 values")
    biased = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.openmm_system))
    biased.addForce(bias_force(atoms, bias_kj))
    samples = sample_openmm_md(
        dataclasses.replace(system, openmm_system=biased), n, seed=seed, progress=progress,
        checkpoint=checkpoint, **md_options,
    )
    kT = R_KJ_PER_MOL_K * system.temperature
    log_weights = _bias_energies(system, atoms, bias_kj, samples.x) / kT
    return SampleSet(
        x=samples.x,
        energies=samples.energies,
        log_weights=log_weights,
        chain=samples.chain,
        time=samples.time,
        metadata={
            **samples.metadata,
            "sampler": "umbrella",
            "biased_observable": observable,
            "bias_kj_per_mol": bias_kj.tolist(),
            "metadynamics_ns": metadynamics_ns,
        },
    )
