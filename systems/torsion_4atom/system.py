"""An OpenMM 4-atom chain whose torsion has an exactly known distribution.

Four particles (12 Da) joined by harmonic bonds ``½ k_b (r − r0)²`` and angles ``½ k_θ (θ − θ0)²``,
with the torsion ``V(φ) = 4 (1 + cos 3φ) + 2 (1 − cos(φ − 1))`` kJ/mol on atoms 0-1-2-3 and no
other interaction. In bond lengths, angles, the dihedral and the 6 rigid-body coordinates the
Cartesian volume element factorises (``r² dr`` per bond, ``sin θ dθ`` per angle, ``dφ`` for the
dihedral), so every internal coordinate is independent: ``p(φ) ∝ exp(−V(φ)/kT)`` on (−π, π] and
``⟨u⟩`` is a sum of 1D quadratures (:func:`exact_answers`). The centre of mass and the orientation
are free (no restraint), so ``log Z`` is not defined. A target for the OpenMM samplers (``md``,
``umbrella``) with exact answers; barriers ≈ 3 kT, so plain MD crosses them often.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openmm
from scipy import integrate

import boltzflow as bf
from boltzflow.energy.openmm_bridge import OpenMMEnergy
from boltzflow.energy.units import R_KJ_PER_MOL_K
from boltzflow.systems.observables import State, observable_from_spec

MASS_DA = 12.0
BOND_NM, BOND_K = 0.15, 2.0e5          # nm, kJ/mol/nm²
ANGLE_RAD, ANGLE_K = 1.911, 400.0      # rad (109.5°), kJ/mol/rad²
TORSION = "4 * (1 + cos(3 * theta)) + 2 * (1 - cos(theta - 1))"  # kJ/mol


def torsion_kj(phi: np.ndarray | float) -> np.ndarray | float:
    """``V(φ)`` in kJ/mol (the same expression as the OpenMM ``CustomTorsionForce``)."""
    return 4.0 * (1.0 + np.cos(3.0 * phi)) + 2.0 * (1.0 - np.cos(phi - 1.0))


def start_positions() -> np.ndarray:
    """A ``(4, 3)`` chain at the ideal bonds and angles with the dihedral at 1 rad (nm)."""
    b, theta, phi = BOND_NM, ANGLE_RAD, 1.0
    p1, p2 = np.zeros(3), np.array([b, 0.0, 0.0])
    p0 = p1 + b * np.array([-np.cos(np.pi - theta), np.sin(np.pi - theta), 0.0])
    p3 = p2 + b * np.array([np.cos(np.pi - theta), np.sin(np.pi - theta) * np.cos(phi),
                            np.sin(np.pi - theta) * np.sin(phi)])
    return np.stack([p0, p1, p2, p3])


def openmm_system() -> openmm.System:
    """The OpenMM system: 3 bonds, 2 angles, 1 torsion, nothing else."""
    system = openmm.System()
    for _ in range(4):
        system.addParticle(MASS_DA)
    bonds = openmm.HarmonicBondForce()
    for i in range(3):
        bonds.addBond(i, i + 1, BOND_NM, BOND_K)
    angles = openmm.HarmonicAngleForce()
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, ANGLE_RAD, ANGLE_K)
    torsion = openmm.CustomTorsionForce(TORSION)
    torsion.addTorsion(0, 1, 2, 3, [])
    for force in (bonds, angles, torsion):
        system.addForce(force)
    return system


def exact_answers(temperature: float = 300.0) -> dict[str, float]:
    """Exact ``p_a``, ``p_b``, ``delta_f_b_minus_a``, ``mean_phi`` and ``mean_energy`` (kT) by quadrature.

    States are ``A = φ < 0`` and ``B = φ > 0``.
    """
    kT = R_KJ_PER_MOL_K * temperature

    def mean(energy_kj: Any, jacobian: Any, lo: float, hi: float, points: list[float] | None = None) -> float:
        weight = lambda q: jacobian(q) * np.exp(-energy_kj(q) / kT)  # noqa: E731
        z = integrate.quad(weight, lo, hi, points=points, limit=400, epsabs=0, epsrel=1e-12)[0]
        return integrate.quad(lambda q: energy_kj(q) / kT * weight(q), lo, hi, points=points, limit=400,
                              epsabs=0, epsrel=1e-12)[0] / z

    width_r = np.sqrt(kT / BOND_K)
    bond = mean(lambda r: 0.5 * BOND_K * (r - BOND_NM) ** 2, lambda r: r**2,
                BOND_NM - 40 * width_r, BOND_NM + 40 * width_r, [BOND_NM])
    angle = mean(lambda t: 0.5 * ANGLE_K * (t - ANGLE_RAD) ** 2, np.sin, 0.0, np.pi, [ANGLE_RAD])
    torsion = mean(torsion_kj, np.ones_like, -np.pi, np.pi, [0.0])
    p = lambda q: np.exp(-torsion_kj(q) / kT)  # noqa: E731
    quad = lambda f, lo, hi: integrate.quad(f, lo, hi, limit=400, epsabs=0, epsrel=1e-12)[0]  # noqa: E731
    z = quad(p, -np.pi, np.pi)
    p_a = quad(p, -np.pi, 0.0) / z
    return {
        "p_a": p_a,
        "p_b": 1.0 - p_a,
        "delta_f_b_minus_a": float(-np.log((1.0 - p_a) / p_a)),
        "mean_phi": quad(lambda q: q * p(q), -np.pi, np.pi) / z,
        "mean_energy": 3 * bond + 2 * angle + torsion,
    }


def build(definition: dict[str, Any], **options: Any) -> bf.System:
    """The system of this folder. Options: ``platform`` (OpenMM platform, default ``Reference``)."""
    unknown = set(options) - {"platform"}
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))} for torsion_4atom (allowed: platform)")
    omm = openmm_system()
    temperature = float(definition["temperature"])
    energy = OpenMMEnergy(omm, temperature=temperature, platform=options.get("platform", "Reference"))
    observables = {name: observable_from_spec(name, spec, 3) for name, spec in definition["observables"].items()}
    return bf.System(
        name=definition["name"], energy=energy, temperature=temperature, x0=start_positions().reshape(-1),
        openmm_system=omm, backend="openmm", units=definition["units"], observables=observables,
        states={name: State(expr, observables) for name, expr in definition["states"].items()},
        description=definition["description"],
    )
