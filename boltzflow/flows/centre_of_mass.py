"""Centre-of-mass-free coordinates for translation-invariant particle systems.

For ``n`` identical particles in ``d`` dimensions whose energy depends only on relative positions,
the centre of mass is a free direction: ``exp(-u)`` is not normalisable along it, and a flow that
models it (e.g. as a Gaussian) gets importance weights ``∝ 1/q(centre)`` with unbounded variance.
:class:`CentreOfMassFree` embeds ``(n - 1) d`` internal coordinates isometrically into the
subspace of zero centre of mass, so densities live on that subspace.
"""

from __future__ import annotations

import torch

from .base import Bijection


def _orthonormal_complement_of_ones(n: int) -> torch.Tensor:
    """``(n, n - 1)`` matrix with orthonormal columns, all orthogonal to ``(1, ..., 1)`` (Helmert basis)."""
    basis = torch.zeros(n, n - 1, dtype=torch.float64)
    for j in range(1, n):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= (j * (j + 1)) ** 0.5
    return basis


class CentreOfMassFree(Bijection):
    """Isometric embedding ``R^{(n-1) d} → {x ∈ R^{n d}: Σ_i x_i = 0}`` (``forward``).

    ``forward`` maps latent ``y`` (``(B, (n-1) d)``) to particle coordinates with zero centre of
    mass; ``inverse`` maps any configuration to the coordinates of its centred copy (it discards
    the centre of mass). Both log-determinants are 0: the map is an isometry onto the subspace, so
    a density of ``y`` is a density per unit volume of the centred configurations.

    Parameters
    ----------
    n_particles, n_dims : int
        Particle count (at least 2) and spatial dimension.
    """

    def __init__(self, n_particles: int, n_dims: int) -> None:
        super().__init__()
        if n_particles < 2 or n_dims < 1:
            raise ValueError(f"need at least 2 particles and 1 dimension, got {n_particles}, {n_dims}")
        self.n_particles, self.n_dims = n_particles, n_dims
        self.register_buffer("basis", _orthonormal_complement_of_ones(n_particles))

    @property
    def latent_dim(self) -> int:
        """``(n - 1) d``."""
        return (self.n_particles - 1) * self.n_dims

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected latent coordinates of shape (batch, {self.latent_dim}), got {tuple(z.shape)}")
        y = z.reshape(z.shape[0], self.n_particles - 1, self.n_dims)
        x = torch.einsum("ij,bjk->bik", self.basis.to(z), y)
        return x.reshape(z.shape[0], -1), z.new_zeros(z.shape[0])

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.n_particles * self.n_dims
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected configurations of shape (batch, {width}), got {tuple(x.shape)}")
        p = x.reshape(x.shape[0], self.n_particles, self.n_dims)
        y = torch.einsum("ij,bik->bjk", self.basis.to(x), p)  # basis ⟂ ones: the centre of mass drops out
        return y.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])


__all__ = ["CentreOfMassFree"]
