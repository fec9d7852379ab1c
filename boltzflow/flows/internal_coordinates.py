"""Internal coordinates (bonds, angles, dihedrals) as a bijection with an exact log-Jacobian.

:class:`InternalCoordinates` maps Cartesian coordinates ``x`` of shape ``(B, 3N)`` (nm) to
``3N - 6`` internal coordinates and back, following a :class:`~boltzflow.flows.zmatrix.ZMatrix`.

Layout of the internal-coordinate vector (``forward`` input, ``inverse`` output)::

    [ bonds (N-1) | angles (N-2) | dihedrals (N-3) ]

* bonds: ``|r1 - r0|``, ``|r2 - r1|`` of the root atoms, then ``|i - b|`` for each Z-matrix row;
* angles: ``r0-r1-r2``, then ``i-b-a`` for each row, in ``[0, π]``;
* dihedrals: ``i-b-a-d`` for each row, in ``[-π, π)`` (IUPAC sign, as
  :class:`boltzflow.systems.observables.Dihedral`).

Bonds and angles are *linear* features, optionally normalised as ``(value - mean) / scale``
(:meth:`InternalCoordinates.fit_normalization`). Dihedrals start *circular* (``circular`` mask,
raw angles on ``[-π, π)``). Fitted on data, a dihedral whose circular spread is small (amide ω,
impropers, hydrogens on planar or tetrahedral centres) becomes linear too, as
``wrap(value - circular mean) / scale``; only the floppy torsions (φ, ψ, methyl rotors) stay
circular. A stiff dihedral is far better modelled as a narrow Gaussian than as a sharp peak of a
circle map from a uniform base. The generative direction does not wrap a linear dihedral: values
beyond ±π (more than π/scale standard units out) alias onto the circle, a region of negligible
flow density for any dihedral classed as stiff.

Rigid-body motion and the density convention
--------------------------------------------
The 6 rigid-body degrees of freedom are dropped: ``forward`` places root atom ``r0`` at the origin,
``r1`` on the +x axis and ``r2`` in the xy-plane (y > 0), so ``forward(inverse(x))`` equals
:meth:`InternalCoordinates.canonicalize` ``(x)``, i.e. ``x`` up to a rotation and translation.

Densities are defined on the ``3N - 6``-dimensional quotient by rigid motions. Writing
``x = R c(q) + t`` (``q`` the internal coordinates, ``c(q)`` the canonical-frame structure), the
Cartesian volume element factorises as ``d^{3N}x = dt dR J(q) dq`` with ``dR`` the Haar measure on
SO(3) (total mass 8π²) and::

    J(q) = prod_{all N-1 bonds} r**2 * prod_{all N-2 angles} sin(theta)

(for the roots: ``r01**2`` for the direction of ``r1``, ``r12**2 sin(theta012)`` for ``r2``
around the ``r0-r1`` axis; for each row the spherical ``r**2 sin(theta)``). Hence ``forward``
returns ``log J(q)`` (plus ``sum(log scale)`` when normalised) and ``inverse`` returns ``-log J``.
With this convention, for a rigid-motion-invariant Cartesian density such as the Boltzmann weight
``exp(-u(x))``::

    log p_x(x) = log p_ic(q) + logdet_inverse(x)

per unit Cartesian volume, the rigid-body factor ``8π² V`` being a constant. Note that ``J`` is
*not* the Jacobian onto the ``3N - 6`` free Cartesian components of the canonical frame; that one
is smaller by ``r01**2 * r12 * sin(theta012)``.
"""

from __future__ import annotations

import math

import mdtraj as md
import numpy as np
import torch

from boltzflow.flows.base import Bijection
from boltzflow.flows.zmatrix import ZMatrix, zmatrix_from_topology


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(-1)


