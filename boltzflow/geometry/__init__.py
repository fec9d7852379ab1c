"""Rotation and rigid-body geometry shared by every layer (numpy and torch only, no boltzflow imports).

Below the energies in the layering (``geometry → energies → systems → flows``), so an energy, a
system builder and a flow use the same quaternion conventions without an import pointing up:

* :mod:`.quaternions` — unit quaternions as rotations (products, rotation matrices both ways,
  Horn's best-fit rotation, uniform draws);
* :mod:`.rigid_bodies` — :class:`RigidBodySpec` (the rigid-body structure a system declares) and
  :class:`RigidBodyCoordinates` (sites of N rigid molecules ↔ positions and quaternions).
"""

from .quaternions import (LOG_AREA_S3, best_fit_rotation, canonical_sign, conjugate, from_matrix, horn_matrix,
                          multiply, random_uniform, rotate, to_matrix)
from .rigid_bodies import RigidBodyCoordinates, RigidBodySpec

__all__ = [
    "LOG_AREA_S3",
    "RigidBodyCoordinates",
    "RigidBodySpec",
    "best_fit_rotation",
    "canonical_sign",
    "conjugate",
    "from_matrix",
    "horn_matrix",
    "multiply",
    "random_uniform",
    "rotate",
    "to_matrix",
]
