"""Periodic position flows: circle maps of the molecules' fractional box coordinates.

Each free molecule's fractional coordinate ``s ∈ [0, 1)`` along one box axis is a point on a
circle; :class:`TorusCouplingLayer` moves it by a circular rational-quadratic spline
(:func:`~boltzflow.flows.splines.rq_spline` with ``circular=True``: a diffeomorphism of the circle,
C¹ across the wrap point, with the closed-form inverse and exact log-derivative). The spline of
molecule ``i`` on axis ``a`` is conditioned, through :class:`~.conditioners.MoleculeAttention`, on
what the layer keeps: the other two axes of every molecule, every orientation (even features
``q qᵀ``) and the static features. Three layers with ``a = 0, 1, 2`` move all coordinates.

Log-densities of fractional coordinates are per unit fractional volume; the final map to
Cartesian sites (:class:`~.model.RigidToCartesian`) adds the box lengths' ``log L``. The gauge
molecule (the first) has no free position (:mod:`.layout`).
"""

from __future__ import annotations

import torch

from ..base import Bijection
from ..splines import rq_spline
from .conditioners import MoleculeAttention, orientation_features, periodic_features
from .layout import RigidLayout


class TorusCouplingLayer(Bijection):
    """Circle maps of one box axis of every free molecule, conditioned on the rest of the state.

    Parameters
    ----------
    layout : RigidLayout
        State layout (must have a periodic box).
    axis : int
        Box axis transformed (0, 1 or 2).
    num_bins : int
        Circular spline bins.
    width, blocks, heads : int
        Conditioner size (:class:`MoleculeAttention`).
    """

    def __init__(self, layout: RigidLayout, axis: int, num_bins: int = 8, width: int = 64, blocks: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if not layout.periodic or layout.n_free == 0:
            raise ValueError("position flows need a periodic box and at least two molecules")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        self.layout = layout
        self.axis = int(axis)
        self.kept = [a for a in range(3) if a != axis]
        self.num_bins = int(num_bins)
        in_features = layout.static_width + 4 + 10
        self.conditioner = MoleculeAttention(in_features, 3 * self.num_bins, width, blocks, heads)

    def _transform(self, z: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.layout.split(z)
        kept = self.layout.all_fractional(s)[..., self.kept]
        features = self.layout.features(z.shape[0], z, periodic_features(kept), orientation_features(q))
        params = self.conditioner(features)[:, 1:]  # the gauge molecule has no free position
        k = self.num_bins
        moved, logdet = rq_spline(
            s[..., self.axis], params[..., :k], params[..., k : 2 * k], params[..., 2 * k :], inverse=inverse,
            left=0.0, right=1.0, circular=True,
        )
        s_new = s.clone()
        s_new[..., self.axis] = torch.remainder(moved, 1.0)
        return self.layout.join(q, s_new), logdet.sum(-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=True)


__all__ = ["TorusCouplingLayer"]