def _angle(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Angle ``p0-p1-p2`` via ``atan2(|u x v|, u . v)``: accurate near 0 and π, unlike ``acos``."""
    u, v = p0 - p1, p2 - p1
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(u, v), dim=-1), _dot(u, v))


def _dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Torsion ``p0-p1-p2-p3`` in ``[-π, π)``."""
    b0, b1, b2 = p0 - p1, _unit(p2 - p1), p3 - p2
    v = b0 - _dot(b0, b1)[..., None] * b1
    w = b2 - _dot(b2, b1)[..., None] * b1
    phi = torch.atan2(_dot(torch.linalg.cross(b1, v), w), _dot(v, w))
    return torch.where(phi >= math.pi, phi - 2 * math.pi, phi)


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    """Angles mapped to ``[-π, π)``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def _place(
    b: torch.Tensor, a: torch.Tensor, d: torch.Tensor, r: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor
) -> torch.Tensor:
    """Position of atom ``i`` with ``|i-b| = r``, angle ``i-b-a = theta``, torsion ``i-b-a-d = phi`` (NeRF)."""
    e1 = _unit(b - a)
    n = _unit(torch.linalg.cross(a - d, e1))
    m = torch.linalg.cross(n, e1)
    sin = torch.sin(theta)
    local = (-torch.cos(theta), sin * torch.cos(phi), sin * torch.sin(phi))
    return b + r[..., None] * (local[0][..., None] * e1 + local[1][..., None] * m + local[2][..., None] * n)


def _levels(zmatrix: ZMatrix) -> list[np.ndarray]:
    """Z-matrix row indices grouped so that each group only depends on atoms of earlier groups."""
    level = dict.fromkeys(zmatrix.root, 0)
    row_level = []
    for atom, *partners in zmatrix.rows.tolist():
        level[atom] = 1 + max(level[p] for p in partners)
        row_level.append(level[atom])
    row_level_array = np.array(row_level, dtype=np.int64)
    return [np.flatnonzero(row_level_array == k) for k in range(1, row_level_array.max(initial=0) + 1)]


class InternalCoordinates(Bijection):
    """Cartesian ↔ internal coordinates, ``forward``: internal → Cartesian (canonical frame).

    See the module docstring for the feature layout and the log-Jacobian convention
    (``forward`` returns ``log J = sum 2 log r + sum log sin(theta)`` over all bonds and angles).

    Parameters
    ----------
    zmatrix : ZMatrix
        Root atoms and placement rows, e.g. from :func:`zmatrix_from_topology`.

    Attributes
    ----------
    n_atoms, dim : int
        ``N`` and the number of internal coordinates ``3N - 6``.
    bonds, angles, dihedrals : slice
        Where each kind of feature sits in the internal-coordinate vector.
    bond_atoms, angle_atoms, dihedral_atoms : ndarray of int
        The atoms defining each feature, shapes ``(N-1, 2)``, ``(N-2, 3)``, ``(N-3, 4)``.
    circular : torch.Tensor of bool, shape (3N - 6,)
        True for the dihedrals kept periodic on ``[-π, π)``, False for bonds, angles and (after
        :meth:`fit_normalization` on data) stiff dihedrals.
    torsion_index : dict of str to int
        Feature index of the named backbone torsions of ``zmatrix.torsions`` (e.g. ``"phi1"``).
    mean, scale : torch.Tensor, shape (3N - 6,)
        Normalisation ``(value - mean) / scale`` of every feature (circular ones keep 0 and 1).
    """

    def __init__(self, zmatrix: ZMatrix) -> None:
        super().__init__()
        self.zmatrix = zmatrix
        n = zmatrix.n_atoms
        r0, r1, r2 = zmatrix.root
        rows = zmatrix.rows
        self.n_atoms, self.dim = n, 3 * n - 6
        self.bonds, self.angles, self.dihedrals = slice(0, n - 1), slice(n - 1, 2 * n - 3), slice(2 * n - 3, 3 * n - 6)
        self.bond_atoms = np.concatenate([[[r1, r0], [r2, r1]], rows[:, :2]]).astype(np.int64)
        self.angle_atoms = np.concatenate([[[r2, r1, r0]], rows[:, :3]]).astype(np.int64)
        self.dihedral_atoms = rows.copy()
        self.torsion_index = {name: 2 * n - 3 + row for name, row in zmatrix.torsions.items()}
        self._levels = _levels(zmatrix)
        self.register_buffer("circular", torch.arange(self.dim) >= 2 * n - 3)
        self.register_buffer("mean", torch.zeros(self.dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(self.dim, dtype=torch.float64))

    @classmethod
    def from_topology(cls, topology: md.Topology, root: tuple[int, int, int] | None = None) -> InternalCoordinates:
        """Internal coordinates of a molecule from its bond graph (see :func:`zmatrix_from_topology`)."""
        return cls(zmatrix_from_topology(topology, root))

    def _check(self, t: torch.Tensor, width: int, what: str) -> None:
        if t.ndim != 2 or t.shape[1] != width:
            raise ValueError(f"expected {what} of shape (batch, {width}), got {tuple(t.shape)}")

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised internal coordinates of Cartesian ``x`` (B, 3N)."""
        self._check(x, 3 * self.n_atoms, "Cartesian coordinates")
        p = x.reshape(x.shape[0], self.n_atoms, 3)
        bonds = torch.linalg.vector_norm(p[:, self.bond_atoms[:, 0]] - p[:, self.bond_atoms[:, 1]], dim=-1)
        angles = _angle(*(p[:, self.angle_atoms[:, k]] for k in range(3)))
        dihedrals = _dihedral(*(p[:, self.dihedral_atoms[:, k]] for k in range(4)))
        return torch.cat([bonds, angles, dihedrals], dim=1)

    def _log_jacobian(self, raw: torch.Tensor) -> torch.Tensor:
        """``log J(q) = sum 2 log r + sum log |sin theta|``: the volume factor of the quotient."""
        return 2 * raw[:, self.bonds].abs().log().sum(1) + torch.sin(raw[:, self.angles]).abs().log().sum(1)

    def fit_normalization(
        self, x: torch.Tensor, scale: float | None = None, max_linear_std: float | None = 0.6,
        all_linear: bool = False,
    ) -> InternalCoordinates:
        """Fit the feature normalisation (and which dihedrals stay circular) to frames ``x``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, 3N)
            Cartesian frames (e.g. MD samples, or just the reference structure with ``scale``).
        scale : float, optional
            A common scale (nm for bonds, rad for angles) around the mean of ``x``; dihedrals then
            all stay circular. Default: the per-feature standard deviation over ``x`` (needs
            ``B >= 2``), floored at 1e-3 so that constrained bonds stay invertible.
        max_linear_std : float or None
            Dihedrals whose circular standard deviation ``sqrt(-2 ln R)`` (``R`` the mean
            resultant length) over ``x`` is below this (rad) become linear features, normalised
            around their circular mean — except the named backbone torsions (φ, ψ), which stay
            circular even if the data saw one basin only. ``None`` keeps every dihedral circular.
        all_linear : bool
            Every dihedral linear (for models on ``R^d`` such as continuous flows), each with its
            branch cut in the least populated of 36 bins of the data: the mean sits opposite
            that bin, the scale is the standard deviation of the wrapped deviation. Overrides
            ``max_linear_std``.

        Returns
        -------
        InternalCoordinates
            ``self``, for chaining.
        """
        raw = self._raw(x.detach().to(torch.float64))
        n_linear = 2 * self.n_atoms - 3
        mean, new_scale = torch.zeros(self.dim, dtype=torch.float64), torch.ones(self.dim, dtype=torch.float64)
        circular = torch.arange(self.dim) >= n_linear
        if scale is not None:
            mean[:n_linear] = raw[:, :n_linear].mean(0)
            new_scale[:n_linear] = float(scale)
        else:
            if raw.shape[0] < 2:
                raise ValueError("fit_normalization needs at least 2 frames to estimate a scale, or pass scale=")
            mean[:n_linear] = raw[:, :n_linear].mean(0)
            new_scale[:n_linear] = raw[:, :n_linear].std(0).clamp_min(1e-3)
            if all_linear:
                dihedrals = raw[:, n_linear:]
                edges = torch.linspace(-math.pi, math.pi, 37, dtype=torch.float64)
                counts = torch.stack([((dihedrals >= lo) & (dihedrals < hi)).sum(0) for lo, hi in zip(edges[:-1], edges[1:])])
                cut = edges[:-1][counts.argmin(0)] + math.pi / 36  # centre of the emptiest bin
                centre = _wrap(cut + math.pi)
                mean[n_linear:] = centre
                new_scale[n_linear:] = _wrap(dihedrals - centre).std(0).clamp_min(1e-3)
                circular[n_linear:] = False
            elif max_linear_std is not None:
                dihedrals = raw[:, n_linear:]
                resultant = torch.stack([torch.cos(dihedrals).mean(0), torch.sin(dihedrals).mean(0)])
                spread = torch.sqrt(-2 * torch.log(torch.linalg.vector_norm(resultant, dim=0).clamp(1e-12, 1.0)))
                stiff = spread < max_linear_std
                stiff[[k - n_linear for k in self.torsion_index.values()]] = False  # backbone φ/ψ: always circular
                centre = torch.atan2(resultant[1], resultant[0])
                deviation = _wrap(dihedrals - centre)
                mean[n_linear:] = torch.where(stiff, centre, 0.0)
                new_scale[n_linear:] = torch.where(stiff, deviation.std(0).clamp_min(1e-3), 1.0)
                circular[n_linear:] = ~stiff
        self.mean.copy_(mean)
        self.scale.copy_(new_scale)
        self.circular.copy_(circular)
        return self

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cartesian ``(B, 3N)`` → internal coordinates ``(B, 3N - 6)`` and ``-log J - sum(log scale)``."""
        raw = self._raw(x)
        n_linear = 2 * self.n_atoms - 3
        mean, scale = self.mean.to(x), self.scale.to(x)
        centred = raw - mean
        centred = torch.cat([centred[:, :n_linear], _wrap(centred[:, n_linear:])], dim=1)
        return centred / scale, -self._log_jacobian(raw) - scale.log().sum()

    def in_domain(self, z: torch.Tensor) -> torch.Tensor:
        """Rows ``(B,)`` of internal coordinates on which :meth:`forward` is one-to-one.

        Bonds positive, angles in ``(0, π)``, every dihedral within one turn: ``[-π, π)`` for a
        circular one, within ``±π`` of its mean for a linear one. A density on all of ``R^(3N-6)``
        (a continuous flow's) is a density on this domain plus mass outside it that
        :meth:`forward` would alias onto other structures; weights of such rows must be zero.
        """
        self._check(z, self.dim, "internal coordinates")
        centred = z * self.scale.to(z)
        raw = centred + self.mean.to(z)
        angles = raw[:, self.angles]
        dihedrals = centred[:, self.dihedrals]  # circular ones have mean 0: raw angle itself
        return ((raw[:, self.bonds] > 0).all(1) & ((angles > 0) & (angles < math.pi)).all(1)
                & ((dihedrals >= -math.pi) & (dihedrals < math.pi)).all(1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal coordinates ``(B, 3N - 6)`` → Cartesian ``(B, 3N)`` in the canonical frame.

        Returns the coordinates and ``log J + sum(log scale)``.
        """
        self._check(z, self.dim, "internal coordinates")
        raw = z * self.scale.to(z) + self.mean.to(z)
        bonds, angles, dihedrals = raw[:, self.bonds], raw[:, self.angles], raw[:, self.dihedrals]

        r01, r12, theta = bonds[:, 0], bonds[:, 1], angles[:, 0]
        zero = torch.zeros_like(r01)
        root = torch.stack(
            [
                torch.stack([zero, zero, zero], -1),
                torch.stack([r01, zero, zero], -1),
                torch.stack([r01 - r12 * torch.cos(theta), r12 * torch.sin(theta), zero], -1),
            ],
            dim=1,
        )
        root_atoms = torch.as_tensor(self.zmatrix.root, device=z.device)
        p = z.new_zeros(z.shape[0], self.n_atoms, 3).index_copy(1, root_atoms, root)
        rows = self.zmatrix.rows
        for level in self._levels:
            i, b, a, d = (torch.as_tensor(rows[level, k], device=z.device) for k in range(4))
            k = torch.as_tensor(level, device=z.device)
            placed = _place(p[:, b], p[:, a], p[:, d], bonds[:, 2 + k], angles[:, 1 + k], dihedrals[:, k])
            p = p.index_copy(1, i, placed)
        return p.reshape(z.shape[0], -1), self._log_jacobian(raw) + self.scale.to(z).log().sum()

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor:
        """Move each frame rigidly into the canonical frame of the root atoms (``forward(inverse(x))`` exactly).

        Use it to compare structures modulo rigid motion: root ``r0`` goes to the origin, ``r1`` to
        the +x axis and ``r2`` to the xy-plane with y > 0 (a proper rotation: chirality is kept).

        Parameters
        ----------
        x : torch.Tensor, shape (B, 3N)

        Returns
        -------
        torch.Tensor, shape (B, 3N)
        """
        self._check(x, 3 * self.n_atoms, "Cartesian coordinates")
        p = x.reshape(x.shape[0], self.n_atoms, 3)
        r0, r1, r2 = self.zmatrix.root
        origin = p[:, r0 : r0 + 1]
        e1 = _unit(p[:, r1] - p[:, r0])
        v = p[:, r2] - p[:, r0]
        e2 = _unit(v - _dot(v, e1)[:, None] * e1)
        rotation = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=1)  # rows: the new axes
        return ((p - origin) @ rotation.transpose(1, 2)).reshape(x.shape)
