"""Rigid-body coordinates: atoms of N identical rigid molecules ↔ (positions, unit quaternions).

A molecule is a reference geometry ``r_k`` (``n_sites × 3``, body frame, around the molecule's
reference point — e.g. its centre or its oxygen). Its lab-frame sites are

    a_k = position + R(q) r_k,

with ``R(q)`` the active rotation of the unit quaternion ``q`` (:mod:`boltzflow.geometry.quaternions`). Sites flagged
``virtual`` (e.g. the M site of TIP4P water, placed by the force field from the real atoms) are
produced by :meth:`RigidBodyCoordinates.to_atoms` like any other site but are ignored when fitting
a rigid body to given coordinates, so stale virtual-site positions in the input do not matter.

:meth:`~RigidBodyCoordinates.from_atoms` is the least-squares inverse: the rotation is the best
fit (Horn's quaternion form of Kabsch's problem, :func:`~boltzflow.geometry.quaternions.best_fit_rotation`) of the
reference sites onto the given ones, with the canonical sign ``w > 0``, so slightly non-rigid
inputs (MD frames with flexible bonds, rounding) get their nearest rigid body, and the RMS residual
is returned. Molecules must be whole (not split across a periodic boundary).

:class:`RigidBodySpec` describes a rigid-body system (geometry, number of molecules, reference
centres, box) for :class:`~boltzflow.systems.system.System` and the flow builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .quaternions import best_fit_rotation, rotate


@dataclass(frozen=True, eq=False)
class RigidBodySpec:
    """The rigid-body structure of a system whose configurations are the sites of N identical molecules.

    Configurations ``x`` are the sites' Cartesian coordinates, molecule by molecule, flattened:
    ``x.reshape(N, n_sites, 3)``.

    Attributes
    ----------
    reference : np.ndarray, shape (n_sites, 3)
        Body-frame geometry around the molecule's reference point.
    centres : np.ndarray, shape (N, 3)
        Reference positions of the molecules' reference points (e.g. lattice sites).
    box : np.ndarray or None, shape (3,)
        Orthorhombic periodic box lengths. ``None``: the centres are fixed at ``centres`` and
        only the orientations are free.
    virtual : tuple of bool
        Per site: placed from the others by the force field (ignored when fitting).
    """

    reference: np.ndarray
    centres: np.ndarray
    box: np.ndarray | None = None
    virtual: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        reference = np.asarray(self.reference, dtype=np.float64)
        centres = np.asarray(self.centres, dtype=np.float64).reshape(-1, 3)
        if reference.ndim != 2 or reference.shape[1] != 3 or reference.shape[0] < 1:
            raise ValueError(f"reference geometry must have shape (n_sites, 3), got {reference.shape}")
        if not (np.isfinite(reference).all() and np.isfinite(centres).all()):
            raise ValueError("reference geometry and centres must be finite")
        virtual = tuple(bool(v) for v in self.virtual) or (False,) * reference.shape[0]
        if len(virtual) != reference.shape[0]:
            raise ValueError(f"virtual needs one flag per site ({reference.shape[0]}), got {len(virtual)}")
        real = reference[~np.asarray(virtual)]
        if len(real) < 2 or np.linalg.matrix_rank(real - real.mean(0), tol=1e-9) < 2:
            raise ValueError("the real (non-virtual) sites must not be collinear: their orientation is undefined")
        box = None
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (3,) or not (np.isfinite(box).all() and (box > 0).all()):
                raise ValueError(f"box must be three positive lengths, got {self.box!r}")
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "virtual", virtual)

    @property
    def n_molecules(self) -> int:
        """Number of molecules ``N``."""
        return self.centres.shape[0]

    @property
    def n_sites(self) -> int:
        """Sites per molecule."""
        return self.reference.shape[0]

    @property
    def dim(self) -> int:
        """Cartesian degrees of freedom of a configuration, ``3 N n_sites``."""
        return 3 * self.n_molecules * self.n_sites

    def to_config(self) -> dict[str, Any]:
        """JSON-able form (for model files)."""
        return {
            "reference": self.reference.tolist(), "centres": self.centres.tolist(),
            "box": None if self.box is None else self.box.tolist(), "virtual": list(self.virtual),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RigidBodySpec:
        """Inverse of :meth:`to_config`."""
        return cls(np.asarray(config["reference"]), np.asarray(config["centres"]), config["box"],
                   tuple(config["virtual"]))


class RigidBodyCoordinates(nn.Module):
    """Sites of ``N`` identical rigid molecules from positions and quaternions, and back.

    Parameters
    ----------
    reference : array-like, shape (n_sites, 3)
        Body-frame geometry.
    virtual : sequence of bool, optional
        Sites ignored when fitting (virtual sites).
    fit_weights : array-like, shape (n_sites,), optional
        Weights of the real sites in the fit (e.g. masses); equal by default. Virtual sites get
        weight 0 whatever is given.
    """

    def __init__(
        self,
        reference: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
        virtual: Sequence[bool] | None = None,
        fit_weights: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        reference = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        n_sites = reference.shape[0]
        virtual_mask = torch.zeros(n_sites, dtype=torch.bool) if virtual is None else torch.as_tensor(
            list(virtual), dtype=torch.bool)
        weights = torch.ones(n_sites, dtype=torch.float64) if fit_weights is None else torch.as_tensor(
            np.asarray(fit_weights, dtype=np.float64))
        if reference.shape != (n_sites, 3) or virtual_mask.shape != (n_sites,) or weights.shape != (n_sites,):
            raise ValueError("reference (n_sites, 3), virtual (n_sites,) and fit_weights (n_sites,) must agree")
        weights = torch.where(virtual_mask, torch.zeros_like(weights), weights)
        if bool((weights < 0).any()) or int((weights > 0).sum()) < 2:
            raise ValueError("need at least two real sites with positive fit weight")
        self.register_buffer("reference", reference)
        self.register_buffer("fit_weights", weights / weights.sum())

    @property
    def n_sites(self) -> int:
        """Sites per molecule."""
        return self.reference.shape[0]

    def to_atoms(self, positions: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
        """Sites ``(..., N, n_sites, 3)`` of molecules at ``positions (..., N, 3)`` with orientations ``(..., N, 4)``.

        ``q`` and ``−q`` give identical sites (bit for bit).
        """
        if positions.shape[-1] != 3 or quaternions.shape[-1] != 4 or positions.shape[:-1] != quaternions.shape[:-1]:
            raise ValueError(
                f"positions (..., N, 3) and quaternions (..., N, 4) must match, got {tuple(positions.shape)} "
                f"and {tuple(quaternions.shape)}"
            )
        sites = rotate(quaternions[..., None, :], self.reference.to(quaternions))
        return positions[..., None, :] + sites

    def from_atoms(self, atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best-fit rigid bodies of sites ``(..., N, n_sites, 3)``.

        Returns
        -------
        positions : Tensor, shape (..., N, 3)
            Lab positions of the reference points.
        quaternions : Tensor, shape (..., N, 4)
            Orientations with the canonical sign.
        residual : Tensor, shape (..., N)
            Weighted RMS deviation of the given real sites from the fitted rigid body (0 for
            exactly rigid input, up to rounding).
        """
        if atoms.shape[-2:] != (self.n_sites, 3):
            raise ValueError(f"expected sites of shape (..., N, {self.n_sites}, 3), got {tuple(atoms.shape)}")
        w = self.fit_weights.to(atoms)
        reference = self.reference.to(atoms)
        ref_centre = w @ reference
        lab_centre = torch.einsum("k,...ka->...a", w, atoms)
        q, residual = best_fit_rotation(reference - ref_centre, atoms - lab_centre[..., None, :], w)
        positions = lab_centre - rotate(q, ref_centre)
        return positions, q, residual


__all__ = ["RigidBodyCoordinates", "RigidBodySpec"]
