"""Conditioners over molecules: permutation-equivariant self-attention, and the features it reads.

A rigid-body flow layer transforms every molecule's coordinates at once with parameters that
depend on what the layer keeps fixed (:mod:`.model`). :class:`MoleculeAttention` maps per-molecule
features ``(B, N, F)`` to per-molecule outputs ``(B, N, P)``: an embedding, a few pre-norm
transformer blocks (multi-head self-attention over the molecules and a per-molecule MLP, both
residual) and a zero-initialised read-out, so every layer starts as the identity. There is no
positional encoding, so permuting the molecules permutes the outputs in the same way, and the same
weights serve any number of molecules (1 … 128 and beyond; the cost is quadratic in N).

Features are chosen so that the density stays a density on SO(3) for every molecule: orientation
features are even in the quaternion (unchanged by ``q → −q``), positions enter as ``cos/sin`` of
their fractional coordinates (periodic in the box).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def orientation_features(q: torch.Tensor) -> torch.Tensor:
    """The 10 distinct entries of ``q qᵀ`` (``(..., 4) -> (..., 10)``): a smooth, sign-invariant encoding of the rotation."""
    i, j = torch.triu_indices(4, 4)
    return (q[..., :, None] * q[..., None, :])[..., i, j]


def direction_features(u: torch.Tensor) -> torch.Tensor:
    """The 6 distinct entries of ``u uᵀ`` (``(..., 3) -> (..., 6)``): even in the direction ``u``."""
    i, j = torch.triu_indices(3, 3)
    return (u[..., :, None] * u[..., None, :])[..., i, j]


def periodic_features(fractional: torch.Tensor) -> torch.Tensor:
    """``cos`` and ``sin`` of ``2π s`` for fractional coordinates ``s (..., k) -> (..., 2k)``."""
    angle = 2.0 * math.pi * fractional
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)


class _Block(nn.Module):
    """Pre-norm transformer block: ``h + attention(norm(h))``, then ``h + mlp(norm(h))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.norm_attention(h)
        h = h + self.attention(a, a, a, need_weights=False)[0]
        return h + self.mlp(self.norm_mlp(h))


class MoleculeAttention(nn.Module):
    """Permutation-equivariant map ``(B, N, in_features) -> (B, N, out_features)`` (zero at initialisation by default).

    Parameters
    ----------
    in_features, out_features : int
        Per-molecule input and output widths.
    width : int
        Width of the hidden representation (divisible by ``heads``).
    blocks : int
        Number of attention blocks; 0 gives a per-molecule MLP (no interaction between molecules).
    heads : int
        Attention heads.
    zero_init : bool
        Start the read-out at zero (a layer whose parameters come straight from this network
        then starts as the identity); ``False`` for a context fed to a further network.
    """

    def __init__(
        self, in_features: int, out_features: int, width: int = 64, blocks: int = 2, heads: int = 4,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.embed = nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, out_features)
        if zero_init:
            nn.init.zeros_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-molecule outputs of per-molecule features ``(B, N, in_features)``."""
        h = self.embed(features)
        for block in self.blocks:
            h = block(h)
        return self.readout(self.norm(h))


__all__ = ["MoleculeAttention", "direction_features", "orientation_features", "periodic_features"]
