"""Rigid-body flows (issue 6): molecules as rigid bodies, orientations as unit quaternions on S³.

* quaternion algebra and rigid-body coordinates come from the low-level :mod:`boltzflow.geometry`
  (shared with the energies and systems) and are re-exported here;
* :mod:`.sphere` — S³ bijections with ``f(−q) = −f(q)`` (linear/double-Möbius and meridian splines)
  and the measure convention for densities on SO(3);
* :mod:`.torus` — circle maps of periodic positions;
* :mod:`.conditioners` — permutation-equivariant attention over molecules;
* :mod:`.layout`, :mod:`.model` — the latent state and the flow over Cartesian sites.
"""

from ...geometry.quaternions import best_fit_rotation, canonical_sign, from_matrix, multiply, random_uniform, to_matrix
from ...geometry.rigid_bodies import RigidBodyCoordinates, RigidBodySpec
from .conditioners import MoleculeAttention
from .model import RigidBase, RigidToCartesian, build_rigid_flow, rigid_flow_from_config
from .sphere import LinearS3Layer, MeridianS3Layer, linear_map, meridian_spline
from .torus import TorusCouplingLayer

__all__ = [
    "LinearS3Layer",
    "MeridianS3Layer",
    "MoleculeAttention",
    "RigidBase",
    "RigidBodyCoordinates",
    "RigidBodySpec",
    "RigidToCartesian",
    "TorusCouplingLayer",
    "best_fit_rotation",
    "build_rigid_flow",
    "canonical_sign",
    "from_matrix",
    "linear_map",
    "meridian_spline",
    "multiply",
    "random_uniform",
    "rigid_flow_from_config",
    "to_matrix",
]
