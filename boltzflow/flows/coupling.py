"""Coupling layers: transform some features conditioned on the others (RealNVP, neural spline flows).

A binary ``mask`` over the ``D`` features says which are conditioned on (``True``: passed through
unchanged, fed to the conditioner) and which are transformed (``False``). Features flagged in
``circular`` are angles on ``[left, right)``: as conditioner inputs they enter as
``(cos, sin)(2π x / (right − left))``, so the conditioner is periodic in them.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .base import Bijection
from .nets import MLP
from .splines import rq_spline

FeatureValues = float | Sequence[float] | torch.Tensor


def alternating_masks(dim: int, num_layers: int) -> list[torch.Tensor]:
    """Masks for a stack of couplings: condition on the even features, then on the odd ones, alternately.

    Parameters
    ----------
    dim : int
        Number of features (at least 2, so that each mask transforms something).
    num_layers : int
        Number of masks.

    Returns
    -------
    list of bool Tensor, shape (dim,)
        ``True`` where the layer conditions on the feature.
    """
    if dim < 2:
        raise ValueError(f"alternating masks need at least 2 features, got {dim}")
    even = torch.arange(dim) % 2 == 0
    return [even.clone() if i % 2 == 0 else ~even for i in range(num_layers)]


def _circular_mask(circular: Sequence[bool] | torch.Tensor | None, dim: int) -> torch.Tensor:
    """Bool mask of the circular features (none when ``circular`` is None)."""
    mask = torch.zeros(dim, dtype=torch.bool) if circular is None else torch.as_tensor(circular, dtype=torch.bool)
    if mask.shape != (dim,):
        raise ValueError(f"circular must have one entry per feature ({dim}), got shape {tuple(mask.shape)}")
    return mask


def _per_feature(values: FeatureValues, dim: int, name: str) -> torch.Tensor:
    """One float64 value per feature (a scalar is repeated); float64 keeps bounds like π exact."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.ndim == 0:
        tensor = tensor.expand(dim)
    if tensor.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have one entry per feature ({dim})")
    return tensor.clone()


