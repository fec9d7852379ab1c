"""A rigid regular tetrahedron in an external field with a cubic term (numba kernel).

Four sites at distance ``bond`` (nm) from a centre fixed at the origin, body-frame positions
``bond · (±1, ±1, ±1)/√3`` with an even number of minus signs, site ``i`` carrying a charge-like
weight ``c_i``. The field energy of the sites ``a_i`` (nm) is

    U_field = −κ Σ_i c_i y_i³          (kJ/mol; y_i the lab y coordinate of site i)

— a third-order term on purpose: a uniform field and a uniform field gradient exert no torque
on a regular tetrahedron with equal charges (its first and second moments are isotropic), while
``Σ_i (n·v_i)³ = (8/√3) n_x n_y n_z`` for the body-frame field direction ``n`` has its maxima at
the four vertex directions. So the orientations with one vertex pointing up (+y) are the four
minima, ``(8/9) κ bond³ c_i`` deep before the small contribution of the other sites; unequal
``c_i`` give the four modes unequal weights.

The configuration is the 12 Cartesian coordinates of the four sites. The energy is that of a
rigid body for *any* coordinates: the field acts on the ideal tetrahedron ``P_i = R(x) r_i`` placed
by the frame ``R(x)`` of sites 0 and 1 (Gram–Schmidt: ``e₁ ∥ a₀``, ``e₂`` from ``a₁``), and any
deviation from it costs a harmonic rigidity term,

    U = U_field(P(x)) + (k/2) Σ_i |a_i − P_i(x)|².

For rigid coordinates ``P(x) = x``, the second term vanishes and ``U`` is exactly the field energy
(the same expression as an OpenMM ``CustomExternalForce``, checked in the tests). For non-rigid
coordinates, because the frame is rotation-equivariant and both terms are rotation-invariant
functions of the frame-relative deviations, the Boltzmann distribution of ``x`` has exactly the
rigid body's orientation distribution (with respect to the Haar measure) for every ``k``: samplers
that move the four sites independently (MALA, HMC) sample the rigid orientations correctly, with
``k`` only adding ``≈ 9/2 kT`` of rigidity energy to ``⟨u⟩``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .base import Energy
from .particles import FASTMATH, call_kernel, check_finite
from .units import R_KJ_PER_MOL_K


def tetrahedron_sites(bond: float) -> np.ndarray:
    """Body-frame sites ``(4, 3)`` of a regular tetrahedron with centre–vertex distance ``bond``."""
    signs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
    return bond * signs / np.sqrt(3.0)


def vertex_up(x: np.ndarray, vertex: int) -> np.ndarray:
    """1.0 where site ``vertex`` has the largest y coordinate of the four, else 0.0 (``x (N, 12) -> (N,)``).

    The mode "vertex i up" of the tetrahedron in the field: ``⟨vertex_up(·, i)⟩`` is its weight.
    """
    y = np.asarray(x, dtype=np.float64).reshape(np.shape(x)[0], 4, 3)[..., 1]
    return (np.argmax(y, axis=1) == vertex).astype(np.float64)


def vertex_up_rotation(direction: np.ndarray) -> np.ndarray:
    """Rotation matrices turning unit directions ``(..., 3)`` to +y by the smallest angle, ``(..., 3, 3)``.

    (Rodrigues' formula; a direction pointing straight down is turned by 180° about x.)
    """
    a = np.asarray(direction, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    axis = np.stack([-a[..., 2], np.zeros_like(a[..., 0]), a[..., 0]], axis=-1)  # a × ŷ
    c = a[..., 1]
    k = np.zeros(a.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 0] = -axis[..., 2], axis[..., 1], axis[..., 2]
    k[..., 1, 2], k[..., 2, 0], k[..., 2, 1] = -axis[..., 0], -axis[..., 1], axis[..., 0]
    down = c < -1.0 + 1e-12
    scale = np.where(down, 0.0, 1.0 / np.where(down, 1.0, 1.0 + c))
    rotation = np.eye(3) + k + (k @ k) * scale[..., None, None]
    return np.where(down[..., None, None], np.diag([1.0, -1.0, -1.0]), rotation)


def _frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gram–Schmidt frame (columns ``e1, e2, e3``) of two vectors (numpy, for the reference)."""
    e1 = a / np.linalg.norm(a)
    e2 = b - (b @ e1) * e1
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _tetrahedron_field_kernel(
    x: np.ndarray,
    body: np.ndarray,
    kappa: np.ndarray,
    rigidity: float,
    inv_kT: float,
    need_gradient: bool,
    energy: np.ndarray,
    gradient: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Energy and gradient; ``body (4, 3)``: the sites in the Gram–Schmidt frame of sites 0 and 1."""
    for row in prange(x.shape[0]):
        ax, ay, az = x[row, 0], x[row, 1], x[row, 2]
        bx, by, bz = x[row, 3], x[row, 4], x[row, 5]
        na = np.sqrt(ax * ax + ay * ay + az * az)
        e1x, e1y, e1z = ax / na, ay / na, az / na
        s = bx * e1x + by * e1y + bz * e1z
        cx, cy, cz = bx - s * e1x, by - s * e1y, bz - s * e1z
        nc = np.sqrt(cx * cx + cy * cy + cz * cz)
        e2x, e2y, e2z = cx / nc, cy / nc, cz / nc
        e3x, e3y, e3z = e1y * e2z - e1z * e2y, e1z * e2x - e1x * e2z, e1x * e2y - e1y * e2x
        u = 0.0
        # dU/de1, dU/de2, dU/de3 accumulated over the sites
        g1x = g1y = g1z = g2x = g2y = g2z = g3x = g3y = g3z = 0.0
        for i in range(4):
            c0, c1, c2 = body[i, 0], body[i, 1], body[i, 2]
            px = c0 * e1x + c1 * e2x + c2 * e3x
            py = c0 * e1y + c1 * e2y + c2 * e3y
            pz = c0 * e1z + c1 * e2z + c2 * e3z
            dx, dy, dz = x[row, 3 * i] - px, x[row, 3 * i + 1] - py, x[row, 3 * i + 2] - pz
            u += -kappa[i] * py * py * py + 0.5 * rigidity * (dx * dx + dy * dy + dz * dz)
            if need_gradient:
                gradient[row, 3 * i] = rigidity * dx * inv_kT
                gradient[row, 3 * i + 1] = rigidity * dy * inv_kT
                gradient[row, 3 * i + 2] = rigidity * dz * inv_kT
                # dU/dP_i
                hx, hy, hz = -rigidity * dx, -3.0 * kappa[i] * py * py - rigidity * dy, -rigidity * dz
                g1x += c0 * hx
                g1y += c0 * hy
                g1z += c0 * hz
                g2x += c1 * hx
                g2y += c1 * hy
                g2z += c1 * hz
                g3x += c2 * hx
                g3y += c2 * hy
                g3z += c2 * hz
        energy[row] = u * inv_kT
        if need_gradient:
            # e3 = e1 × e2
            t1x = g1x + (e2y * g3z - e2z * g3y)
            t1y = g1y + (e2z * g3x - e2x * g3z)
            t1z = g1z + (e2x * g3y - e2y * g3x)
            t2x = g2x + (g3y * e1z - g3z * e1y)
            t2y = g2y + (g3z * e1x - g3x * e1z)
            t2z = g2z + (g3x * e1y - g3y * e1x)
            # e2 = c / |c|
            d2 = e2x * t2x + e2y * t2y + e2z * t2z
            hcx, hcy, hcz = (t2x - d2 * e2x) / nc, (t2y - d2 * e2y) / nc, (t2z - d2 * e2z) / nc
            # c = b − (b·e1) e1
            d1 = e1x * hcx + e1y * hcy + e1z * hcz
            gradient[row, 3] += (hcx - d1 * e1x) * inv_kT
            gradient[row, 4] += (hcy - d1 * e1y) * inv_kT
            gradient[row, 5] += (hcz - d1 * e1z) * inv_kT
            t1x += -s * hcx - d1 * bx
            t1y += -s * hcy - d1 * by
            t1z += -s * hcz - d1 * bz
            # e1 = a / |a|
            d0 = e1x * t1x + e1y * t1y + e1z * t1z
            gradient[row, 0] += (t1x - d0 * e1x) / na * inv_kT
            gradient[row, 1] += (t1y - d0 * e1y) / na * inv_kT
            gradient[row, 2] += (t1z - d0 * e1z) / na * inv_kT


class TetrahedronFieldEnergy(Energy):
    """Rigid tetrahedron in the cubic external field ``−κ Σ c_i y_i³`` (numba kernel, float64).

    Parameters
    ----------
    kappa : float
        Field strength κ in kJ mol⁻¹ nm⁻³ (positive: vertices prefer +y).
    charges : sequence of 4 float
        Per-site weights ``c_i``.
    bond : float
        Centre–vertex distance in nm (methane's C–H: 0.109).
    temperature : float
        Kelvin; ``kT = R T`` with OpenMM's gas constant.
    rigidity : float
        Harmonic constant ``k`` (kJ mol⁻¹ nm⁻²) of deviations from the rigid tetrahedron; it never
        changes the orientation distribution (module docstring), only how stiff the sites are
        for samplers that move them independently.
    """

    def __init__(self, kappa: float, charges, bond: float = 0.109, temperature: float = 300.0,
                 rigidity: float = 1e5) -> None:
        super().__init__(12, (4, 3))
        self.kappa = check_finite("kappa", kappa)
        charges = np.asarray(charges, dtype=np.float64)
        if charges.shape != (4,) or not np.isfinite(charges).all():
            raise ValueError(f"charges must be 4 finite numbers, got {charges!r}")
        self.charges = charges
        self.bond = check_finite("bond", bond, positive=True)
        self.temperature = check_finite("temperature", temperature, positive=True)
        self.rigidity = check_finite("rigidity", rigidity, non_negative=True)
        self.kT = R_KJ_PER_MOL_K * self.temperature
        self.reference = tetrahedron_sites(self.bond)
        frame = _frame(self.reference[0], self.reference[1])
        self._body = np.ascontiguousarray(self.reference @ frame)  # sites in the frame of sites 0 and 1

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return call_kernel(_tetrahedron_field_kernel, x, need_gradient, self._body, self.kappa * self.charges,
                           self.rigidity, 1.0 / self.kT)

    def __repr__(self) -> str:
        return (f"TetrahedronFieldEnergy(kappa={self.kappa:g}, charges={self.charges.tolist()}, bond={self.bond:g}, "
                f"temperature={self.temperature:g})")


__all__ = ["R_KJ_PER_MOL_K", "TetrahedronFieldEnergy", "tetrahedron_sites", "vertex_up", "vertex_up_rotation"]
