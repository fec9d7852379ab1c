"""Rigid-body flows: a :class:`~boltzflow.flows.distributions.FlowDistribution` over the sites of rigid molecules.

The flow is ``FlowDistribution(RigidBase, Compose(layers..., RigidToCartesian))``:

* :class:`RigidBase` — uniform orientations (each quaternion uniform on S³) and uniform
  fractional positions of the free molecules (:mod:`.layout`);
* blocks of layers, each block = :class:`~.sphere.LinearS3Layer` (orientations, conditioned on
  positions), :class:`~.sphere.MeridianS3Layer` (orientations along meridians around the block's
  axis, conditioned on every molecule's kept direction and the positions), and with a periodic box
  three :class:`~.torus.TorusCouplingLayer` (positions, conditioned on orientations);
* :class:`RigidToCartesian` — positions and quaternions to the Cartesian sites ``x`` that the
  system's energy reads (and back by a best fit).

**Density convention.** ``log q(x)`` is the log-density of the rigid-body coordinates of ``x``
with respect to the product of the S³ surface measure for every quaternion and Lebesgue measure
(nm³ for molecular systems) for every free position: ``exp(−u(x)) / q(x)`` then has expectation
``Z = ∫ exp(−u) Π dσ(q_i) Π d³r_i`` over the flow's samples — the log-weights ``−u − log q`` of
the flow sampler and the ``log Z`` of the estimation layer are in this measure. Uniform
orientations give ``log q = −N log(2π²)``: the orientational partition function in the S³
convention is ``2π² ⟨e^{−u}⟩_Haar`` per molecule (``Z_Haar = Z / (2π²)^N`` for the Haar
probability measure; ``Z_Euler = Z · 4^N`` for the Euler-angle measure ``sin β dα dβ dγ``). With a
box the common translation is removed by the gauge (first molecule at its reference centre), so
``Z`` is per unit volume of that translation, like the centre-of-mass-free particle flows.

:func:`build_rigid_flow` builds an untrained flow from a :class:`~boltzflow.geometry.rigid_bodies.RigidBodySpec`;
its ``config`` (architecture + the spec) is what :func:`boltzflow.flows.models.save_model` stores and
:func:`rigid_flow_from_config` rebuilds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...geometry.quaternions import LOG_AREA_S3, random_uniform
from ...geometry.rigid_bodies import RigidBodyCoordinates, RigidBodySpec
from ..base import Bijection, Compose
from ..distributions import FlowDistribution
from .layout import RigidLayout
from .sphere import LinearS3Layer, MeridianS3Layer
from .torus import TorusCouplingLayer

KIND = "rigid"


class RigidBase(nn.Module):
    """Uniform orientations on S³ and uniform fractional positions in ``[0, 1)³``.

    Parameters
    ----------
    layout : RigidLayout
        State layout.
    """

    def __init__(self, layout: RigidLayout) -> None:
        super().__init__()
        self.layout = layout
        self.dim = layout.dim
        self.register_buffer("_like", torch.empty(0), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of samples and log-densities."""
        return self._like.dtype

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` latent states ``(n, dim)``."""
        like = self._like
        q = random_uniform((n, self.layout.n_molecules), generator, like.dtype, like.device)
        s = torch.rand(n, self.layout.n_free, 3, dtype=like.dtype, device=like.device, generator=generator)
        return self.layout.join(q, s)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``−N log(2π²)`` for every latent state (fractional positions have density 1)."""
        return torch.full((z.shape[0],), -self.layout.n_molecules * LOG_AREA_S3, dtype=z.dtype, device=z.device)


class RigidToCartesian(Bijection):
    """Rigid-body latent state ``(q, s)`` ↔ Cartesian sites, flattened molecule by molecule.

    ``forward`` places molecule ``i`` at ``centre_i + L (s_i − ½)`` (the gauge molecule and, without
    a box, every molecule at its centre) with orientation ``q_i``; its log-determinant is the
    scaling of the free fractional coordinates to lengths, ``F Σ_a log L_a`` (the embedding of
    the rigid-body manifold itself contributes nothing by the density convention of this module).
    ``inverse`` fits a rigid body to each molecule's sites (:meth:`RigidBodyCoordinates.from_atoms`),
    translates the configuration so that the gauge molecule sits at its centre, and wraps the
    others' fractional coordinates into ``[0, 1)``; without a box the fitted positions are dropped.

    Parameters
    ----------
    layout : RigidLayout
        State layout.
    spec : RigidBodySpec
        Geometry (with virtual sites) and centres.
    """

    def __init__(self, layout: RigidLayout, spec: RigidBodySpec) -> None:
        super().__init__()
        self.layout = layout
        self.coordinates = RigidBodyCoordinates(spec.reference, spec.virtual)
        self.n_sites = spec.n_sites

    def _log_scale(self, z: torch.Tensor) -> torch.Tensor:
        total = self.layout.n_free * torch.log(self.layout.box).sum() if self.layout.periodic else 0.0
        return torch.as_tensor(total, dtype=z.dtype, device=z.device).expand(z.shape[0])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.layout.split(z)
        centres = self.layout.centres.to(z)
        positions = centres.expand(z.shape[0], -1, -1)
        if self.layout.periodic:
            positions = centres + self.layout.box.to(z) * (self.layout.all_fractional(s) - 0.5)
        atoms = self.coordinates.to_atoms(positions, q)
        return atoms.reshape(z.shape[0], -1), self._log_scale(z)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = 3 * self.n_sites * self.layout.n_molecules
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected configurations of shape (batch, {width}), got {tuple(x.shape)}")
        atoms = x.reshape(x.shape[0], self.layout.n_molecules, self.n_sites, 3)
        positions, q, _ = self.coordinates.from_atoms(atoms)
        s = x.new_zeros(x.shape[0], 0, 3)
        if self.layout.periodic:
            centres, box = self.layout.centres.to(x), self.layout.box.to(x)
            shifted = positions - (positions[:, :1] - centres[:1])
            s = torch.remainder((shifted[:, 1:] - centres[1:]) / box + 0.5, 1.0)
        return self.layout.join(q, s), -self._log_scale(x)


def _axes(n: int) -> list[torch.Tensor]:
    """The meridian axes of ``n`` blocks: fixed pseudo-random directions (the same in every build)."""
    generator = torch.Generator().manual_seed(20230123)
    return [random_uniform((), generator) for _ in range(n)]


def rigid_flow_from_config(config: dict[str, Any]) -> FlowDistribution:
    """The untrained rigid-body flow described by ``config`` (as made by :func:`build_rigid_flow`)."""
    spec = RigidBodySpec.from_config(config["rigid"])
    layout = RigidLayout(spec)
    size = {"width": config["width"], "blocks": config["attention_blocks"], "heads": config["heads"]}
    layers: list[Bijection] = []
    for axis in _axes(config["n_layers"]):
        layers.append(LinearS3Layer(layout, **size))
        layers.append(MeridianS3Layer(layout, axis, config["num_bins"], tuple(config["hidden"]), **size))
        if layout.periodic and layout.n_free > 0:
            layers += [TorusCouplingLayer(layout, a, config["num_bins"], **size) for a in range(3)]
    flow = FlowDistribution(RigidBase(layout), Compose(*layers, RigidToCartesian(layout, spec))).double()
    flow.config = config
    return flow


def build_rigid_flow(
    spec: RigidBodySpec,
    n_layers: int = 6,
    num_bins: int = 8,
    hidden: tuple[int, ...] = (64, 64),
    width: int = 64,
    attention_blocks: int | None = None,
    heads: int = 4,
    molecular: bool = False,
) -> FlowDistribution:
    """An untrained rigid-body flow (identity layers: uniform orientations and positions at first).

    Parameters
    ----------
    spec : RigidBodySpec
        The system's rigid-body structure.
    n_layers : int
        Number of blocks (each: linear S³ layer, meridian spline layer with its own axis, and
        three position layers when the box has free molecules).
    num_bins : int
        Spline bins (meridian and circle splines).
    hidden : tuple of int
        Hidden widths of the meridian splines' networks.
    width, attention_blocks, heads : int
        Size of the attention conditioners (:class:`~.conditioners.MoleculeAttention`); by
        default 2 attention blocks, none for a single molecule (nothing to attend to).
    molecular : bool
        Recorded in the configuration (whether the system has a topology), for the model-file checks.

    Returns
    -------
    FlowDistribution
        With a ``config`` attribute (``kind = "rigid"``).
    """
    if n_layers < 1 or num_bins < 2:
        raise ValueError("a rigid-body flow needs n_layers >= 1 and num_bins >= 2")
    if attention_blocks is None:
        attention_blocks = 2 if spec.n_molecules > 1 else 0
    config = {
        "kind": KIND, "rigid": spec.to_config(), "dim": spec.dim, "molecular": bool(molecular),
        "n_layers": int(n_layers), "num_bins": int(num_bins), "hidden": [int(h) for h in hidden],
        "width": int(width), "attention_blocks": int(attention_blocks), "heads": int(heads),
    }
    return rigid_flow_from_config(config)


def rigid_config_mismatch(config: dict[str, Any], spec: RigidBodySpec) -> bool:
    """Whether a rigid-body flow's configuration was made for a different geometry, centres or box than ``spec``."""
    saved = RigidBodySpec.from_config(config["rigid"])
    same_box = (saved.box is None) == (spec.box is None) and (saved.box is None or np.allclose(saved.box, spec.box))
    return not (
        saved.reference.shape == spec.reference.shape and np.allclose(saved.reference, spec.reference)
        and saved.centres.shape == spec.centres.shape and np.allclose(saved.centres, spec.centres)
        and same_box and saved.virtual == spec.virtual
    )


__all__ = ["KIND", "RigidBase", "RigidToCartesian", "build_rigid_flow", "rigid_config_mismatch",
           "rigid_flow_from_config"]
