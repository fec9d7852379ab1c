"""Rigid-motion-free coordinates for translation- and rotation-invariant particles in the plane.

For ``n ≥ 2`` particles in 2D whose energy depends only on their relative geometry, a flow on the
Cartesian coordinates has to model the free centre of mass and a ring of rotated copies of every
configuration — hard for coupling layers, which then spread mass over clashes. :class:`PlanarFrame`
takes those motions out: with ``d_i = x_i − x_0`` (``i = 1 … n−1``) the features are

* ``θ = atan2(d_1)``, the orientation of the first pair (circular on ``[−π, π)``; for an
  invariant energy its density is exactly uniform and independent of the rest),
* ``s = log |d_1|``, the log-distance of the first pair,
* ``(a_i, b_i) = R(−θ) d_i`` for ``i = 2 … n−1``, the other particles in the frame of the first pair.

``forward`` maps these ``2(n−1)`` features to configurations with zero centre of mass; densities
are per unit volume of the centre-of-mass-free subspace, measured in its isometric coordinates
(as for :class:`~boltzflow.flows.centre_of_mass.CentreOfMassFree`, so the two are interchangeable).
The log-determinant is ``2 s + log|det C|``, with ``r² = e^{2s}`` from the polar map of ``d_1`` and
the constant ``C`` of the linear map from relative vectors to isometric coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Bijection
from .centre_of_mass import _orthonormal_complement_of_ones


class PlanarFrame(Bijection):
    """Features ``(θ, log r_01, frame coordinates of particles 2 … n−1)`` ↔ centred 2D configurations.

    Parameters
    ----------
    n_particles : int
        Number of particles (at least 2), each in 2 dimensions.
    """

    def __init__(self, n_particles: int) -> None:
        super().__init__()
        if n_particles < 2:
            raise ValueError(f"a planar frame needs at least 2 particles, got {n_particles}")
        self.n_particles = n_particles
        basis = _orthonormal_complement_of_ones(n_particles)
        # isometric coordinates y = basis^T x of the centred x = P [0; d]: y = basis[1:]^T d, per spatial axis
        self.register_buffer("log_volume", 2.0 * torch.linalg.slogdet(basis[1:].T)[1])

    @property
    def dim(self) -> int:
        """Number of features, ``2 (n − 1)``."""
        return 2 * (self.n_particles - 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected frame features of shape (batch, {self.dim}), got {tuple(z.shape)}")
        theta, s = z[:, 0], z[:, 1]
        cos, sin = torch.cos(theta), torch.sin(theta)
        r = torch.exp(s)
        first = torch.stack([r * cos, r * sin], dim=1)[:, None]
        local = z[:, 2:].reshape(z.shape[0], self.n_particles - 2, 2)
        rest = torch.stack([cos[:, None] * local[..., 0] - sin[:, None] * local[..., 1],
                            sin[:, None] * local[..., 0] + cos[:, None] * local[..., 1]], dim=-1)
        relative = torch.cat([torch.zeros_like(first), first, rest], dim=1)  # particle 0 at the origin
        x = relative - relative.mean(dim=1, keepdim=True)
        return x.reshape(z.shape[0], -1), 2.0 * s + self.log_volume.to(z)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = 2 * self.n_particles
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected configurations of shape (batch, {width}), got {tuple(x.shape)}")
        p = x.reshape(x.shape[0], self.n_particles, 2)
        d = p[:, 1:] - p[:, :1]
        theta = torch.atan2(d[:, 0, 1], d[:, 0, 0])
        s = 0.5 * torch.log(d[:, 0, 0] ** 2 + d[:, 0, 1] ** 2)
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        rest = d[:, 1:]
        local = torch.stack([cos * rest[..., 0] + sin * rest[..., 1], -sin * rest[..., 0] + cos * rest[..., 1]], -1)
        z = torch.cat([theta[:, None], s[:, None], local.reshape(x.shape[0], -1)], dim=1)
        return z, -(2.0 * s + self.log_volume.to(x))


class OnFeatures(Bijection):
    """Apply a bijection to some features and pass the others through unchanged.

    Parameters
    ----------
    bijection : Bijection
        Map of the selected features.
    features : sequence of int
        Indices of the features it acts on (in that order); the rest keep their values.
    dim : int
        Total number of features.
    """

    def __init__(self, bijection: Bijection, features: Sequence[int], dim: int) -> None:
        super().__init__()
        index = torch.as_tensor(list(features), dtype=torch.long)
        if index.numel() == 0 or index.min() < 0 or index.max() >= dim or index.unique().numel() != index.numel():
            raise ValueError(f"features must be distinct indices in [0, {dim}), got {list(features)}")
        self.bijection, self.dim = bijection, dim
        self.register_buffer("index", index)

    def _map(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"expected shape (batch, {self.dim}), got {tuple(v.shape)}")
        part, logdet = (self.bijection.inverse if inverse else self.bijection.forward)(v[:, self.index])
        out = v.clone()
        out[:, self.index] = part
        return out, logdet

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._map(x, inverse=True)


__all__ = ["OnFeatures", "PlanarFrame"]
