"""Builders: one function per system ``type`` turning a ``system.toml`` definition into a System.

Each builder takes ``(folder, definition, **options)``; options override the definition (e.g. the
OpenMM platform). Adding a system type means adding one function to :data:`BUILDERS` and its entry
to :data:`boltzflow.systems.declared.SYSTEM_TYPES` (its points' dimension, whether ``system.toml``
declares all its observables).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .assembly import check_options, finish_system, merge_parameters
from .declared import declared_states, spatial_dims
from .ice import build_ice
from .system import System


def cluster_start(n_particles: int, n_dims: int, spacing: float) -> np.ndarray:
    """A compact, overlap-free start: the ``n_particles`` grid points nearest the centre.

    Parameters
    ----------
    n_particles, n_dims : int
        Cluster size and spatial dimension.
    spacing : float
        Grid spacing (e.g. the pair-potential minimum distance).

    Returns
    -------
    np.ndarray
        ``(n_particles * n_dims,)`` coordinates with zero centre of mass.
    """
    side = int(np.ceil(n_particles ** (1.0 / n_dims))) + 2
    axis = np.arange(side) - (side - 1) / 2
    grid = np.stack(np.meshgrid(*([axis] * n_dims), indexing="ij"), -1).reshape(-1, n_dims)
    order = np.lexsort((*grid.T[::-1], (grid**2).sum(-1)))
    points = grid[order[:n_particles]] * spacing
    return (points - points.mean(0)).reshape(-1)


def build_double_well(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """2D double well ``u = (a·x1 + b·x1² + c·x1⁴ + ½·x2²) / kT`` (numba kernel)."""
    from ..energy.double_well import DoubleWellEnergy

    check_options("double_well", options, set())
    p = merge_parameters(definition, {"a": -0.5, "b": -6.0, "c": 1.0})
    energy = DoubleWellEnergy(a=p["a"], b=p["b"], c=p["c"], kT=float(definition["temperature"]))
    return finish_system(folder, definition, energy, np.array([-1.7, 0.0]))


def build_multi_double_well(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """Particles with a pairwise double well in distance (DW4), numba kernel."""
    from ..energy.multi_double_well import MultiDoubleWellEnergy

    check_options("multi_double_well", options, set())
    p = merge_parameters(definition,
                         {"n_particles": 4, "n_dims": spatial_dims(definition), "a": 0.9, "b": -4.0, "d0": 4.0})
    energy = MultiDoubleWellEnergy(
        n_particles=int(p["n_particles"]), n_dims=int(p["n_dims"]), a=p["a"], b=p["b"], d0=p["d0"],
        kT=float(definition["temperature"]),
    )
    x0 = cluster_start(int(p["n_particles"]), int(p["n_dims"]), spacing=p["d0"])
    return finish_system(folder, definition, energy, x0, particles=(int(p["n_particles"]), int(p["n_dims"])))


def build_lennard_jones(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """Lennard-Jones cluster (pair sum once) plus a harmonic restraint to the centre of mass."""
    from ..energy.lennard_jones import LennardJonesEnergy
    from ..energy.restraints import CenterOfMassRestraint

    check_options("lennard_jones", options, set())
    p = merge_parameters(
        definition,
        {"n_particles": 13, "n_dims": spatial_dims(definition), "epsilon": 1.0, "rm": 1.0, "restraint_k": 1.0},
    )
    n, d, kT = int(p["n_particles"]), int(p["n_dims"]), float(definition["temperature"])
    energy = LennardJonesEnergy(n, d, epsilon=p["epsilon"], rm=p["rm"], kT=kT)
    if p["restraint_k"] > 0:
        energy = energy + CenterOfMassRestraint(n, d, k=p["restraint_k"], kT=kT)
    return finish_system(folder, definition, energy, cluster_start(n, d, spacing=p["rm"]), particles=(n, d))


def build_openmm(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """A molecule from a structure file and OpenMM force field files (OpenMM bridge energy).

    Options: ``platform`` ("auto", "Reference", "CPU", "CUDA", "OpenCL") and ``n_workers``.
    """
    from ..energy.openmm_bridge import OpenMMEnergy
    from .openmm_builder import build_openmm_system

    check_options("openmm", options, {"platform", "n_workers"})
    omm_system, topology, positions = build_openmm_system(folder, definition)
    energy = OpenMMEnergy(
        omm_system,
        temperature=float(definition["temperature"]),
        platform=options.get("platform", definition.get("platform", "auto")),
        n_workers=int(options.get("n_workers", definition.get("n_workers", 1))),
    )
    return finish_system(
        folder, definition, energy, np.asarray(positions).reshape(-1), topology=topology, openmm_system=omm_system,
    )


def build_python(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """A user system defined in code: ``module`` (a .py file in the folder) with ``build(definition, **options)``."""
    path = folder / definition.get("module", "system.py")
    if not path.is_file():
        raise FileNotFoundError(f"system '{definition['name']}': module {path} not found")
    spec = importlib.util.spec_from_file_location(f"boltzflow_user_system_{definition['name']}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "build"):
        raise AttributeError(f"{path} must define build(definition, **options) -> boltzflow.System")
    system = module.build(definition, **options)
    if not isinstance(system, System):
        raise TypeError(f"{path}: build() returned {type(system).__name__}, expected boltzflow.System")
    system.source = folder
    return system


def build_gaussian_mixture(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """Mixture of isotropic Gaussians in ``dim`` dimensions (exact answers: mode fractions, Z = 1 at kT = 1).

    Parameters (``[parameters]``): ``weights`` (K positive numbers, normalised: ``[1, 3]`` is 1:3),
    ``sigmas`` (K standard deviations), ``means`` (K lists of leading coordinates, padded with zeros
    to ``dim``: ``[[-4.0], [4.0]]`` puts the modes at ``x0 = ∓4``). The default start is the mean of
    the heaviest component.
    """
    from ..energy.gaussian_mixture import GaussianMixtureEnergy

    check_options("gaussian_mixture", options, set())
    if "dim" not in definition:
        raise ValueError(f"system '{definition['name']}': a gaussian_mixture system needs 'dim'")
    dim = int(definition["dim"])
    p = merge_parameters(definition, {"weights": [1.0, 3.0], "sigmas": [1.0, 1.0], "means": [[-4.0], [4.0]]})
    means = np.zeros((len(p["means"]), dim))
    for k, leading in enumerate(p["means"]):
        leading = np.atleast_1d(np.asarray(leading, dtype=np.float64))
        if leading.size > dim:
            raise ValueError(f"system '{definition['name']}': mean {k} has {leading.size} coordinates for dim={dim}")
        means[k, : leading.size] = leading
    energy = GaussianMixtureEnergy(means, p["sigmas"], p["weights"], kT=float(definition["temperature"]))
    return finish_system(folder, definition, energy, means[int(np.argmax(energy.weights))])


def build_tetrahedron_field(folder: Path, definition: dict[str, Any], **options: Any) -> System:
    """A rigid tetrahedron, centre fixed at the origin, in a cubic external field (numba kernel).

    Parameters (``[parameters]``): ``kappa`` (kJ mol⁻¹ nm⁻³), ``charges`` (4 site weights),
    ``bond`` (nm), ``rigidity`` (kJ mol⁻¹ nm⁻²); see :mod:`boltzflow.energy.tetrahedron_field`.
    The start has vertex 0 pointing up (+y). Besides the declared observables, ``up0`` … ``up3``
    (1 where that vertex is the highest, else 0) are defined, so ``⟨up_i⟩`` is the weight of the
    mode "vertex i up"; states may use them (e.g. ``A = "up0 > 0.5"``).
    """
    from functools import partial

    from ..energy.tetrahedron_field import TetrahedronFieldEnergy, vertex_up, vertex_up_rotation
    from ..geometry.rigid_bodies import RigidBodySpec

    check_options("tetrahedron_field", options, set())
    p = merge_parameters(definition,
                         {"kappa": 2.0e4, "charges": [1.0, 1.0, 1.0, 1.0], "bond": 0.109, "rigidity": 1.0e5})
    energy = TetrahedronFieldEnergy(p["kappa"], p["charges"], bond=p["bond"],
                                    temperature=float(definition["temperature"]), rigidity=p["rigidity"])
    x0 = (energy.reference @ vertex_up_rotation(energy.reference[0]).T).reshape(-1)
    spec = RigidBodySpec(energy.reference, np.zeros((1, 3)))
    system = finish_system(folder, {**definition, "states": {}}, energy, x0, rigid_bodies=spec)
    system.observables.update({f"up{i}": partial(vertex_up, vertex=i) for i in range(4)})
    system.states = declared_states(definition, system.observables)
    return system


BUILDERS: dict[str, Callable[..., System]] = {
    "double_well": build_double_well,
    "multi_double_well": build_multi_double_well,
    "lennard_jones": build_lennard_jones,
    "openmm": build_openmm,
    "python": build_python,
    "tetrahedron_field": build_tetrahedron_field,
    "gaussian_mixture": build_gaussian_mixture,
    "ice": build_ice,
}
