"""Bijections of the unit 3-sphere with antipodal symmetry ``f(−q) = −f(q)``, with exact log-Jacobians.

Measure convention (used by every density in :mod:`boltzflow.flows.rigid`): densities of a
quaternion are with respect to the **surface measure σ of the unit sphere S³ ⊂ R⁴** (total area
``2π²``). The uniform density is ``1 / (2π²)``; it is the Haar measure of SO(3) lifted to its double
cover. A density ``p`` on S³ with ``p(−q) = p(q)`` is a density on SO(3): with respect to the
pushed-forward measure (total mass ``π²`` on SO(3), each rotation counted once) it is ``2 p(q)``,
with respect to the Haar probability measure it is ``2π² p(q)``, and with respect to the Euler-angle
measure ``sin β dα dβ dγ`` (total ``8π²``) it is ``p(q) / 4``. A map with ``f(−q) = −f(q)`` sends
antipodally symmetric densities to antipodally symmetric ones, so every flow built from these maps
is a proper flow on SO(3). The log-Jacobians below are ``log |det|`` of the differential between
tangent spaces with orthonormal bases (the change of σ), so ``log q_out(f(q)) = log q_in(q) − logdet``.

Two maps:

* :func:`linear_map`: ``q ↦ A q / |A q|`` for an invertible 4×4 matrix ``A = exp(M)``. Its
  log-Jacobian is ``log|det A| − 4 log|A q|`` and its inverse is the same map with ``A⁻¹``;
  pushed through it, the uniform density becomes the angular central Gaussian with covariance
  ``A Aᵀ``. It contains the *double-Möbius* map of Köhler et al. (2023),
  ``q ↦ normalise(m_p(q) − m_p(−q))`` with the sphere Möbius map
  ``m_p(q) = (1 − |p|²)(q − p)/|q − p|² − p``: on every great circle through ``p̂ = p/|p|`` that
  map is ``tan φ' = k tan φ`` (``φ`` the angle from ``p̂``, ``k = (1 + |p|²)/(1 − |p|²)``), which is
  ``A = p̂p̂ᵀ + k (I − p̂p̂ᵀ)`` (checked in the tests). Conditioned on other molecules, it moves
  and concentrates each molecule's orientation density; compositions of unconditioned linear maps
  are again linear (a group), so multimodality needs the next map.
* :func:`meridian_spline`: fix an axis ``p̂ ∈ S³`` and write ``q = cos θ p̂ + sin θ u`` with
  ``θ ∈ [0, π]`` and ``u`` a unit vector orthogonal to ``p̂`` (a point of S², in an orthonormal
  basis of ``p̂⊥``). The map keeps ``u`` and moves ``θ`` along its meridian by a monotone
  rational-quadratic spline ``g_u`` of ``[0, π]`` whose parameters may depend on ``u`` (and on
  anything else the map keeps): a coupling layer on S³. Log-Jacobian
  ``log g_u'(θ) + 2 log(sin g_u(θ) / sin θ)`` (σ = sin²θ dθ dΩ₂); the inverse inverts the spline
  in closed form. Antipodal symmetry needs ``g_{−u}(π − θ) = π − g_u(θ)``, i.e. the spline
  parameters at ``−u`` are those at ``u`` mirrored: :func:`symmetrize_spline_parameters` builds them
  as ``P(u) = N(u) + mirror(N(−u))`` from any network ``N``. Both directions evaluate the spline
  on the canonical half ``q·p̂ ≥ 0`` and restore the sign, so ``f(−q) = −f(q)`` holds bit for bit;
  the boundary derivatives of ``g`` are 1, so the map is smooth at the poles ``±p̂``.
"""

from __future__ import annotations

import math

import torch

