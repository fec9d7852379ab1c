"""Flows: bijections with log-determinants, coupling layers, base and flow distributions (issue 3)."""

from .base import Bijection, Compose, Inverse
from .coupling import AffineCoupling, SplineCoupling, alternating_masks
from .distributions import BaseDistribution, FlowDistribution
from .nets import MLP
from .splines import rq_spline

__all__ = [
    "MLP",
    "AffineCoupling",
    "BaseDistribution",
    "Bijection",
    "Compose",
    "FlowDistribution",
    "Inverse",
    "SplineCoupling",
    "alternating_masks",
    "rq_spline",
]
