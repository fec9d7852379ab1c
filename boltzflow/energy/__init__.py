"""Energies: one interface (:class:`Energy`) over numba kernels, the OpenMM bridge and user functions.

All energies are *reduced*: ``u = U / kT`` in units of kT, for batches ``(B, D)``.
"""

from .base import Energy, EnergyResult, EnergyShapeError, ScaledEnergy, SumEnergy
from .double_well import DoubleWellEnergy
from .function import FunctionEnergy
from .lennard_jones import LennardJonesEnergy
from .multi_double_well import MultiDoubleWellEnergy
from .orientation import OrientationPrior
from .restraints import CenterOfMassRestraint

__all__ = [
    "CenterOfMassRestraint",
    "DoubleWellEnergy",
    "Energy",
    "EnergyResult",
    "EnergyShapeError",
    "FunctionEnergy",
    "LennardJonesEnergy",
    "MultiDoubleWellEnergy",
    "OrientationPrior",
    "ScaledEnergy",
    "SumEnergy",
]
