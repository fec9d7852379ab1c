"""Ready-made flows for a :class:`~boltzflow.systems.system.System`, and saving/loading them.

:func:`build_flow` picks the architecture from the system:

* toy systems (no topology): coupling layers on ``R^D`` (rational-quadratic splines on linear
  domains, or RealNVP affine couplings), followed by an elementwise affine standardisation
  ``x = loc + scale · y`` fitted to data (mean and standard deviation), so that training starts
  at the scale of the data; for translation-invariant particle systems (``system.particles``)
  the flow lives on the ``(n - 1) d`` centre-of-mass-free coordinates
  (:class:`~boltzflow.flows.centre_of_mass.CentreOfMassFree`), its samples have zero centre of
  mass and its density is per unit volume of that subspace; particles in the plane are modelled
  in the frame of their first pair (:class:`~boltzflow.flows.planar_frame.PlanarFrame`), with a
  uniform orientation, on the same measure;
* molecular systems (topology present): coupling layers on the internal coordinates of
  :class:`~boltzflow.flows.internal_coordinates.InternalCoordinates` (dihedrals circular, bonds
  and angles linear and normalised on the data), followed by the internal → Cartesian map. The
  flow's ``log_prob(x)`` is then ``log p_ic(ic(x)) + logdet_inverse(x)``: the Cartesian density
  per unit volume of the rigid-motion quotient (the constant ``8π² V`` of rigid-body motion is
  left out). Samples come out in the canonical frame of the root atoms.

A model file (:func:`save_model`) holds the constructor configuration and the state dict (which
contains every data-derived normalisation as buffers), so :func:`load_model` rebuilds the same
flow without the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..samples import SampleSet
from ..systems.system import System
from .base import Bijection, Compose
from .coupling import AffineCoupling, SplineCoupling, alternating_masks
from .distributions import BaseDistribution, FlowDistribution
from .centre_of_mass import CentreOfMassFree
from .internal_coordinates import InternalCoordinates
from .model_file import ModelFileError, load_model_file, load_state, save_model_file
from .planar_frame import OnFeatures, PlanarFrame
from .rigid.model import KIND as RIGID_KIND, build_rigid_flow, rigid_config_mismatch, rigid_flow_from_config

KINDS = ("spline", "affine")


class Standardize(Bijection):
    """Elementwise affine map ``x = loc + scale · y`` (``forward``), with buffers fitted to data.

    Parameters
    ----------
    dim : int
        Number of features; starts as the identity (``loc = 0``, ``scale = 1``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(dim, dtype=torch.float64))

    def fit(self, x: torch.Tensor, min_scale: float = 1e-3) -> Standardize:
        """Set ``loc`` and ``scale`` to the mean and standard deviation (floored) of ``x (B, dim)``."""
        x = x.detach().to(self.loc)
        if x.shape[0] < 2:
            raise ValueError("fitting the standardisation needs at least 2 samples")
        self.loc.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(min_scale))
        return self

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale.to(z)
        return self.loc.to(z) + scale * z, scale.log().sum().expand(z.shape[0])

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale.to(x)
        return (x - self.loc.to(x)) / scale, -scale.log().sum().expand(x.shape[0])


def _couplings(
    dim: int, circular: torch.Tensor, kind: str, n_layers: int, hidden: Sequence[int], num_bins: int,
    tail_bound: float,
) -> list[Bijection]:
    if kind not in KINDS:
        raise ValueError(f"unknown flow kind '{kind}'; choose one of {', '.join(KINDS)}")
    if kind == "affine" and bool(circular.any()):
        raise ValueError("affine couplings cannot transform angles: use kind='spline' for molecules")
    masks = alternating_masks(dim, n_layers)
    if kind == "affine":
        return [AffineCoupling(m, circular, hidden=hidden) for m in masks]
    return [SplineCoupling(m, circular, num_bins=num_bins, hidden=hidden, tail_bound=tail_bound) for m in masks]


