"""Unit quaternions as rotations: products, rotation matrices (both ways), best-fit rotations.

Conventions, used by :mod:`boltzflow.geometry.rigid_bodies`, :mod:`boltzflow.flows.rigid`, the ice builder
and :class:`~boltzflow.energy.orientation.OrientationPrior`:

* a quaternion is ``q = (w, x, y, z)``, scalar first, a torch tensor whose last axis has 4
  entries (any leading batch shape);
* ``q`` acts as the *active* rotation ``R(q)`` taking body-frame vectors to the lab frame,
  ``r_lab = R(q) r_body`` (Hamilton product, ``R(p ⊗ q) = R(p) R(q)``);
* ``q`` and ``−q`` are the same rotation (the double cover ``S³ → SO(3)``). Where one
  representative must be chosen (:func:`from_matrix`, :func:`best_fit_rotation`), it is the one
  with ``w > 0`` (on the measure-zero set ``w = 0``, the first non-zero of ``x, y, z`` positive):
  the *canonical sign*, applied by :func:`canonical_sign`.

No map ``SO(3) → S³`` can be continuous everywhere (``RP³`` has no continuous section into ``S³``),
so the canonical sign flips across ``w = 0``; the flows never need continuity there because their
densities are antipodally symmetric (:mod:`boltzflow.flows.rigid.sphere`).
"""

from __future__ import annotations

import math

import torch


def _check_quaternion(q: torch.Tensor) -> None:
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions need a last axis of size 4, got shape {tuple(q.shape)}")


def multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``p ⊗ q`` (broadcast over leading axes); ``R(p ⊗ q) = R(p) R(q)``."""
    _check_quaternion(p)
    _check_quaternion(q)
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        dim=-1,
    )


def conjugate(q: torch.Tensor) -> torch.Tensor:
    """``(w, −x, −y, −z)``: the inverse rotation of a unit quaternion."""
    _check_quaternion(q)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``R(q)``, shape ``(..., 3, 3)``, of unit quaternions ``(..., 4)``.

    The formula is homogeneous of degree 2 divided by ``|q|²``, so ``q`` need not be normalised
    exactly; ``R(q) = R(−q)`` holds bit for bit.
    """
    _check_quaternion(q)
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = [
        [1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
        [s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)],
        [s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``R(q) v`` for vectors ``v (..., 3)`` (``q`` broadcast against ``v``'s leading axes)."""
    return torch.einsum("...ij,...j->...i", to_matrix(q), v)


def canonical_sign(q: torch.Tensor) -> torch.Tensor:
    """``q`` or ``−q``, whichever has ``w > 0`` (ties at ``w = 0`` broken by ``x``, then ``y``, then ``z``)."""
    _check_quaternion(q)
    sign = torch.zeros_like(q[..., 0])
    for k in range(4):  # the first non-zero component decides
        sign = torch.where(sign == 0, torch.sign(q[..., k]), sign)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign[..., None]


def from_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` of rotation matrices ``(..., 3, 3)``, with the canonical sign.

    Shepperd's method: of the four expressions ``4w² = 1 + tr R``, ``4x² = 1 + 2R₀₀ − tr R``, ...
    the largest is taken under the square root and the other components follow from the
    off-diagonal sums and differences divided by it. The divisor is then at least ``1/2``, so the
    result is accurate to rounding for every rotation (no cancellation near 180° turns, where
    ``w → 0``). Branch selection is elementwise (``torch.where``), so batches of any size vectorise.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices need shape (..., 3, 3), got {tuple(matrix.shape)}")
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # 4 q_k^2 for k = w, x, y, z
    squares = torch.stack(
        [1 + trace, 1 + 2 * m[..., 0, 0] - trace, 1 + 2 * m[..., 1, 1] - trace, 1 + 2 * m[..., 2, 2] - trace], dim=-1
    )
    best = squares.argmax(dim=-1, keepdim=True)
    # every component times 4 q_k, for each choice of the pivot k (rows: pivot; columns: w, x, y, z)
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    candidates = torch.stack(
        [
            torch.stack([squares[..., 0], d21, d02, d10], dim=-1),
            torch.stack([d21, squares[..., 1], s10, s02], dim=-1),
            torch.stack([d02, s10, squares[..., 2], s21], dim=-1),
            torch.stack([d10, s02, s21, squares[..., 3]], dim=-1),
        ],
        dim=-2,
    )
    scaled = candidates.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :]
    pivot = squares.gather(-1, best).clamp_min(torch.finfo(m.dtype).tiny)
    q = scaled / (2.0 * torch.sqrt(pivot))
    return canonical_sign(q / torch.linalg.vector_norm(q, dim=-1, keepdim=True))


def horn_matrix(cross_covariance: torch.Tensor) -> torch.Tensor:
    """Horn's symmetric 4×4 matrix of a cross-covariance: its top eigenvector is the best-fit rotation.

    For ``S_ab = Σ_i w_i r_ia t_ib`` (reference points ``r``, target points ``t``), the quadratic
    form ``qᵀ N q`` on unit quaternions equals ``Σ_i w_i t_i · R(q) r_i``, so the eigenvector of the
    largest eigenvalue of ``N`` is the rotation minimising ``Σ_i w_i |t_i − R(q) r_i|²``.

    Parameters
    ----------
    cross_covariance : Tensor, shape (..., 3, 3)
        ``S_ab = Σ_i w_i r_ia t_ib``.

    Returns
    -------
    Tensor, shape (..., 4, 4)
        Horn's matrix ``N``, rows and columns ordered ``(w, x, y, z)``.
    """
    if cross_covariance.shape[-2:] != (3, 3):
        raise ValueError(f"a cross-covariance needs shape (..., 3, 3), got {tuple(cross_covariance.shape)}")
    s = cross_covariance
    sxx, sxy, sxz = s[..., 0, 0], s[..., 0, 1], s[..., 0, 2]
    syx, syy, syz = s[..., 1, 0], s[..., 1, 1], s[..., 1, 2]
    szx, szy, szz = s[..., 2, 0], s[..., 2, 1], s[..., 2, 2]
    rows = [
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def best_fit_rotation(
    reference: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation that best maps centred ``reference`` points onto centred ``target`` points.

    Minimises ``Σ_i w_i |target_i − R(q) reference_i|²`` over rotations (Kabsch's problem) in
    Horn's quaternion form: ``q`` is the eigenvector of the largest eigenvalue of a symmetric 4×4
    matrix built from the weighted cross-covariance, so the result is a proper rotation by
    construction (no reflection case) and slightly non-rigid inputs get their least-squares
    rotation. Neither set is centred here: pass coordinates relative to the points' (weighted)
    centroids, or relative to any common pivot.

    Parameters
    ----------
    reference : Tensor, shape (..., n, 3)
        Body-frame points.
    target : Tensor, shape (..., n, 3)
        Lab-frame points.
    weights : Tensor, shape (n,), optional
        Non-negative weights (zero for points that must not influence the fit, e.g. virtual
        sites); equal weights by default.

    Returns
    -------
    q : Tensor, shape (..., 4)
        Unit quaternions with the canonical sign.
    residual : Tensor, shape (...)
        Weighted root-mean-square deviation ``sqrt(Σ w_i |t_i − R r_i|² / Σ w_i)`` of the fit.
    """
    if reference.shape[-1] != 3 or target.shape[-1] != 3:
        raise ValueError("best_fit_rotation needs points with a last axis of size 3")
    n = target.shape[-2]
    w = torch.ones(n, dtype=target.dtype, device=target.device) if weights is None else weights.to(target)
    if w.shape != (n,) or bool((w < 0).any()) or not bool(w.sum() > 0):
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    reference = reference.to(target).expand_as(target)
    # cross-covariance S_ab = Σ_i w_i r_ia t_ib
    s = torch.einsum("i,...ia,...ib->...ab", w, reference, target)
    eigenvalues, eigenvectors = torch.linalg.eigh(horn_matrix(s))
    q = canonical_sign(eigenvectors[..., :, -1])
    # Σ w |t − R r|² = Σ w (|t|² + |r|²) − 2 λ_max
    total = torch.einsum("i,...ia->...", w, target * target + reference * reference)
    residual = torch.sqrt((total - 2.0 * eigenvalues[..., -1]).clamp_min(0.0) / w.sum())
    return q, residual


def random_uniform(shape: tuple[int, ...], generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Quaternions uniform on S³ (normalised standard normals), shape ``(*shape, 4)``.

    Uniform on S³ is Haar-uniform on SO(3): the density is ``1 / (2π²)`` with respect to the
    surface measure of the unit 3-sphere (area ``2π²``).
    """
    g = torch.randn(*shape, 4, dtype=dtype, device=device, generator=generator)
    return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)


LOG_AREA_S3 = math.log(2.0 * math.pi**2)
"""``log(2π²)``: log of the surface area of the unit 3-sphere."""


__all__ = [
    "LOG_AREA_S3",
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