from ..base import Bijection
from ..nets import MLP
from ..splines import rq_spline
from .conditioners import MoleculeAttention, direction_features, periodic_features
from .layout import RigidLayout


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def linear_map(q: torch.Tensor, log_matrix: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``q ↦ A q / |A q|`` with ``A = exp(log_matrix)`` (or its inverse), and ``log |det|`` on S³.

    Parameters
    ----------
    q : Tensor, shape (..., 4)
        Unit quaternions.
    log_matrix : Tensor, shape (..., 4, 4)
        ``M`` with ``A = exp(M)`` (broadcast against ``q``); ``M = 0`` is the identity, and so is
        any multiple of the identity matrix.
    inverse : bool
        Apply ``q ↦ A⁻¹ q / |A⁻¹ q|`` instead.

    Returns
    -------
    q_out : Tensor, shape (..., 4)
    logdet : Tensor, shape (...)
        ``log |det|`` of the map applied, with respect to the surface measure:
        ``log|det A^{±1}| − 4 log|A^{±1} q|``.
    """
    sign = -1.0 if inverse else 1.0
    matrix = torch.linalg.matrix_exp(sign * log_matrix)
    image = torch.einsum("...ij,...j->...i", matrix, q)
    norm = torch.linalg.vector_norm(image, dim=-1)
    trace = torch.diagonal(log_matrix, dim1=-2, dim2=-1).sum(-1)
    return image / norm[..., None], sign * trace - 4.0 * torch.log(norm)


def orthonormal_complement(axis: torch.Tensor) -> torch.Tensor:
    """A ``(3, 4)`` matrix whose rows are an orthonormal basis of the complement of the unit ``axis (4,)``."""
    axis = _unit(axis.to(torch.float64))
    # Householder reflection taking e_k (the largest component of the axis) to the axis
    k = int(axis.abs().argmax())
    e = torch.zeros(4, dtype=torch.float64)
    e[k] = 1.0
    v = axis - e if float(axis[k]) < 0 else axis + e  # well conditioned choice
    house = torch.eye(4, dtype=torch.float64) - 2.0 * torch.outer(v, v) / (v @ v)
    # house maps e_k to ∓axis; its other columns span the complement
    rows = [house[:, j] for j in range(4) if j != k]
    return torch.stack(rows)


def meridian_coordinates(
    q: torch.Tensor, axis: torch.Tensor, basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical meridian coordinates of ``q`` around ``axis``: sign, angle, direction, degeneracy.

    Parameters
    ----------
    q : Tensor, shape (..., 4)
        Unit quaternions.
    axis : Tensor, shape (4,)
        Unit axis ``p̂``.
    basis : Tensor, shape (3, 4)
        Orthonormal basis of ``p̂⊥`` (:func:`orthonormal_complement`).

    Returns
    -------
    sign : Tensor, shape (...)
        ``±1`` with ``sign · q · p̂ ≥ 0`` (``q`` and ``−q`` get opposite signs).
    angle : Tensor, shape (...)
        ``θ ∈ [0, π/2]``: the angle between ``sign · q`` and ``p̂``.
    direction : Tensor, shape (..., 3)
        Unit vector of the component of ``sign · q`` orthogonal to ``p̂`` (in ``basis``
        coordinates), identical for ``q`` and ``−q``; ``(0, 0, 1)`` where ``q = ±p̂``.
    degenerate : Tensor, shape (...)
        True where ``q = ±p̂`` to within rounding (the direction is undefined there).
    """
    axis, basis = axis.to(q), basis.to(q)
    c = q @ axis
    sign = torch.where(c < 0, -torch.ones_like(c), torch.ones_like(c))
    ortho = sign[..., None] * (q @ basis.T)
    length = torch.linalg.vector_norm(ortho, dim=-1)
    degenerate = length <= torch.finfo(q.dtype).eps * 1e-3
    safe = torch.where(degenerate, torch.ones_like(length), length)
    fallback = torch.zeros_like(ortho)
    fallback[..., 2] = 1.0
    direction = torch.where(degenerate[..., None], fallback, ortho / safe[..., None])
    angle = torch.atan2(length, c.abs())
    return sign, angle, direction, degenerate


def mirror_spline_parameters(params: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Parameters of the spline ``θ ↦ π − g(π − θ)`` from those of ``g`` (layout of :func:`meridian_spline`).

    Widths and heights are reversed; so are the ``K − 1`` interior knot derivatives (the last
    derivative entry, unused by a linear-domain spline, stays in place).
    """
    k = num_bins
    widths, heights, derivatives = params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]
    return torch.cat(
        [widths.flip(-1), heights.flip(-1), derivatives[..., : k - 1].flip(-1), derivatives[..., k - 1 :]], dim=-1
    )


def symmetrize_spline_parameters(raw: torch.Tensor, raw_flipped: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``P(u) = N(u) + mirror(N(−u))`` from ``raw = N(u)`` and ``raw_flipped = N(−u)``.

    Then ``P(−u) = mirror(P(u))`` exactly (the sum commutes bit for bit), which is what makes the
    meridian spline continuous across the great sphere ``q · p̂ = 0`` and antipodally symmetric.
    """
    return raw + mirror_spline_parameters(raw_flipped, num_bins)


def meridian_spline(
    q: torch.Tensor,
    axis: torch.Tensor,
    basis: torch.Tensor,
    params: torch.Tensor,
    num_bins: int,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``q`` along its meridian around ``axis`` by a rational-quadratic spline of the polar angle.

    Parameters
    ----------
    q : Tensor, shape (..., 4)
        Unit quaternions.
    axis : Tensor, shape (4,)
        Unit axis ``p̂``.
    basis : Tensor, shape (3, 4)
        Orthonormal basis of ``p̂⊥``.
    params : Tensor, shape (..., 3 K)
        Spline parameters for the *canonical* direction of each ``q`` (see
        :func:`meridian_coordinates`): ``K`` widths, ``K`` heights, ``K`` derivatives (the last
        unused), as from :func:`symmetrize_spline_parameters` so that the map is continuous.
        All zero gives the identity.
    num_bins : int
        ``K``.
    inverse : bool
        Apply the inverse map (the parameters must then be computed from the direction of the
        *output* point, which the map keeps).

    Returns
    -------
    q_out : Tensor, shape (..., 4)
    logdet : Tensor, shape (...)
        ``log |det|`` of the map applied with respect to the surface measure.
    """
    k = num_bins
    if params.shape[-1] != 3 * k:
        raise ValueError(f"meridian spline needs 3*num_bins = {3 * k} parameters, got {params.shape[-1]}")
    sign, angle, direction, degenerate = meridian_coordinates(q, axis, basis)
    new_angle, log_slope = rq_spline(
        angle, params[..., :k], params[..., k : 2 * k], params[..., 2 * k :], inverse=inverse,
        left=0.0, right=math.pi,
    )
    sin_old, sin_new = torch.sin(angle), torch.sin(new_angle)
    ratio = torch.where(degenerate, torch.ones_like(sin_old), sin_new / torch.where(degenerate, 1.0, sin_old))
    # slope at the poles is the boundary derivative 1; ratio → g'(0) = 1 too
    logdet = log_slope + 2.0 * torch.log(ratio)
    axis, basis = axis.to(q), basis.to(q)
    out = torch.cos(new_angle)[..., None] * axis + sin_new[..., None] * (direction @ basis)
    out = sign[..., None] * out
    return out, logdet


class LinearS3Layer(Bijection):
    """Every molecule's quaternion through :func:`linear_map`, ``A_i = exp(M_i)`` conditioned on the positions.

    ``M_i`` (16 numbers per molecule, bounded entrywise by ``max_entry`` through a ``tanh``) comes
    from :class:`MoleculeAttention` over the static features and the fractional positions of all
    molecules, which this layer keeps. Without free positions it is one learned matrix per flow
    layer (shared by the molecules). Identity at initialisation.

    Parameters
    ----------
    layout : RigidLayout
        State layout.
    width, blocks, heads : int
        Conditioner size (:class:`MoleculeAttention`).
    max_entry : float
        Bound on ``|M_ij|``.
    """

    def __init__(self, layout: RigidLayout, width: int = 64, blocks: int = 2, heads: int = 4,
                 max_entry: float = 4.0) -> None:
        super().__init__()
        self.layout = layout
        self.max_entry = float(max_entry)
        in_features = layout.static_width + (6 if layout.periodic else 0)
        self.conditioner = MoleculeAttention(in_features, 16, width, blocks if layout.periodic else 0, heads)

    def _log_matrix(self, s: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
        parts = [periodic_features(self.layout.all_fractional(s))] if self.layout.periodic else []
        raw = self.conditioner(self.layout.features(batch, like, *parts))
        return (self.max_entry * torch.tanh(raw / self.max_entry)).reshape(batch, -1, 4, 4)

    def _transform(self, z: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.layout.split(z)
        q_new, logdet = linear_map(q, self._log_matrix(s, z.shape[0], z), inverse=inverse)
        return self.layout.join(q_new, s), logdet.sum(-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=True)


class MeridianS3Layer(Bijection):
    """Every molecule's quaternion along its meridian around a fixed axis (:func:`meridian_spline`).

    The spline of molecule ``i`` depends on its own meridian direction ``u_i`` (kept by the map)
    through ``P = N(c_i, u_i) + mirror(N(c_i, −u_i))`` (:func:`symmetrize_spline_parameters`), where
    the context ``c_i`` comes from :class:`MoleculeAttention` over what the layer keeps and is even
    in every orientation: static features, fractional positions, and ``u_j u_jᵀ`` of all molecules.
    So molecules' orientations condition each other, and each density stays a density on SO(3).
    Identity at initialisation.

    Parameters
    ----------
    layout : RigidLayout
        State layout.
    axis : Tensor, shape (4,)
        The axis ``p̂`` (normalised here; stored as a buffer).
    num_bins : int
        Spline bins ``K``.
    hidden : sequence of int
        Hidden widths of the network ``N``.
    width, blocks, heads : int
        Context network size.
    """

    def __init__(self, layout: RigidLayout, axis: torch.Tensor, num_bins: int = 8, hidden: tuple[int, ...] = (64, 64),
                 width: int = 64, blocks: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.layout = layout
        self.num_bins = int(num_bins)
        axis = torch.as_tensor(axis, dtype=torch.float64)
        axis = axis / torch.linalg.vector_norm(axis)
        self.register_buffer("axis", axis)
        self.register_buffer("basis", orthonormal_complement(axis))
        in_features = layout.static_width + 6 + (6 if layout.periodic else 0)
        self.context_width = width
        self.context = MoleculeAttention(in_features, width, width, blocks, heads, zero_init=False)
        self.spline_net = MLP(width + 3, 3 * self.num_bins, hidden)

    def _params(self, direction: torch.Tensor, s: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
        parts = [direction_features(direction)]
        if self.layout.periodic:
            parts.append(periodic_features(self.layout.all_fractional(s)))
        context = self.context(self.layout.features(batch, like, *parts))
        both = torch.cat([torch.cat([context, direction], -1), torch.cat([context, -direction], -1)], dim=0)
        raw = self.spline_net(both)
        return symmetrize_spline_parameters(raw[:batch], raw[batch:], self.num_bins)

    def _transform(self, z: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.layout.split(z)
        _, _, direction, _ = meridian_coordinates(q, self.axis, self.basis)
        params = self._params(direction, s, z.shape[0], z)
        q_new, logdet = meridian_spline(q, self.axis, self.basis, params, self.num_bins, inverse=inverse)
        return self.layout.join(q_new, s), logdet.sum(-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=True)


__all__ = [
    "LinearS3Layer",
    "MeridianS3Layer",
    "linear_map",
    "meridian_coordinates",
    "meridian_spline",
    "mirror_spline_parameters",
    "orthonormal_complement",
    "symmetrize_spline_parameters",
]
