"""Physical constants of the OpenMM boundary, defined once (numpy-free, OpenMM-free).

Inside the library every energy is reduced (kT); only the conversion ``kT = R·T`` at the OpenMM
boundary (and in the systems cross-checked against OpenMM) needs a physical constant.
"""

from __future__ import annotations

R_KJ_PER_MOL_K: float = 8.31446261815324e-3
"""Molar gas constant ``k_B N_A`` in kJ/(mol K): OpenMM's ``MOLAR_GAS_CONSTANT_R`` (CODATA 2018), so every
``kT`` matches the OpenMM systems' (checked in ``tests/test_openmm_bridge.py``)."""

__all__ = ["R_KJ_PER_MOL_K"]