class _Coupling(Bijection):
    """Shared machinery: masks, bounds, the conditioner and the scatter of transformed features."""

    def __init__(
        self,
        mask: Sequence[bool] | torch.Tensor,
        circular: Sequence[bool] | torch.Tensor | None,
        left: FeatureValues | None,
        right: FeatureValues | None,
        linear_bound: float,
        params_per_feature: int,
        hidden: Sequence[int],
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.ndim != 1:
            raise ValueError(f"mask must be 1-D, got shape {tuple(mask.shape)}")
        dim = mask.shape[0]
        circular = _circular_mask(circular, dim)
        if mask.all():
            raise ValueError("the mask conditions on every feature: the layer would transform nothing")
        default = torch.full((dim,), linear_bound, dtype=torch.float64).masked_fill(circular, math.pi)
        left = -default if left is None else _per_feature(left, dim, "left")
        right = default if right is None else _per_feature(right, dim, "right")
        if not (left < right).all():
            raise ValueError("each feature needs left < right")
        self.register_buffer("circular", circular)
        self.register_buffer("transformed", torch.nonzero(~mask)[:, 0])
        self.register_buffer("conditioned_linear", torch.nonzero(mask & ~circular)[:, 0])
        self.register_buffer("conditioned_circular", torch.nonzero(mask & circular)[:, 0])
        # Plain float64 tensors rather than buffers, cast to the input's dtype on use, so that a
        # float32-built layer moved to float64 keeps exact bounds (π, not float32's π).
        self.interval = (left[~mask], right[~mask])
        self.angle_scale = 2.0 * math.pi / (right - left)[mask & circular]
        n_inputs = len(self.conditioned_linear) + 2 * len(self.conditioned_circular)
        self.conditioner = MLP(max(n_inputs, 1), len(self.transformed) * params_per_feature, hidden, activation)

    def _conditioner_input(self, z: torch.Tensor) -> torch.Tensor:
        """Conditioned features, angles as (cos, sin); a constant column when nothing is conditioned on."""
        angles = z[:, self.conditioned_circular] * self.angle_scale.to(z)
        inputs = torch.cat([z[:, self.conditioned_linear], torch.cos(angles), torch.sin(angles)], dim=1)
        return inputs if inputs.shape[1] > 0 else torch.ones_like(z[:, :1])

    def _couple(self, z: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner(self._conditioner_input(z)).reshape(z.shape[0], len(self.transformed), -1)
        values, logdet = self._transform(z[:, self.transformed], params, inverse)
        return z.index_copy(1, self.transformed, values), logdet.sum(dim=1)

    @abstractmethod
    def _transform(
        self, values: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise map of the transformed features ``(B, n)`` given ``params (B, n, P)``; log-dets ``(B, n)``."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, inverse=True)


class AffineCoupling(_Coupling):
    """RealNVP affine coupling ``x = z · exp(s) + t`` on the transformed (linear) features.

    The log-scale is soft-bounded, ``s = max_log_scale · tanh(raw / max_log_scale)``, for stable
    training. The identity at initialisation (the conditioner's output starts at zero).

    Parameters
    ----------
    mask : sequence of bool or bool Tensor, shape (D,)
        ``True`` for the features conditioned on, ``False`` for those transformed.
    circular : sequence of bool or bool Tensor, shape (D,), optional
        Angular features. They may only be conditioned on: an affine map does not preserve a
        circle, so a circular transformed feature raises ``ValueError``.
    left, right : float or per-feature values, optional
        Period ``[left, right)`` of the circular features (used for their (cos, sin) embedding);
        ``None``: ``[−π, π)``. Unused on linear features.
    hidden : sequence of int
        Hidden widths of the conditioner.
    activation : callable returning nn.Module
        Conditioner activation.
    max_log_scale : float
        Bound on ``|s|`` per feature.
    """

    def __init__(
        self,
        mask: Sequence[bool] | torch.Tensor,
        circular: Sequence[bool] | torch.Tensor | None = None,
        left: FeatureValues | None = None,
        right: FeatureValues | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.SiLU,
        max_log_scale: float = 2.0,
    ) -> None:
        super().__init__(mask, circular, left, right, math.inf, 2, hidden, activation)
        bad = self.transformed[self.circular[self.transformed]]
        if len(bad):
            raise ValueError(
                f"AffineCoupling cannot transform circular features {bad.tolist()}: "
                "condition on them, or use SplineCoupling for angles"
            )
        self.max_log_scale = max_log_scale

    def _transform(
        self, values: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw_scale = params.unbind(dim=-1)
        log_scale = self.max_log_scale * torch.tanh(raw_scale / self.max_log_scale)
        if inverse:
            return (values - shift) * torch.exp(-log_scale), -log_scale
        return values * torch.exp(log_scale) + shift, log_scale


class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (neural spline flow) with a per-feature domain.

    Each transformed feature goes through :func:`~boltzflow.flows.splines.rq_spline` on its own
    interval: linear features with identity tails outside ``[left, right]``, circular features
    mapped onto their period ``[left, right)``. The identity at initialisation.

    Parameters
    ----------
    mask : sequence of bool or bool Tensor, shape (D,)
        ``True`` for the features conditioned on, ``False`` for those transformed.
    circular : sequence of bool or bool Tensor, shape (D,), optional
        Angular features (conditioned on as (cos, sin); transformed as circle maps).
    left, right : float or per-feature values, optional
        Spline intervals. ``None``: ``[−π, π]`` on circular features, ``[−tail_bound, tail_bound]``
        on the others.
    num_bins : int
        Number of spline bins ``K``.
    hidden : sequence of int
        Hidden widths of the conditioner.
    activation : callable returning nn.Module
        Conditioner activation.
    tail_bound : float
        Default half-width of the interval of linear features.
    """

    def __init__(
        self,
        mask: Sequence[bool] | torch.Tensor,
        circular: Sequence[bool] | torch.Tensor | None = None,
        left: FeatureValues | None = None,
        right: FeatureValues | None = None,
        num_bins: int = 8,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.SiLU,
        tail_bound: float = 5.0,
    ) -> None:
        super().__init__(mask, circular, left, right, tail_bound, 3 * num_bins, hidden, activation)
        self.num_bins = num_bins

    def _transform(
        self, values: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        widths, heights, derivatives = params.split(self.num_bins, dim=-1)
        left, right = self.interval
        return rq_spline(values, widths, heights, derivatives, inverse, left, right, self.circular[self.transformed])