def flow_from_config(config: dict[str, Any], topology: Any) -> FlowDistribution:
    """The untrained, unfitted flow described by ``config`` (a model file's or ``flow.config``).

    Parameters
    ----------
    config : dict
        The architecture, as :func:`build_flow` records it in ``flow.config``.
    topology : mdtraj.Topology or None
        The system's topology (needed for molecular flows on internal coordinates).

    Returns
    -------
    FlowDistribution
        Same architecture, freshly initialised parameters (load a state dict to restore it).

    Examples
    --------
    >>> import boltzflow as bf
    >>> system = bf.load_system("double_well_2d")
    >>> flow = build_flow(system, n_layers=2, hidden=(8,))
    >>> fresh = flow_from_config(flow.config, system.topology)
    >>> sorted(fresh.state_dict()) == sorted(flow.state_dict())
    True
    """
    if config["kind"] == RIGID_KIND:
        return rigid_flow_from_config(config)
    dim = config["dim"]
    if config["molecular"]:
        ic = InternalCoordinates.from_topology(topology)
        if config.get("circular") is not None:  # which dihedrals the data left circular
            ic.circular.copy_(torch.as_tensor(config["circular"], dtype=torch.bool))
        circular = ic.circular.clone()
        last: Bijection = ic
        latent_dim = ic.dim
    elif config.get("frame") == "planar":
        # 2D particles: couplings and standardisation on the shape features, the orientation θ uniform
        n_particles = config["particles"][0]
        frame = PlanarFrame(n_particles)
        shape = _couplings(
            frame.dim - 1, torch.zeros(frame.dim - 1, dtype=torch.bool), config["kind"], config["n_layers"],
            config["hidden"], config["num_bins"], config["tail_bound"],
        )
        inner = Compose(*shape, Standardize(frame.dim - 1))
        circular = torch.arange(frame.dim) == 0
        bijection = Compose(OnFeatures(inner, range(1, frame.dim), frame.dim), frame)
        return FlowDistribution(BaseDistribution(frame.dim, circular), bijection).double()
    else:
        particles = config.get("particles")
        centre = None if particles is None else CentreOfMassFree(*particles)
        latent_dim = dim if centre is None else centre.latent_dim
        circular = torch.zeros(latent_dim, dtype=torch.bool)
        last = Standardize(latent_dim) if centre is None else Compose(Standardize(latent_dim), centre)
    layers = _couplings(
        latent_dim, circular, config["kind"], config["n_layers"], config["hidden"], config["num_bins"],
        config["tail_bound"],
    )
    return FlowDistribution(BaseDistribution(latent_dim, circular), Compose(*layers, last)).double()


def _data_tensor(data: SampleSet | np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    x = data.x if isinstance(data, SampleSet) else data
    if isinstance(data, SampleSet):
        x = x[np.isfinite(data.log_weights)]
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"data must have shape (N, {dim}), got {tuple(x.shape)}")
    return x


def build_flow(
    system: System,
    kind: str = "spline",
    n_layers: int = 6,
    hidden: Sequence[int] = (64, 64),
    num_bins: int = 8,
    tail_bound: float = 5.0,
    data: SampleSet | np.ndarray | torch.Tensor | None = None,
    max_linear_std: float | None = 0.6,
    planar_frame: bool | None = None,
) -> FlowDistribution:
    """A flow ``q(x)`` on the configuration space of ``system`` (float64, identity couplings at start).

    Parameters
    ----------
    system : System
        Target; its ``topology`` decides between a flow on ``R^D`` and one on internal coordinates.
        A rigid-body system (``system.rigid_bodies``) gets a flow on positions and quaternions
        (:func:`~boltzflow.flows.rigid.build_rigid_flow`, with ``n_layers``, ``num_bins`` and
        ``hidden``; it needs no data-fitted normalisation, so ``data`` is not used).
    kind : {"spline", "affine"}
        Coupling type: rational-quadratic splines, or RealNVP affine (toy systems only).
    n_layers : int
        Number of coupling layers (alternating masks).
    hidden : sequence of int
        Hidden widths of each conditioner.
    num_bins : int
        Spline bins.
    tail_bound : float
        Half-width of the spline interval of linear (standardised) features.
    data : SampleSet or array, optional
        Configurations ``(N, D)`` to fit the normalisation: mean/std of each coordinate (toy) or
        of bonds and angles (molecules). Zero-weight samples of a SampleSet are ignored. Without
        data the standardisation is the identity; a molecular flow falls back to ``system.x0``
        with a scale of 0.05 (nm / rad) and all dihedrals circular.
    max_linear_std : float or None
        Molecules: dihedrals whose circular spread over ``data`` is below this (rad) are modelled
        as linear features (see :meth:`InternalCoordinates.fit_normalization`); ``None`` keeps
        all dihedrals circular.
    planar_frame : bool or None
        Particles in 2D (``system.particles`` with ``d = 2``): model the configurations in the frame
        of the first pair (:class:`~boltzflow.flows.planar_frame.PlanarFrame`: the rigid motions are
        taken out, the orientation is exactly uniform). ``None`` (default) uses it for 2D systems
        of at least 3 particles.

    Returns
    -------
    FlowDistribution
        Its ``config`` attribute holds the constructor arguments (for :func:`save_model`).
    """
    if system.rigid_bodies is not None:  # rigid molecules: a flow on positions and quaternions
        if kind != "spline":
            raise ValueError(f"rigid-body systems use spline flows on S³ and the box torus, not kind='{kind}'")
        return build_rigid_flow(system.rigid_bodies, n_layers=n_layers, num_bins=num_bins, hidden=tuple(hidden),
                                molecular=system.topology is not None)
    config = {
        "kind": kind, "n_layers": int(n_layers), "hidden": [int(h) for h in hidden], "num_bins": int(num_bins),
        "tail_bound": float(tail_bound), "dim": system.dim, "molecular": system.topology is not None,
    }
    x = None if data is None else _data_tensor(data, system.dim)
    if config["molecular"]:
        # fitted first: the data decide which dihedrals stay circular, hence the coupling layers
        normalization = InternalCoordinates.from_topology(system.topology)
        if x is None:
            normalization.fit_normalization(torch.as_tensor(system.x0, dtype=torch.float64)[None], scale=0.05)
        else:
            normalization.fit_normalization(x, max_linear_std=max_linear_std)
        config["circular"] = normalization.circular.tolist()
        flow = flow_from_config(config, system.topology)
        flow.bijection.layers[-1].load_state_dict(normalization.state_dict())
    else:
        if system.particles is not None:  # translation invariant: model the centred configurations only
            config["particles"] = [int(v) for v in system.particles]
            if planar_frame is None:
                planar_frame = system.particles[1] == 2 and system.particles[0] >= 3
            if planar_frame:
                config["frame"] = "planar"
        elif planar_frame:
            raise ValueError(f"planar_frame needs a particle system; '{system.name}' has no particles")
        flow = flow_from_config(config, system.topology)
        last = flow.bijection.layers[-1]
        if config.get("frame") == "planar":
            if x is not None:  # standardise the shape features (all but the orientation θ)
                shape = last.inverse(x)[0][:, 1:]
                flow.bijection.layers[0].bijection.layers[-1].fit(shape)
        elif x is not None:
            if isinstance(last, Compose):  # Standardize, then the centre-of-mass-free embedding
                last.layers[0].fit(last.layers[1].inverse(x)[0])
            else:
                last.fit(x)
    flow.config = config
    return flow


