"""A chart of a molecular crystal: rigid molecules near their lattice sites ↔ flat displacement coordinates.

In a crystal every molecule stays near its lattice site and lattice orientation, so its rigid-body
state is best described *relative* to them. :class:`LatticeChart` maps the sites of ``N`` rigid
molecules to a vector ``y`` of ``6N − 3`` real numbers:

* the **Gibbs (Rodrigues) vector** ``g_i = vec(q̃_i) / w(q̃_i)`` of each molecule's rotation
  relative to its lattice orientation, ``q̃_i = q_ref,i⁻¹ ⊗ q_i`` with the sign ``w > 0``
  (``|g| = tan(θ/2)`` for a turn by ``θ``): a bijection from SO(3) (less the measure-zero set of
  half turns) onto ℝ³, so Euclidean flows act on orientations without boundaries. Since it is a
  function of the rotation, ``q`` and ``−q`` have the same chart value: a flow in ``y`` is an
  antipodally symmetric map of every S³.
* the **displacements** ``d_i`` (nm) of molecules ``1 … N−1`` from their sites, after the gauge
  translation that puts molecule 0 on its site, taken as minimum images in the periodic box.

**Measure.** The chart's log-determinant is with respect to the density convention of the
rigid-body flows (:mod:`.model`): S³ surface measure per quaternion and nm³ per free position. The
gnomonic projection has ``dσ = (1 + |g|²)⁻² d³g`` on the hemisphere ``w > 0``, so
``log|det ∂x/∂y| = −2 Σ_i log(1 + |g_i|²)``. (Densities on the hemisphere are twice those on the
whole S³; this constant cancels in every ratio of two densities in the same chart, which is how
the chart is used: maps between temperatures, :mod:`boltzflow.flows.lfep`.)

Displacements larger than half a box edge would wrap: a crystal chart only describes
configurations whose molecules stay within half a box of their sites (always true for a solid).
"""

from __future__ import annotations

import numpy as np
import torch

from ...geometry.quaternions import canonical_sign, conjugate, multiply
from ...geometry.rigid_bodies import RigidBodyCoordinates, RigidBodySpec
from ..base import Bijection


class LatticeChart(Bijection):
    """Displacement coordinates ``y (B, 6N − 3)`` ↔ Cartesian sites ``x (B, 3 N n_sites)`` of a crystal.

    ``forward(y) -> (x, log|det ∂x/∂y|)``; ``inverse(x) -> (y, log|det ∂y/∂x|)``. ``y`` holds the
    ``N`` Gibbs vectors first (molecule by molecule), then the ``N − 1`` displacements.

    Parameters
    ----------
    spec : RigidBodySpec
        Molecule geometry and box (``box=None``: no displacements, only orientations are free).
    lattice : array-like, shape (3 N n_sites,)
        A configuration of the crystal (e.g. the minimised lattice) defining each molecule's site
        and reference orientation.
    """

    def __init__(self, spec: RigidBodySpec, lattice: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        lattice = torch.as_tensor(np.asarray(lattice, dtype=np.float64)).reshape(-1)
        if lattice.shape[0] != spec.dim or not bool(torch.isfinite(lattice).all()):
            raise ValueError(f"the lattice configuration must be {spec.dim} finite coordinates, got {lattice.shape[0]}")
        self.coordinates = RigidBodyCoordinates(spec.reference, spec.virtual)
        self.n_molecules, self.n_sites = spec.n_molecules, spec.n_sites
        sites, orientations, _ = self.coordinates.from_atoms(lattice.reshape(self.n_molecules, self.n_sites, 3))
        self.register_buffer("sites", sites)
        self.register_buffer("orientations", orientations)
        self.periodic = spec.box is not None
        self.register_buffer("box", torch.as_tensor(spec.box if self.periodic else np.ones(3)))

    @property
    def dim(self) -> int:
        """Chart dimension: ``3N`` orientation coordinates plus ``3(N − 1)`` displacements with a box."""
        return 3 * self.n_molecules + (3 * (self.n_molecules - 1) if self.periodic else 0)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y -> (g (B, N, 3), d (B, N − 1, 3))``."""
        if y.ndim != 2 or y.shape[1] != self.dim:
            raise ValueError(f"expected chart coordinates of shape (batch, {self.dim}), got {tuple(y.shape)}")
        n = 3 * self.n_molecules
        return y[:, :n].reshape(-1, self.n_molecules, 3), y[:, n:].reshape(y.shape[0], -1, 3)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, d = self.split(y)
        norm2 = (g * g).sum(-1)
        relative = torch.cat([torch.ones_like(norm2)[..., None], g], dim=-1) / torch.sqrt(1.0 + norm2)[..., None]
        q = multiply(self.orientations.to(y), relative)
        positions = self.sites.to(y).expand(y.shape[0], -1, -1)
        if self.periodic:
            positions = positions + torch.cat([torch.zeros_like(d[:, :1]), d], dim=1)
        x = self.coordinates.to_atoms(positions, q).reshape(y.shape[0], -1)
        return x, -2.0 * torch.log1p(norm2).sum(-1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = 3 * self.n_sites * self.n_molecules
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected configurations of shape (batch, {width}), got {tuple(x.shape)}")
        positions, q, _ = self.coordinates.from_atoms(x.reshape(x.shape[0], self.n_molecules, self.n_sites, 3))
        relative = canonical_sign(multiply(conjugate(self.orientations.to(x)), q))
        g = relative[..., 1:] / relative[..., :1]
        parts = [g.reshape(x.shape[0], -1)]
        if self.periodic:
            sites, box = self.sites.to(x), self.box.to(x)
            d = (positions[:, 1:] - positions[:, :1]) - (sites[1:] - sites[:1])
            parts.append((d - box * torch.round(d / box)).reshape(x.shape[0], -1))
        return torch.cat(parts, dim=1), 2.0 * torch.log1p((g * g).sum(-1)).sum(-1)


__all__ = ["LatticeChart"]
