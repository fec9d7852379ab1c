"""Continuous normalizing flow: a learned velocity field integrated by fixed-step RK4.

Coordinates, from the system's to the latent space:

* configuration ``x`` (``(B, D)``) → internal ``y`` (``(B, d)``): the identity, or for particles
  and molecules (``system.particles`` or a topology) the isometric centre-of-mass-free embedding of
  :class:`~boltzflow.flows.centre_of_mass.CentreOfMassFree` (centre of geometry, equal weights;
  ``d = D − n_dims``). Densities are then per unit volume of that subspace, and the energy must be
  translation invariant; or, for molecules, internal coordinates
  (:class:`~boltzflow.flows.internal_coordinates.InternalCoordinates`: bonds, angles, dihedrals,
  ``d = D − 6``), where a configuration's density carries ``log J`` of the chart
  (:meth:`ContinuousFlow.to_configuration_with_log_det`) and densities are per unit volume of the
  quotient by rigid motions. Each dihedral, measured from its branch cut (fitted in its emptiest
  region), is carried from ``(−π, π)`` onto ``R`` by ``atanh`` (with its log-derivative), so a flow
  on ``R^d`` never aliases a turn; rows with a negative bond or an angle outside ``(0, π)`` get
  zero weight;
* ``y`` → standardised ``s = (y − loc) / scale`` (per-coordinate mean and standard deviation of
  the training data, a constant log-determinant ``−Σ log scale``);
* the ODE ``ds/dt = v(s, t)`` runs from data (``t = 0``) to latent (``t = 1``); the latent
  ``x_T = s(1)`` is standard normal, ``log p_Z(x_T) = −‖x_T‖²/2 − (d/2) log 2π``.

Two maps, named as in flow perturbation (Peng & Gao), where "forward" is the noising direction:
**B** = :meth:`ContinuousFlow.decode` (latent → internal coordinates, integrates t = 1 → 0, used to
draw samples) and **F** = :meth:`ContinuousFlow.encode` (internal → latent, t = 0 → 1). With the
same RK4 steps they are inverse up to the integration error. The flow also carries the σ_F network
of flow perturbation (:class:`SigmaF`, trained by
:func:`~boltzflow.flows.continuous_training.train_sigma_f`).

Velocities are trained by flow matching (:mod:`boltzflow.flows.continuous_training`). Model files
(:func:`save_continuous_flow`) hold the configuration and the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..samples import SampleSet
from ..systems.system import System
from .augmentation import random_rotations
from .centre_of_mass import CentreOfMassFree
from .internal_coordinates import InternalCoordinates
from .model_file import ModelFileError, load_model_file, load_state, save_model_file
from .nets import MLP
from .ode import Divergence, rk4, rk4_with_divergence


class VelocityField(nn.Module):
    """MLP velocity ``v(s, t)`` with a sinusoidal time embedding (last layer zero: ``v = 0`` at start).

    Parameters
    ----------
    dim : int
        Dimension of ``s``.
    hidden : sequence of int
        Hidden widths.
    time_features : int
        Frequencies of the embedding ``[t, sin(πkt), cos(πkt)]_{k=1..time_features}``.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256), time_features: int = 8) -> None:
        super().__init__()
        if dim < 1 or time_features < 0:
            raise ValueError(f"need dim >= 1 and time_features >= 0, got {dim}, {time_features}")
        self.dim = dim
        self.register_buffer("frequencies", math.pi * torch.arange(1, time_features + 1, dtype=torch.float64))
        self.net = MLP(dim + 1 + 2 * time_features, dim, hidden)

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(B, dim), (B,) -> (B, dim)``."""
        angles = t[:, None] * self.frequencies.to(s)
        return self.net(torch.cat([s, t[:, None], torch.sin(angles), torch.cos(angles)], dim=1))


class SigmaF(nn.Module):
    """Scale of flow perturbation's forward kernel: ``σ_F(y) = c·(|a| + 0.01·|MLP(s)| + 1e−6)``.

    Peng & Gao's form ``|a| + 0.01·|MLP| + 1e−6`` in units of a fixed scale ``c`` (a buffer, set
    by :func:`~boltzflow.flows.continuous_training.train_sigma_f` to the typical residual ratio),
    so that the same optimiser settings work for any σ_B and coordinate units.

    Parameters
    ----------
    dim : int
        Input dimension (standardised internal coordinates ``s``).
    hidden : sequence of int
        Hidden widths of the MLP (default random initialisation throughout).
    unit : float
        Starting value of ``c`` (``a`` starts at 1).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), unit: float = 1e-3) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("unit", torch.tensor(float(unit), dtype=torch.float64))
        self.net = MLP(dim, 1, hidden)
        self.net.net[-1].reset_parameters()  # not zero: the gradient of |·| vanishes at 0

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, dim) -> (B,)`` positive scales."""
        return self.unit.to(s) * (self.a.abs() + 0.01 * self.net(s)[:, 0].abs() + 1e-6)


class ContinuousFlow(nn.Module):
    """A continuous flow on a system's (centre-of-mass-free) coordinates; see the module docstring.

    Parameters
    ----------
    dim : int
        Configuration dimension ``D``.
    velocity : nn.Module
        ``v(s (B, d), t (B,)) -> (B, d)`` on standardised internal coordinates, e.g. a
        :class:`VelocityField`, or any closed-form field (tests); converted to float64 with the rest.
    particles : tuple of int, optional
        ``(n_particles, n_dims)``: model the centre-of-mass-free coordinates only.
    n_steps : int
        RK4 steps of :meth:`decode` and :meth:`encode` (each step: 4 velocity evaluations).
    sigma_f_hidden : sequence of int
        Hidden widths of the σ_F network.
    sigma_b : float
        The backward perturbation σ_B flow perturbation uses with this flow (σ_F is trained for it).
    internal : InternalCoordinates, optional
        Model a molecule's internal coordinates instead (not with ``particles``).
    """

    def __init__(
        self,
        dim: int,
        velocity: nn.Module,
        particles: tuple[int, int] | None = None,
        n_steps: int = 20,
        sigma_f_hidden: Sequence[int] = (64, 64),
        sigma_b: float = 1e-3,
        internal: InternalCoordinates | None = None,
    ) -> None:
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if not sigma_b > 0:
            raise ValueError(f"sigma_b must be positive, got {sigma_b}")
        self.dim = int(dim)
        if internal is not None and (particles is not None or 3 * internal.n_atoms != self.dim):
            raise ValueError(f"internal coordinates of {internal.n_atoms} atoms need dimension {3 * internal.n_atoms} "
                             f"(got {dim}) and no particles (got {particles})")
        self.internal = internal
        self.centre = None if particles is None else CentreOfMassFree(*particles)
        if self.centre is not None and self.centre.n_particles * self.centre.n_dims != self.dim:
            raise ValueError(f"particles {particles} do not make up dimension {dim}")
        self.latent_dim = internal.dim if internal is not None else (
            self.dim if self.centre is None else self.centre.latent_dim)
        self.particles = None if particles is None else (int(particles[0]), int(particles[1]))
        self.velocity = velocity
        self.n_steps = int(n_steps)
        self.sigma_b = float(sigma_b)
        self.sigma_f = SigmaF(self.latent_dim, sigma_f_hidden, unit=sigma_b)
        self.register_buffer("loc", torch.zeros(self.latent_dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(self.latent_dim, dtype=torch.float64))
        self.double()  # float64 throughout: the central differences and small σ_B of flow perturbation need it

    # ------------------------------------------------------------------ coordinates
    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Configurations ``(B, D)`` → internal coordinates ``(B, d)`` (the centre of mass dropped)."""
        return self.to_internal_with_log_det(x)[0]

    def to_internal_with_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal coordinates and ``log|det ∂y/∂x|`` of the chart (0 for the isometric ones)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected configurations of shape (batch, {self.dim}), got {tuple(x.shape)}")
        if self.internal is not None:
            y, log_det = self.internal.inverse(x)
            d, bound = self._dihedral_bound(y)
            ratio = (y[:, d] / bound).clamp(-1 + 1e-15, 1 - 1e-15)
            w = bound * torch.atanh(ratio)  # (−π, π) of each dihedral onto R
            return torch.cat([y[:, :d.start], w], 1), log_det - torch.log1p(-ratio * ratio).sum(1)
        return (x if self.centre is None else self.centre.inverse(x)[0]), x.new_zeros(x.shape[0])

    def _dihedral_bound(self, like: torch.Tensor) -> tuple[slice, torch.Tensor]:
        """Where the dihedrals sit and ``π / scale``, each normalised dihedral's half-turn."""
        d = self.internal.dihedrals
        return d, math.pi / self.internal.scale[d].to(like)

    def to_configuration(self, y: torch.Tensor) -> torch.Tensor:
        """Internal coordinates ``(B, d)`` → configurations ``(B, D)`` (zero centre of mass or canonical frame)."""
        return self.to_configuration_with_log_det(y)[0]

    def to_configuration_with_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Configurations and ``log|det ∂x/∂y|`` of the chart.

        0 for the identity and the centre-of-mass chart; for internal coordinates ``log J`` plus
        the ``tanh`` squashing of the dihedrals, and ``−inf`` for rows outside the chart's
        one-to-one domain (:meth:`~boltzflow.flows.internal_coordinates.InternalCoordinates.in_domain`:
        a negative bond, an angle outside ``(0, π)``), whose importance weights must be zero.
        """
        if y.ndim != 2 or y.shape[1] != self.latent_dim:
            raise ValueError(f"expected internal coordinates of shape (batch, {self.latent_dim}), got {tuple(y.shape)}")
        if self.internal is not None:
            d, bound = self._dihedral_bound(y)
            a = y[:, d] / bound
            ic = torch.cat([y[:, :d.start], bound * torch.tanh(a)], 1)
            log_sech_sq = -2 * (a.abs() + torch.log1p(torch.exp(-2 * a.abs())) - math.log(2.0))  # log(1 − tanh² a)
            x, log_det = self.internal.forward(ic)
            return x, torch.where(self.internal.in_domain(ic), log_det + log_sech_sq.sum(1), -math.inf)
        return (y if self.centre is None else self.centre.forward(y)[0]), y.new_zeros(y.shape[0])

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        """``s = (y − loc) / scale``."""
        return (y - self.loc.to(y)) / self.scale.to(y)

    def fit_standardization(self, y: torch.Tensor, min_scale: float = 1e-3) -> ContinuousFlow:
        """Set ``loc``/``scale`` to the mean and (floored) standard deviation of internal coordinates ``y``."""
        if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] != self.latent_dim:
            raise ValueError(f"need at least 2 internal coordinate rows of width {self.latent_dim}, got {tuple(y.shape)}")
        self.loc.copy_(y.detach().to(self.loc).mean(0))
        self.scale.copy_(y.detach().to(self.loc).std(0).clamp_min(min_scale))
        return self

    @property
    def log_scale(self) -> torch.Tensor:
        """``Σ log scale``: ``log|det ∂y/∂s|`` of the standardisation."""
        return self.scale.log().sum()

    def velocity_field(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ODE's right-hand side on standardised coordinates."""
        return self.velocity(s, t)

    # ------------------------------------------------------------------ the two maps
    def decode(self, z: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """B: latent ``x_T (B, d)`` → internal coordinates ``y`` (RK4 from t = 1 to 0)."""
        s = rk4(self.velocity_field, z, 1.0, 0.0, n_steps or self.n_steps)
        return self.loc.to(s) + self.scale.to(s) * s

    def encode(self, y: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """F: internal coordinates ``y (B, d)`` → latent ``x_T`` (RK4 from t = 0 to 1)."""
        return rk4(self.velocity_field, self.standardize(y), 0.0, 1.0, n_steps or self.n_steps)

    def decode_with_log_det(
        self, z: torch.Tensor, divergence: Divergence, n_steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B with ``log|det ∂y/∂x_T|`` (integrated divergence plus the standardisation)."""
        s, log_det = rk4_with_divergence(self.velocity_field, z, 1.0, 0.0, n_steps or self.n_steps, divergence)
        return self.loc.to(s) + self.scale.to(s) * s, log_det + self.log_scale.to(s)

    def encode_with_log_det(
        self, y: torch.Tensor, divergence: Divergence, n_steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F with ``log|det ∂x_T/∂y|``."""
        z, log_det = rk4_with_divergence(
            self.velocity_field, self.standardize(y), 0.0, 1.0, n_steps or self.n_steps, divergence
        )
        return z, log_det - self.log_scale.to(z)

    # ------------------------------------------------------------------ densities
    def latent_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p_Z(x_T) = −‖x_T‖²/2 − (d/2) log 2π`` (standard normal latent)."""
        return -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def log_prob(self, x: torch.Tensor, divergence: Divergence, n_steps: int | None = None) -> torch.Tensor:
        """``log q(x) = log p_Z(F(y)) + log|det ∂F/∂y|`` of configurations ``x (B, D)``.

        A density per unit volume of the configuration space (centre-of-mass-free subspace for
        particles, quotient by rigid motions for internal coordinates); exact up to the RK4 error
        with :func:`~boltzflow.flows.ode.exact_divergence`, an unbiased estimate of it with
        Hutchinson's divergence.
        """
        y, chart_log_det = self.to_internal_with_log_det(x)
        z, log_det = self.encode_with_log_det(y, divergence, n_steps)
        return self.latent_log_prob(z) + log_det + chart_log_det

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` standard normal latent vectors ``(n, d)`` (dtype and device of the flow)."""
        return torch.randn(n, self.latent_dim, generator=generator, dtype=self.loc.dtype, device=self.loc.device)

    def sigma_forward(self, y: torch.Tensor) -> torch.Tensor:
        """``σ_F(y)`` ``(B,)`` of internal coordinates (its network sees them standardised)."""
        return self.sigma_f(self.standardize(y))


def particle_layout(system: System) -> tuple[int, int] | None:
    """``(n_particles, n_dims)`` of a translation-invariant system: ``system.particles``, or its atoms."""
    if system.particles is not None:
        return (int(system.particles[0]), int(system.particles[1]))
    if system.topology is not None:
        return (int(system.topology.n_atoms), 3)
    return None


def rotate_frames(x: np.ndarray, particles: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Each frame ``(N, n·k)`` rotated about its centre by an independent Haar-random proper rotation."""
    n, k = particles
    p = x.reshape(x.shape[0], n, k)
    centre = p.mean(1, keepdims=True)
    rotated = np.einsum("bij,bkj->bki", random_rotations(x.shape[0], k, rng), p - centre) + centre
    return rotated.reshape(x.shape[0], -1)


def _from_config(config: dict[str, Any], system: System) -> ContinuousFlow:
    particles = None if config["particles"] is None else tuple(config["particles"])
    internal = InternalCoordinates.from_topology(system.topology) if config.get("internal_coordinates") else None
    latent_dim = internal.dim if internal is not None else (
        config["dim"] if particles is None else (particles[0] - 1) * particles[1])
    velocity = VelocityField(latent_dim, config["hidden"], config["time_features"])
    return ContinuousFlow(config["dim"], velocity, particles, config["n_steps"], config["sigma_f_hidden"],
                          config["sigma_b"], internal)


def build_continuous_flow(
    system: System,
    hidden: Sequence[int] = (256, 256, 256),
    time_features: int = 8,
    n_steps: int = 20,
    remove_centre: bool | None = None,
    data: SampleSet | np.ndarray | None = None,
    augment_rotations: bool = False,
    sigma_f_hidden: Sequence[int] = (64, 64),
    sigma_b: float = 1e-3,
    seed: int = 0,
    internal_coordinates: bool = False,
) -> ContinuousFlow:
    """An untrained continuous flow for ``system`` (float64; velocity zero, i.e. ``q = N(loc, scale²)``).

    Parameters
    ----------
    system : System
        Target.
    hidden : sequence of int
        Hidden widths of the velocity MLP.
    time_features : int
        Frequencies of the time embedding.
    n_steps : int
        RK4 steps of each map.
    remove_centre : bool, optional
        Model the centre-of-mass-free coordinates (default: when the system has particles or a
        topology; its energy must then be translation invariant).
    data : SampleSet or array, optional
        Configurations ``(N, D)`` to fit the standardisation (zero-weight samples ignored).
    augment_rotations : bool
        Fit the standardisation on randomly rotated frames (use with rotation-augmented training).
    sigma_f_hidden : sequence of int
        Hidden widths of the σ_F network.
    sigma_b : float
        σ_B of flow perturbation (in the system's length units).
    seed : int
        Seed of the rotations.
    internal_coordinates : bool
        Model a molecule's bonds, angles and dihedrals (needs a topology and ``data``: the
        normalisation and each dihedral's branch cut, in its least populated region, are fitted
        on it) instead of Cartesian coordinates; rotation-invariant by construction, so no
        augmentation.

    Returns
    -------
    ContinuousFlow
        With a ``config`` attribute (for :func:`save_continuous_flow`).
    """
    if internal_coordinates:
        if system.topology is None or data is None or augment_rotations or remove_centre:
            raise ValueError("internal coordinates need a molecule (topology) and data, and exclude rotation "
                             "augmentation and centre removal")
        remove_centre = False
    layout = particle_layout(system)
    if remove_centre is None:
        remove_centre = layout is not None
    if remove_centre and layout is None:
        raise ValueError(f"system '{system.name}' has no particles or topology: there is no centre of mass to remove")
    if augment_rotations and layout is None:
        raise ValueError(f"rotation augmentation needs particles or a topology; '{system.name}' has neither")
    config = {
        "dim": system.dim, "particles": list(layout) if remove_centre else None, "hidden": [int(h) for h in hidden],
        "time_features": int(time_features), "n_steps": int(n_steps), "sigma_f_hidden": [int(h) for h in sigma_f_hidden],
        "sigma_b": float(sigma_b), "augment_rotations": bool(augment_rotations),
        "internal_coordinates": bool(internal_coordinates),
    }
    flow = _from_config(config, system)
    if data is not None:
        x = configurations(data, system.dim)
        if augment_rotations:
            x = rotate_frames(x, layout, np.random.default_rng(seed))
        if flow.internal is not None:
            flow.internal.fit_normalization(torch.as_tensor(x, dtype=torch.float64), all_linear=True)
        flow.fit_standardization(flow.to_internal(torch.as_tensor(x, dtype=torch.float64)))
    flow.config = config
    return flow


def configurations(data: SampleSet | np.ndarray, dim: int) -> np.ndarray:
    """The ``(N, dim)`` configurations of ``data`` (the nonzero-weight rows of a SampleSet)."""
    x = data.x[np.isfinite(data.log_weights)] if isinstance(data, SampleSet) else np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"data must have shape (N, {dim}), got {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("data contain non-finite coordinates")
    return x


def save_continuous_flow(
    flow: ContinuousFlow, path: str | Path, metadata: dict[str, Any] | None = None,
    parameter_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a flow from :func:`build_continuous_flow` (configuration + state dict) atomically.

    Network parameters are stored rounded to ``parameter_dtype`` (buffers exactly); the loaded flow
    uses the rounded parameters for sampling and densities alike, so its weights stay exact.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow (must carry ``config``).
    path : path
        Output file (parent folders are created).
    metadata : dict, optional
        JSON-like information, returned by :func:`load_continuous_flow` as ``flow.metadata``.
    parameter_dtype : torch.dtype
        Storage precision of the parameters.

    Returns
    -------
    Path
    """
    if not hasattr(flow, "config"):
        raise ValueError("only flows made by build_continuous_flow/load_continuous_flow can be saved")
    parameters = {name for name, _ in flow.named_parameters()}
    state = {}
    for name, value in flow.state_dict().items():
        value = value.detach().cpu()
        state[name] = value.to(parameter_dtype) if name in parameters and value.is_floating_point() else value
    return save_model_file(path, "continuous", flow.config, state, metadata)


def load_continuous_flow(path: str | Path, system: System) -> ContinuousFlow:
    """Rebuild a flow saved by :func:`save_continuous_flow` for ``system``.

    Raises
    ------
    ModelFileError
        If the file is missing, truncated or corrupted (its SHA-256 does not match), not a
        continuous-flow model (e.g. a coupling-flow model of ``boltzflow train``; a pickle that
        would run code is refused unread), of another format version, or made for a system of
        another dimension or particle layout.

    Warns
    -----
    boltzflow.integrity.UnverifiedFileWarning
        For a model file written before checksums were stored.
    """
    config, state, metadata = load_model_file(path, "continuous")
    layout = particle_layout(system)
    if config.get("dim") != system.dim or (config.get("particles") is not None
                                           and tuple(config["particles"]) != layout):
        raise ModelFileError(
            f"model {path} was trained for a system of dimension {config.get('dim')} (particles "
            f"{config.get('particles')}), not for '{system.name}' (dimension {system.dim}, particles {layout})"
        )
    state = {k: v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
             for k, v in state.items()}
    flow = load_state(lambda: _from_config(config, system), state, path, "continuous")
    flow.config = config
    flow.metadata = metadata
    flow.eval()
    return flow


__all__ = [
    "ContinuousFlow", "SigmaF", "VelocityField", "build_continuous_flow", "configurations", "load_continuous_flow",
    "particle_layout", "rotate_frames", "save_continuous_flow",
]
