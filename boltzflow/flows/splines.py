"""Monotone rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows"), elementwise.

The spline maps an interval ``[left, right]`` onto itself through ``K`` bins whose widths, heights
and knot derivatives come from unconstrained parameters (a conditioner's output). On each bin,
with ``ξ ∈ [0, 1]`` the position in the bin, ``s = h/w`` its slope and ``d0, d1`` the derivatives at
its knots,

    y = y0 + h (s ξ² + d0 ξ(1−ξ)) / (s + (d0 + d1 − 2s) ξ(1−ξ)),

which is monotone, C¹ across knots and invertible in closed form (a quadratic in ``ξ``).

Two kinds of domain, chosen per element:

* linear: outside ``[left, right]`` the map is the identity (log-det 0), and the boundary
  derivatives are 1 so that the spline joins the identity tails continuously with its derivative;
* circular (an angle): ``[left, right]`` is one period; both ends share one learned derivative, so
  the map is C¹ on the circle; inputs outside the interval are first wrapped into it.

At zero parameters (equal bins, all derivatives 1) the spline is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _knots(unnormalised: torch.Tensor, min_size: float, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Knot positions ``(..., K+1)`` from ``K`` unnormalised bin sizes; the ends are exactly ``left``, ``right``."""
    num_bins = unnormalised.shape[-1]
    fractions = min_size + (1.0 - min_size * num_bins) * torch.softmax(unnormalised, dim=-1)
    interior = left[..., None] + (right - left)[..., None] * torch.cumsum(fractions, dim=-1)[..., :-1]
    return torch.cat([left[..., None], interior, right[..., None]], dim=-1)


def rq_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    inverse: bool = False,
    left: float | torch.Tensor = -1.0,
    right: float | torch.Tensor = 1.0,
    circular: bool | torch.Tensor = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a rational-quadratic spline (or its inverse) elementwise.

    Parameters
    ----------
    x : Tensor, shape (...)
        Inputs.
    widths, heights : Tensor, shape (..., K)
        Unnormalised bin widths and heights (softmax-normalised, each at least ``min_bin_*`` of
        the interval).
    derivatives : Tensor, shape (..., K)
        Unnormalised knot derivatives (``softplus``, shifted so 0 gives 1, plus ``min_derivative``):
        entries ``0 .. K−2`` at the interior knots; entry ``K−1`` at both boundary knots of a
        circular element. It is unused for a linear element, whose boundary derivatives are 1.
    inverse : bool
        Apply the inverse map instead.
    left, right : float or Tensor broadcastable to ``x``
        The interval (one period for circular elements).
    circular : bool or bool Tensor broadcastable to ``x``
        Which elements live on a circular domain.
    min_bin_width, min_bin_height, min_derivative : float
        Lower bounds keeping the spline well conditioned.

    Returns
    -------
    y : Tensor, shape (...)
        The transformed values (broadcast shape of ``x`` and the parameters).
    logabsdet : Tensor, shape (...)
        ``log|dy/dx|`` of the map applied, per element.
    """
    num_bins = widths.shape[-1]
    if min_bin_width * num_bins >= 1.0 or min_bin_height * num_bins >= 1.0:
        raise ValueError(f"minimal bin width/height too large for {num_bins} bins")
    left = torch.as_tensor(left, dtype=x.dtype, device=x.device)
    right = torch.as_tensor(right, dtype=x.dtype, device=x.device)
    circular = torch.as_tensor(circular, dtype=torch.bool, device=x.device)
    shape = torch.broadcast_shapes(
        x.shape, left.shape, right.shape, circular.shape, widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1]
    )
    x, left, right, circular = (t.expand(shape) for t in (x, left, right, circular))
    widths, heights, derivatives = (t.expand(*shape, num_bins) for t in (widths, heights, derivatives))

    outside = (x < left) | (x > right)
    x = torch.where(circular & outside, left + torch.remainder(x - left, right - left), x)
    inside = circular | ~outside
    x_clamped = torch.minimum(torch.maximum(x, left), right)

    knots_x = _knots(widths, min_bin_width, left, right)
    knots_y = _knots(heights, min_bin_height, left, right)
    shift = math.log(math.expm1(1.0 - min_derivative))
    knot_derivatives = min_derivative + F.softplus(derivatives + shift)
    boundary = torch.where(circular[..., None], knot_derivatives[..., -1:], torch.ones_like(knot_derivatives[..., -1:]))
    knot_derivatives = torch.cat([boundary, knot_derivatives[..., :-1], boundary], dim=-1)

    search = knots_y if inverse else knots_x
    bin_index = (x_clamped[..., None] >= search[..., 1:-1]).sum(dim=-1, keepdim=True)

    def at(knots: torch.Tensor, offset: int) -> torch.Tensor:
        return knots.gather(-1, bin_index + offset)[..., 0]

    x0, x1, y0, y1 = at(knots_x, 0), at(knots_x, 1), at(knots_y, 0), at(knots_y, 1)
    d0, d1 = at(knot_derivatives, 0), at(knot_derivatives, 1)
    width, height = x1 - x0, y1 - y0
    slope = height / width
    curvature = d0 + d1 - 2.0 * slope

    if inverse:
        # Solve the quadratic for the distance to the nearer knot of the bin (a mirrored bin
        # swaps d0 and d1), so the root stays accurate at both ends of the bin.
        mirrored = x_clamped - y0 > y1 - x_clamped
        delta = torch.where(mirrored, y1 - x_clamped, x_clamped - y0)
        d_near = torch.where(mirrored, d1, d0)
        a = height * (slope - d_near) + delta * curvature
        b = height * d_near - delta * curvature
        c = -slope * delta
        discriminant = (b * b - 4.0 * a * c).clamp_min(0.0)
        root = 2.0 * c / (-b - torch.sqrt(discriminant))
        xi = torch.where(mirrored, 1.0 - root, root).clamp(0.0, 1.0)
    else:
        xi = ((x_clamped - x0) / width).clamp(0.0, 1.0)
    mixed = xi * (1.0 - xi)
    denominator = slope + curvature * mixed
    y = x0 + xi * width if inverse else y0 + height * (slope * xi * xi + d0 * mixed) / denominator
    log_dydx = (
        2.0 * torch.log(slope)
        + torch.log(d1 * xi * xi + 2.0 * slope * mixed + d0 * (1.0 - xi) ** 2)
        - 2.0 * torch.log(denominator)
    )
    logabsdet = -log_dydx if inverse else log_dydx
    return torch.where(inside, y, x), torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
