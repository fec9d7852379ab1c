"""The latent state of a rigid-body flow: N quaternions and the free molecules' fractional positions.

A flat latent vector ``z (B, 4N + 3F)`` holds the unit quaternions of the ``N`` molecules followed
by the fractional box coordinates ``s ∈ [0, 1)³`` of the ``F`` molecules whose positions are free.

Gauge: with a periodic box the energy is invariant under a common translation, so the first
molecule's reference point is held at its reference centre (``s₀ = ½``) and ``F = N − 1``; the
others are placed at ``centre_i + L (s_i − ½)`` (each molecule's coordinate wraps half a box away
from its reference site). Without a box every centre is fixed and ``F = 0``. :class:`RigidLayout`
also assembles the per-molecule conditioner inputs that every layer shares.
"""

from __future__ import annotations

import torch
from torch import nn

from ...geometry.rigid_bodies import RigidBodySpec
from .conditioners import periodic_features


class RigidLayout(nn.Module):
    """Split/join of the flat latent and the static per-molecule features of a :class:`RigidBodySpec`.

    Parameters
    ----------
    spec : RigidBodySpec
        Geometry, centres and box.
    """

    def __init__(self, spec: RigidBodySpec) -> None:
        super().__init__()
        self.n_molecules = spec.n_molecules
        self.periodic = spec.box is not None
        self.n_free = self.n_molecules - 1 if self.periodic else 0
        centres = torch.as_tensor(spec.centres)
        static = [torch.ones(self.n_molecules, 1, dtype=torch.float64)]
        if self.periodic:
            box = torch.as_tensor(spec.box)
            gauge = torch.zeros(self.n_molecules, 1, dtype=torch.float64)
            gauge[0] = 1.0
            static += [gauge, periodic_features(centres / box)]
            self.register_buffer("box", box)
        self.register_buffer("centres", centres)
        self.register_buffer("static", torch.cat(static, dim=-1))

    @property
    def dim(self) -> int:
        """Width of the flat latent, ``4N + 3F``."""
        return 4 * self.n_molecules + 3 * self.n_free

    @property
    def static_width(self) -> int:
        """Number of static features per molecule (bias; gauge flag and centre features with a box)."""
        return self.static.shape[1]

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, dim) -> (q (B, N, 4), s (B, F, 3))``."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected rigid-body latents of shape (batch, {self.dim}), got {tuple(z.shape)}")
        n = 4 * self.n_molecules
        return z[:, :n].reshape(z.shape[0], self.n_molecules, 4), z[:, n:].reshape(z.shape[0], self.n_free, 3)

    def join(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        return torch.cat([q.reshape(q.shape[0], -1), s.reshape(s.shape[0], -1)], dim=1)

    def all_fractional(self, s: torch.Tensor) -> torch.Tensor:
        """Fractional positions of all ``N`` molecules ``(B, N, 3)``, the gauge molecule at ``½``."""
        gauge = torch.full((s.shape[0], 1, 3), 0.5, dtype=s.dtype, device=s.device)
        return torch.cat([gauge, s], dim=1)

    def features(self, batch: int, like: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:
        """Per-molecule conditioner input ``(B, N, ·)``: the static features followed by ``parts``."""
        static = self.static.to(like).expand(batch, -1, -1)
        return torch.cat([static, *parts], dim=-1)


__all__ = ["RigidLayout"]
