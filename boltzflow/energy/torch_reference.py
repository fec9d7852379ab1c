"""Plain torch implementations of the toy potentials: the reference, not the fast path.

These functions are written as straightforwardly as possible (vectorised torch, all pairs
``i < j`` gathered with ``torch.triu_indices``, gradients from autograd) so that they are an
independent check of the numba kernels in :mod:`boltzflow.energy.double_well`,
:mod:`~boltzflow.energy.multi_double_well`, :mod:`~boltzflow.energy.lennard_jones` and
:mod:`~boltzflow.energy.restraints`, and the baseline of ``benchmarks/bench_lennard_jones.py``.
They return the energy ``U`` in the potential's own units (not divided by ``kT``), shape ``(B,)``,
for a batch ``x`` of shape ``(B, D)`` or ``(B, n_particles, n_dims)``. Use float64 for checks.
"""

from __future__ import annotations

import torch


def _pair_differences(x: torch.Tensor, n_particles: int, n_dims: int) -> torch.Tensor:
    """``x_j - x_i`` for all pairs ``i < j``, shape ``(B, n_pairs, n_dims)``."""
    pos = x.reshape(-1, n_particles, n_dims)
    i, j = torch.triu_indices(n_particles, n_particles, offset=1, device=x.device)
    return pos[:, j] - pos[:, i]


def double_well_torch(x: torch.Tensor, a: float = -0.5, b: float = -6.0, c: float = 1.0) -> torch.Tensor:
    """``U = a x1 + b x1**2 + c x1**4 + x2**2 / 2`` for ``x`` of shape ``(B, 2)``."""
    x1, x2 = x[:, 0], x[:, 1]
    return a * x1 + b * x1**2 + c * x1**4 + 0.5 * x2**2


def multi_double_well_torch(
    x: torch.Tensor, n_particles: int, n_dims: int, a: float = 0.9, b: float = -4.0, d0: float = 4.0
) -> torch.Tensor:
    """``U = sum_{i<j} a (d_ij - d0)**4 + b (d_ij - d0)**2`` (each pair once)."""
    d = torch.linalg.vector_norm(_pair_differences(x, n_particles, n_dims), dim=-1) - d0
    return (a * d**4 + b * d**2).sum(dim=-1)


def lennard_jones_torch(
    x: torch.Tensor, n_particles: int, n_dims: int, epsilon: float = 1.0, rm: float = 1.0
) -> torch.Tensor:
    """``U = epsilon sum_{i<j} (rm/r)**12 - 2 (rm/r)**6`` (each pair once, no cutoff)."""
    r = torch.linalg.vector_norm(_pair_differences(x, n_particles, n_dims), dim=-1)
    sr6 = (rm / r) ** 6
    return epsilon * (sr6**2 - 2.0 * sr6).sum(dim=-1)


def com_restraint_torch(x: torch.Tensor, n_particles: int, n_dims: int, k: float = 1.0) -> torch.Tensor:
    """``U = k/2 sum_i |x_i - mean_j x_j|**2``."""
    pos = x.reshape(-1, n_particles, n_dims)
    centred = pos - pos.mean(dim=1, keepdim=True)
    return 0.5 * k * (centred**2).sum(dim=(1, 2))
