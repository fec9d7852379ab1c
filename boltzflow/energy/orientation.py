"""A normalised density over a molecule's orientation: near-aligned samples, the same Boltzmann averages.

A molecule in vacuum or implicit solvent has a rotation-invariant energy ``u0``: every orientation
is equally likely, and a flow in Cartesian coordinates has to learn that spread (or be trained on
rotation-augmented data). Writing a configuration as ``x = R(x)·y`` — ``R(x)`` the rotation that
best superimposes a fixed reference onto ``x``, ``y`` the aligned shape — the Boltzmann measure is
uniform (Haar) in ``R``. Adding

    u_R(x) = −κ cos θ(x) + log(I0(κ) − I1(κ)),     θ(x) = rotation angle of R(x),

replaces that uniform density by ``f(R) = exp(κ cos θ) / (I0(κ) − I1(κ))``, which is itself a
probability density over SO(3) (under Haar measure the angle has density ``(1 − cos θ)/π`` on
``[0, π]``, and ``(1/π)∫ e^{κ cos θ}(1 − cos θ) dθ = I0(κ) − I1(κ)``). Hence, for any
rotation-invariant ``u0``:

* ``∫ exp(−u0 − u_R) dx = ∫ exp(−u0) dx``: the partition function is unchanged;
* averages of rotation-invariant observables (distances, energies, states) are unchanged;
* only the orientation is now concentrated near the reference (``θ ≈ 1/√κ``), so a flow need
  only learn the shape.

``R(x)`` is Horn's quaternion superposition (equal weights on the chosen atoms, both sets centred
on their own centroid), equivariant: ``R(Qx) = Q R(x)``, which is all the argument needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import ive

from ..geometry.quaternions import canonical_sign, horn_matrix, to_matrix
from .base import Energy


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(B, 3, 3)`` of unit quaternions ``(B, 4)`` ordered ``(w, x, y, z)`` (numpy in, numpy out).

    A numpy view of :func:`boltzflow.geometry.quaternions.to_matrix`.
    """
    return to_matrix(torch.as_tensor(np.asarray(q, dtype=np.float64))).numpy()


class OrientationPrior(Energy):
    """``u_R(x) = −κ cos θ(x) + log(I0(κ) − I1(κ))``: a normalised orientation density (module docstring).

    Parameters
    ----------
    reference : array-like
        ``(n_atoms, 3)`` reference configuration (e.g. the system's ``x0``).
    kappa : float
        Concentration ``κ > 0``; the rotation angle is about ``1/√κ`` radians.
    atoms : sequence of int, optional
        Atoms that define the orientation (default: all), e.g. the backbone.
    """

    def __init__(self, reference: np.ndarray, kappa: float, atoms: Sequence[int] | None = None) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or reference.shape[1] != 3 or reference.shape[0] < 3:
            raise ValueError(f"reference must have shape (n_atoms >= 3, 3), got {reference.shape}")
        if not np.all(np.isfinite(reference)):
            raise ValueError("reference coordinates must be finite")
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be positive and finite, got {kappa}")
        super().__init__(reference.size, reference.shape)
        self.n_atoms = reference.shape[0]
        self.atoms = np.arange(self.n_atoms) if atoms is None else np.asarray(atoms, dtype=int)
        if self.atoms.size < 3 or self.atoms.min() < 0 or self.atoms.max() >= self.n_atoms:
            raise ValueError(f"atoms must name at least 3 of the {self.n_atoms} atoms")
        sub = reference[self.atoms]
        self.reference = sub - sub.mean(0)
        if np.linalg.matrix_rank(self.reference) < 2:
            raise ValueError("the reference atoms are collinear: they do not define an orientation")
        self.kappa = float(kappa)
        self.log_norm = self.kappa + math.log(ive(0, self.kappa) - ive(1, self.kappa))  # log(I0 − I1)

    def _quaternions(self, x: torch.Tensor) -> torch.Tensor:
        """Unit quaternions ``(B, 4)`` (w ≥ 0) of ``R(x)`` for a batch ``(B, D)``."""
        pos = x.reshape(-1, self.n_atoms, 3)[:, self.atoms]
        pos = pos - pos.mean(1, keepdim=True)
        s = torch.einsum("ia,nic->nac", torch.as_tensor(self.reference, dtype=x.dtype), pos)  # S_ac = Σ r_ia x_ic
        _, vectors = torch.linalg.eigh(horn_matrix(s))
        return canonical_sign(vectors[..., -1])

    def cos_angle(self, x: np.ndarray) -> np.ndarray:
        """``cos θ(x)`` of a batch ``(B, D)`` or ``(B, n_atoms, 3)``."""
        flat, _ = self.flatten_batch(x)
        w = self._quaternions(torch.as_tensor(flat))[:, 0].numpy()
        return 2.0 * w * w - 1.0

    def align(self, x: np.ndarray) -> np.ndarray:
        """Configurations rotated so that ``R = I`` (superimposed on the reference), shape ``(B, D)``."""
        flat, _ = self.flatten_batch(x)
        rot = quaternion_to_matrix(self._quaternions(torch.as_tensor(flat)).numpy())
        pos = flat.reshape(-1, self.n_atoms, 3)
        centre = pos[:, self.atoms].mean(1, keepdims=True)
        return (np.einsum("bji,bnj->bni", rot, pos - centre) + centre).reshape(flat.shape)  # Rᵀ(x − c) + c

    def sample_rotations(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rotation matrices ``(n, 3, 3)`` drawn from ``f(R)`` (uniform axis, angle by inverse CDF)."""
        grid = np.linspace(0.0, math.pi, 20001)
        density = np.exp(self.kappa * (np.cos(grid) - 1.0)) * (1.0 - np.cos(grid))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
        theta = np.interp(rng.uniform(0.0, cdf[-1], n), cdf, grid)
        axis = rng.standard_normal((n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        q = np.concatenate([np.cos(theta / 2)[:, None], np.sin(theta / 2)[:, None] * axis], 1)
        return quaternion_to_matrix(q)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        xt = torch.as_tensor(x).requires_grad_(need_gradient)
        with torch.set_grad_enabled(need_gradient):
            w = self._quaternions(xt)[:, 0]
            u = -self.kappa * (2.0 * w * w - 1.0) + self.log_norm
            gradient = torch.autograd.grad(u.sum(), xt)[0].numpy() if need_gradient else None
        return u.detach().numpy(), gradient

    def __repr__(self) -> str:
        return f"OrientationPrior(n_atoms={self.n_atoms}, kappa={self.kappa:g}, atoms={self.atoms.size})"