def _compact_state(flow: FlowDistribution, parameter_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict with the parameters rounded to ``parameter_dtype`` (float32 where that overflows)."""
    parameters = {name for name, _ in flow.named_parameters()}
    state = {}
    for name, value in flow.state_dict().items():
        value = value.detach().cpu()
        if name in parameters and value.is_floating_point():
            rounded = value.to(parameter_dtype)
            value = rounded if torch.isfinite(rounded).all() else value.to(torch.float32)
        state[name] = value
    return state


def save_model(
    flow: FlowDistribution, path: str | Path, metadata: dict[str, Any] | None = None,
    parameter_dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a flow built by :func:`build_flow` (configuration + state dict) atomically.

    The network parameters are stored rounded to ``parameter_dtype`` (half precision by default:
    a quarter of the float64 size), the buffers (normalisations, masks) exactly. The loaded model
    is then the flow with rounded parameters — sampling and ``log_prob`` both use them, so its
    importance weights are exact; the rounding only perturbs how well it fits (on the shipped
    alanine dipeptide flow the relative ESS was unchanged to three digits). Parameters that
    would overflow the half range are stored in float32.

    Parameters
    ----------
    flow : FlowDistribution
        A flow from :func:`build_flow` or :func:`load_model`.
    path : path
        Output file (conventionally ``.pt``); parent folders are created.
    metadata : dict, optional
        JSON-like information (system name, training settings...), returned by :func:`load_model`
        as ``flow.metadata``.
    parameter_dtype : torch.dtype
        Storage precision of the network parameters (``torch.float64`` keeps them exactly).

    Returns
    -------
    Path
    """
    if not hasattr(flow, "config"):
        raise ValueError("only flows made by build_flow/load_model can be saved (they carry a config)")
    return save_model_file(path, "flow", flow.config, _compact_state(flow, parameter_dtype), metadata)


def load_model(path: str | Path, system: System) -> FlowDistribution:
    """Rebuild a flow saved by :func:`save_model` for ``system``.

    Parameters
    ----------
    path : path
        Model file.
    system : System
        The system the model was trained for (its topology rebuilds the internal coordinates).

    Returns
    -------
    FlowDistribution
        With ``config`` and ``metadata`` attributes.

    Raises
    ------
    ModelFileError
        If the file is missing, corrupted (its SHA-256 does not match) or truncated, not a
        boltzflow model (a pickle that would run code is refused unread), or made for a system of
        another dimension or kind.

    Warns
    -----
    boltzflow.integrity.UnverifiedFileWarning
        For a model file written before checksums were stored.
    """
    config, state, metadata = load_model_file(path, "flow")
    molecular = system.topology is not None
    if config.get("dim") != system.dim or config.get("molecular") != molecular:
        raise ModelFileError(
            f"model {path} was trained for a {'molecular' if config.get('molecular') else 'toy'} system of "
            f"dimension {config.get('dim')}, not for '{system.name}' (dimension {system.dim})"
        )
    if (config.get("kind") == RIGID_KIND) != (system.rigid_bodies is not None) or (
            system.rigid_bodies is not None and rigid_config_mismatch(config, system.rigid_bodies)):
        raise ModelFileError(f"model {path} does not match the rigid-body structure of '{system.name}'")
    flow = load_state(lambda: flow_from_config(config, system.topology), state, path, "flow")
    flow.config = config
    flow.metadata = metadata
    return flow


__all__ = ["KINDS", "ModelFileError", "Standardize", "build_flow", "flow_from_config", "load_model", "save_model"]
