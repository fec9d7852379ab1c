"""Molecular dynamics baseline: OpenMM Langevin dynamics (LangevinMiddle integrator).

Every flow sampler is benchmarked against this. The trajectory is minimised, equilibrated, then
stored every ``thin`` steps; stored frames are re-evaluated with the system's energy so that the
SampleSet's reduced energies are exactly what the estimation layer and flow samplers see.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openmm
from openmm import unit
from tqdm.auto import tqdm

from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .metadata import run_metadata


def _platform_name(system: System, platform: str | None) -> str:
    if platform is not None:
        return platform
    return getattr(system.energy, "platform_name", None) or "Reference"


def sample_openmm_md(
    system: System,
    n: int,
    seed: int = 0,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    thin: int = 500,
    equilibration_ps: float = 20.0,
    minimize: bool = True,
    platform: str | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Run Langevin dynamics of an OpenMM-backed system and store ``n`` frames.

    Parameters
    ----------
    system : System
        An OpenMM system (``system.openmm_system`` is not None).
    n : int
        Number of frames stored.
    seed : int
        Seed of the integrator's random numbers and initial velocities.
    timestep_fs : float
        Integration time step in femtoseconds (1 fs: no constraints on bonds to hydrogen).
    friction_per_ps : float
        Langevin collision rate in 1/ps.
    thin : int
        Steps between stored frames (500 steps of 1 fs = 0.5 ps).
    equilibration_ps : float
        Discarded equilibration after minimisation, in ps.
    minimize : bool
        Energy-minimise the start structure first.
    platform : str, optional
        OpenMM platform; by default the one the system's energy bridge chose by measurement.
    progress : bool
        Show a progress bar (frames).
    checkpoint : path, optional
        Checkpoint file (positions, velocities and stored frames); an existing one from the same
        run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated frames; ``time`` in ps after equilibration.
    """
    if system.openmm_system is None:
        raise ValueError(f"system '{system.name}' has no OpenMM system; use sampler 'mala' for it")
    if n < 1 or thin < 1 or timestep_fs <= 0 or equilibration_ps < 0:
        raise ValueError("n and thin must be >= 1, timestep_fs > 0 and equilibration_ps >= 0")
    platform_name = _platform_name(system, platform)
    run = {"system": system.name, "sampler": "md", "n": n, "seed": seed, "timestep_fs": timestep_fs,
           "friction_per_ps": friction_per_ps, "thin": thin, "temperature": system.temperature}
    ckpt = Checkpoint(checkpoint, run=run, every_seconds=checkpoint_seconds)

    integrator = openmm.LangevinMiddleIntegrator(
        system.temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(seed % 2**31 + 1)
    context = openmm.Context(system.openmm_system, integrator, openmm.Platform.getPlatformByName(platform_name))
    n_atoms = system.openmm_system.getNumParticles()
    frames = np.empty((n, n_atoms, 3))
    done = 0
    resumed = ckpt.load()
    if resumed is None:
        context.setPositions(system.x0.numpy().reshape(n_atoms, 3))
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(system.temperature * unit.kelvin, seed % 2**31 + 1)
        integrator.step(int(round(equilibration_ps * 1000.0 / timestep_fs)))
    else:
        arrays, info = resumed
        done = int(info["done"])
        frames[:done] = arrays["frames"]
        context.setState(openmm.XmlSerializer.deserialize(str(arrays["state_xml"])))
        # A resumed run continues with a fresh random stream, never the one already used.
        integrator.setRandomNumberSeed((seed + 7919 * done) % 2**31 + 1)

    with tqdm(total=n, initial=done, desc=f"MD {system.name}", unit="frame", disable=not progress) as bar:
        while done < n:
            integrator.step(thin)
            state = context.getState(getPositions=True)
            frames[done] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            done += 1
            bar.update(1)
            if ckpt.due() or (done == n and ckpt.path is not None):
                full = context.getState(getPositions=True, getVelocities=True)
                ckpt.save(
                    {"frames": frames[:done], "state_xml": np.array(openmm.XmlSerializer.serialize(full))},
                    {"done": done},
                )
    del context, integrator

    x = frames.reshape(n, -1)
    energies = system.energy.evaluate(x, need_gradient=False).energy
    dt_ps = thin * timestep_fs / 1000.0
    return SampleSet(
        x=x,
        energies=energies,
        chain=np.zeros(n, dtype=np.int64),
        time=(np.arange(n) + 1) * dt_ps,
        metadata=run_metadata(
            system, "md", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            platform=platform_name,
            timestep_fs=timestep_fs,
            friction_per_ps=friction_per_ps,
            thin=thin,
            equilibration_ps=equilibration_ps,
            simulated_ps=math.fsum([equilibration_ps, n * dt_ps]),
        ),
    )
