"""Base (latent) distribution and the flow distribution ``q(x)`` it induces through a bijection."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .base import Bijection
from .coupling import _circular_mask, _per_feature


class BaseDistribution(nn.Module):
    """Product of uniform distributions on circular features and standard normals on the others.

    Circular features are angles: ``log_prob`` treats them modulo their period (the uniform
    density of the circle, whatever representative is given). Samples and log-densities are in
    the dtype of the module (``.double()`` switches it to float64).

    Parameters
    ----------
    dim : int
        Number of features.
    circular : sequence of bool or bool Tensor, shape (dim,), optional
        Which features are circular (default: none).
    low, high : float or sequence of float
        Period ``[low, high)`` of the circular features (scalar or one per feature; entries of
        linear features are unused).
    """

    def __init__(
        self,
        dim: int,
        circular: Sequence[bool] | torch.Tensor | None = None,
        low: float | Sequence[float] = -math.pi,
        high: float | Sequence[float] = math.pi,
    ) -> None:
        super().__init__()
        circular = _circular_mask(circular, dim)
        low_t, high_t = _per_feature(low, dim, "low"), _per_feature(high, dim, "high")
        if not (low_t[circular] < high_t[circular]).all():
            raise ValueError("each circular feature needs low < high")
        self.dim = dim
        self.register_buffer("circular", circular)
        # Exact float64 bounds (plain tensors), cast on use; the empty buffer carries dtype and device.
        self.low, self.high = low_t, high_t
        self.register_buffer("_like", torch.empty(0), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of samples and log-densities."""
        return self._like.dtype

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` latent points, shape ``(n, dim)``."""
        like = self._like
        normal = torch.randn(n, self.dim, dtype=like.dtype, device=like.device, generator=generator)
        unit = torch.rand(n, self.dim, dtype=like.dtype, device=like.device, generator=generator)
        low, high = self.low.to(like), self.high.to(like)
        uniform = low + (high - low) * unit
        return torch.where(self.circular, uniform, normal)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of ``z (B, dim)``, shape ``(B,)``."""
        normal = -0.5 * z**2 - 0.5 * math.log(2.0 * math.pi)
        uniform = -torch.log(self.high - self.low).to(z).expand_as(z)
        return torch.where(self.circular, uniform, normal).sum(dim=1)


class FlowDistribution(nn.Module):
    """The density ``q(x)`` of ``x = f(z)``, ``z ~ base``, for a bijection ``f`` (its ``forward``).

    Parameters
    ----------
    base : BaseDistribution
        Latent distribution.
    bijection : Bijection
        Generative map, latent ``z`` to configuration ``x``.
    """

    def __init__(self, base: BaseDistribution, bijection: Bijection) -> None:
        super().__init__()
        self.base = base
        self.bijection = bijection

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` configurations; returns ``(x (n, D), log q(x) (n,))`` (differentiable in the parameters)."""
        z = self.base.sample(n, generator)
        x, logdet = self.bijection.forward(z)
        return x, self.base.log_prob(z) - logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` of ``x (B, D)``, shape ``(B,)``, computed through the inverse map."""
        z, logdet = self.bijection.inverse(x.to(self.base.dtype))
        return self.base.log_prob(z) + logdet
