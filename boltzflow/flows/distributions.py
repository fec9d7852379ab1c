"""Base (latent) distribution and the flow distribution ``q(x)`` it induces through a bijection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import Bijection
from .coupling import _circular_mask, _per_feature

DEFENSIVE_FRACTION, DEFENSIVE_SCALE = 0.1, 1.5
"""Default defensive mixture of the independent samplers of a trained proposal (snf, cnf-exact, fp-is): 10 % of
the latents from ``N(0, 1.5² I)``. Chosen by the calibration benchmark (40 seeds, README "Calibration"): on a
flow-matching flow narrower than its target it cuts the runs flagged for heavy tails from 18 % to 3 % and brings
the unflagged estimates within (fp-is) or to the edge of (cnf-exact) the goal; it costs at most a fraction ``a`` of
the ESS of a perfect proposal (4 % in 10 D)."""


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


@dataclass(frozen=True)
class DefensiveLatent:
    """A defensive latent for importance sampling: ``(1 − a)·N(0, I) + a·N(0, c² I)`` (Hesterberg 1995).

    A proposal that is narrower than its target gives weights with a heavy tail where it rarely
    samples; drawing a fraction ``a`` of the latents from a wider normal and weighting with the
    mixture's density keeps the weights exact (unbiased) and bounds them by ``p / (a q_c)`` wherever
    the widened proposal covers the target. ``fraction = 0`` (the class default) is the plain
    standard normal latent; the samplers' default is ``DEFENSIVE_FRACTION``.
    Used by the continuous-flow samplers (``cnf-exact``, ``fp-is``) and the SNF sampler (``snf``,
    on the base's normal features).

    Parameters
    ----------
    fraction : float
        ``a`` in ``[0, 1)``.
    scale : float
        ``c >= 1``.

    Examples
    --------
    >>> latent = DefensiveLatent(0.1, 1.5)
    >>> z = latent.sample_numpy(np.random.default_rng(0), 200_000, 2)
    >>> bool(abs(np.mean(z[:, 0] ** 2) - (0.9 + 0.1 * 1.5**2)) < 0.02)
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> zt = latent.widen(torch.randn(200_000, 2, dtype=torch.float64, generator=g), g)
    >>> ratio = (DefensiveLatent(0.0).log_prob(zt) - latent.log_prob(zt)).exp()  # N(0, I) / mixture
    >>> bool(abs(ratio.mean().item() - 1) < 0.01)
    True
    """

    fraction: float = 0.0
    scale: float = DEFENSIVE_SCALE

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"the defensive fraction must be in [0, 1), got {self.fraction}")
        if not self.scale >= 1.0:
            raise ValueError(f"the defensive scale must be >= 1, got {self.scale}")

    def sample_numpy(self, rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
        """``(n, dim)`` latents from the mixture (numpy)."""
        z = rng.standard_normal((n, dim))
        if self.fraction > 0:
            z[rng.random(n) < self.fraction] *= self.scale
        return z

    def widen(self, z: torch.Tensor, generator: torch.Generator | None = None,
              features: torch.Tensor | None = None) -> torch.Tensor:
        """Mixture draws from standard normal ``z (n, d)``: each row widened by ``c`` with probability ``a``.

        ``features`` (a bool mask of length ``d``) restricts the widening to those columns (the normal
        features of a base with circular ones); a row is chosen with one draw of ``generator``.
        """
        if self.fraction == 0:
            return z
        wide = torch.rand(z.shape[0], generator=generator, dtype=z.dtype, device=z.device) < self.fraction
        rows = wide[:, None] if features is None else wide[:, None] & features.to(z.device)
        return torch.where(rows, self.scale * z, z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log`` of the mixture density at ``z (B, d)``."""
        d = z.shape[-1]
        r2 = (z * z).sum(-1)
        narrow = -0.5 * r2 - 0.5 * d * math.log(2 * math.pi)
        if self.fraction == 0:
            return narrow
        wide = -0.5 * r2 / self.scale**2 - 0.5 * d * math.log(2 * math.pi * self.scale**2)
        return torch.logaddexp(math.log1p(-self.fraction) + narrow, math.log(self.fraction) + wide)
