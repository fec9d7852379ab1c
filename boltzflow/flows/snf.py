"""Stochastic normalizing flows (Wu, Köhler, Noé 2020): flow layers mixed with stochastic blocks.

An SNF draws ``z ~ p_Z`` from a base distribution and pushes it through a sequence of layers

* deterministic layers: any :class:`~boltzflow.flows.base.Bijection` (its ``forward``), with
  ``ΔS = log|det J|``;
* :class:`LangevinBlock`: overdamped Langevin steps on an intermediate energy ``u_λ``,
  ``y = x − ε∇u_λ(x) + √(2ε)·η``, with ``ΔS = ½(‖η‖² − ‖η̃‖²)``,
  ``η̃ = (x − y + ε∇u_λ(y)) / √(2ε)`` — the log ratio of the backward to the forward Gaussian
  transition densities (both have covariance ``2ε·I``, so the normalisations cancel);
* :class:`MetropolisBlock`: Gaussian random-walk Metropolis steps satisfying detailed balance for
  ``u_λ``, with ``ΔS = u_λ(y) − u_λ(x)`` for an accepted move and ``0`` for a rejected one.

Every path ``z → x`` carries the exact importance weight with respect to ``exp(−u_X)``,

    log w = u_Z(z) − u_X(x) + Σ_t ΔS_t,      u_Z(z) = −log p_Z(z),

where ``u_X`` is the target's reduced energy (kT). Because ``p_Z`` is normalised, ``E[w] = Z``:
the weights estimate the partition function exactly as a normalised flow's ``−u − log q`` do.
We write ``log q_path = log p_Z(z) − Σ ΔS`` so that ``log w = −u_X(x) − log q_path``.

Intermediate energies (our choice): ``u_λ(x) = (1 − λ)·u_ref(x) + λ·u_target(x)`` with a simple
reference energy ``u_ref`` on configuration space, by default the standard normal
``u_ref(x) = ½‖x‖²`` (the base distribution's energy up to a constant). The paper's ``u_prior``
(the base density pushed through the preceding flow layers) would need the inverse of every earlier
layer at each step; a fixed reference keeps blocks independent. The weights are exact for *any*
choice of ``u_λ`` and step sizes: only the final ``u_X`` must be the true target energy, and
:func:`boltzflow.samplers.snf.sample_snf` re-evaluates it with ``system.energy``.

Failures follow :class:`~boltzflow.energy.base.Energy`: a non-finite intermediate energy is
``+inf`` with a zero gradient (the Langevin drift is then zero there, a Metropolis move into it is
rejected, a move out of it has ``ΔS = −inf``), a non-finite final energy gives ``log w = −inf``.

Ready-made SNFs for toy systems come from :func:`build_snf` (spline or affine couplings on ``R^D``
interleaved with Langevin or Metropolis blocks on a λ schedule ``1/K, 2/K, …, 1``); such an SNF is
saved and loaded with :func:`save_snf` / :func:`load_snf` (versioned file: the builder's
configuration plus the exact float64 state dict; the target energy is the system's, given at load).

Training (:func:`train_snf`) minimises the reverse KL ``E[−log w]`` with reparameterised Langevin
noise, with atomic checkpoints that a rerun resumes. The Metropolis accept/reject decision is not differentiated (gradients flow through the
chosen state and ``ΔS``). The Langevin drift is differentiated through ``∇u_λ`` by double
backpropagation: exact for the reference term and for twice-differentiable torch targets; an
:class:`~boltzflow.energy.base.Energy` backend's autograd bridge returns forces as constants, so
for it the Hessian term is left out of the training gradient (weights stay exact).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import InterruptGuard
from ..systems.system import System
from .base import Bijection
from .coupling import AffineCoupling, SplineCoupling, alternating_masks
from .distributions import BaseDistribution, DefensiveLatent
from .model_file import ModelFileError, load_model_file, load_state, save_model_file
from .models import KINDS
from .training import _load_checkpoint, _restore_checkpoint, _save_checkpoint, cut_energy, relative_ess

BLOCKS = ("metropolis", "langevin")

TorchEnergy = Callable[[torch.Tensor], torch.Tensor]
"""A reduced energy ``x (B, D) -> u (B,)`` differentiable in torch (an ``Energy`` qualifies)."""


def standard_normal_energy(x: torch.Tensor) -> torch.Tensor:
    """The default reference energy ``u_ref(x) = ½‖x‖²`` (kT), shape ``(B,)``."""
    return 0.5 * (x**2).sum(dim=1)


class InterpolatedEnergy:
    """``u_λ(x) = (1 − λ)·u_ref(x) + λ·u_target(x)`` with the failure convention of ``Energy``.

    Parameters
    ----------
    target : callable
        Target reduced energy, torch ``(B, D) -> (B,)`` (e.g. ``system.energy``).
    reference : callable, optional
        Reference reduced energy; default :func:`standard_normal_energy`.
    """

    def __init__(self, target: TorchEnergy, reference: TorchEnergy | None = None) -> None:
        self.target = target
        self.reference = standard_normal_energy if reference is None else reference

    def __call__(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        """``u_λ(x)``, shape ``(B,)``; non-finite values become ``+inf``."""
        u = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        # λ = 0 or 1 skip the other term, so an infinite energy never meets a zero factor.
        if lam < 1.0:
            u = u + (1.0 - lam) * self.reference(x).to(x)
        if lam > 0.0:
            u = u + lam * self.target(x).to(x)
        return torch.where(torch.isnan(u), torch.full_like(u, math.inf), u)

    def energy_and_gradient(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``u_λ(x)`` and ``∇u_λ(x)``; failed rows (non-finite energy or gradient) get a zero gradient.

        Differentiable (double backpropagation) when grad mode is on and ``x`` requires grad;
        otherwise both come back detached.
        """
        if torch.is_grad_enabled() and x.requires_grad:
            u = self(x, lam)
            (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        else:
            with torch.enable_grad():
                xd = x.detach().requires_grad_(True)
                u = self(xd, lam)
                (g,) = torch.autograd.grad(u.sum(), xd)
            u, g = u.detach(), g.detach()
        ok = torch.isfinite(u) & torch.isfinite(g).all(dim=1)
        g = torch.where(ok[:, None], g, torch.zeros_like(g))
        return u, g


class StochasticBlock(nn.Module, ABC):
    """A stochastic SNF layer acting on ``u_λ`` for a fixed ``λ``.

    Parameters
    ----------
    lam : float
        Interpolation parameter in ``[0, 1]``.
    n_steps : int
        Number of steps per application.
    """

    def __init__(self, lam: float, n_steps: int = 1) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.lam = float(lam)
        self.n_steps = int(n_steps)

    @abstractmethod
    def forward(  # type: ignore[override]
        self, x: torch.Tensor, energy: InterpolatedEnergy, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the block; returns ``(y (B, D), ΔS (B,))``."""


class LangevinBlock(StochasticBlock):
    """Overdamped (unadjusted) Langevin steps on ``u_λ`` with the exact path-weight increment.

    ``y = x − ε∇u_λ(x) + √(2ε)·η``, ``η ~ N(0, I)``;
    ``ΔS = ½(‖η‖² − ‖η̃‖²)`` with ``η̃ = (x − y + ε∇u_λ(y)) / √(2ε)``.

    Parameters
    ----------
    lam : float
        Interpolation parameter in ``[0, 1]``.
    step_size : float
        ``ε`` (reduced units: length² per kT).
    n_steps : int
        Steps per application (``ΔS`` summed).
    """

    def __init__(self, lam: float, step_size: float = 0.01, n_steps: int = 1) -> None:
        super().__init__(lam, n_steps)
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size = float(step_size)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, energy: InterpolatedEnergy, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``n_steps`` Langevin steps; returns ``(y, ΔS)``."""
        eps = self.step_size
        scale = math.sqrt(2.0 * eps)
        delta_s = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        _, g_x = energy.energy_and_gradient(x, self.lam)
        for _ in range(self.n_steps):
            eta = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            y = x - eps * g_x + scale * eta
            _, g_y = energy.energy_and_gradient(y, self.lam)
            eta_back = (x - y + eps * g_y) / scale
            delta_s = delta_s + 0.5 * ((eta**2).sum(dim=1) - (eta_back**2).sum(dim=1))
            x, g_x = y, g_y
        return x, delta_s


class MetropolisBlock(StochasticBlock):
    """Gaussian random-walk Metropolis steps with detailed balance for ``u_λ``.

    A proposal ``y' = x + σ·ξ`` is accepted with probability ``min(1, exp(u_λ(x) − u_λ(y')))``; a
    proposal of non-finite energy is always rejected. ``ΔS = u_λ(y) − u_λ(x)`` when accepted, ``0``
    when rejected (summed over steps).

    Parameters
    ----------
    lam : float
        Interpolation parameter in ``[0, 1]``.
    proposal_scale : float
        ``σ``, the standard deviation of the random-walk proposal.
    n_steps : int
        Steps per application.

    Attributes
    ----------
    last_acceptance : float
        Mean acceptance rate of the last application (a diagnostic).
    """

    def __init__(self, lam: float, proposal_scale: float = 0.3, n_steps: int = 1) -> None:
        super().__init__(lam, n_steps)
        if not proposal_scale > 0:
            raise ValueError(f"proposal_scale must be positive, got {proposal_scale}")
        self.proposal_scale = float(proposal_scale)
        self.last_acceptance = math.nan

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, energy: InterpolatedEnergy, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``n_steps`` Metropolis steps; returns ``(y, ΔS)``."""
        delta_s = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        u_x = energy(x, self.lam)
        n_accepted = 0
        for _ in range(self.n_steps):
            xi = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            y = x + self.proposal_scale * xi
            u_y = energy(y, self.lam)
            log_u = torch.log(torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator))
            finite_y = torch.isfinite(u_y)
            # u_x = +inf, u_y finite: log α = +inf (accepted, ΔS = −inf: the reverse move is impossible).
            log_alpha = torch.where(finite_y, u_x.detach() - u_y.detach(), torch.full_like(u_y, -math.inf))
            accept = finite_y & (log_u < log_alpha)
            step_s = torch.where(accept, u_y - torch.where(accept, u_x, u_y), torch.zeros_like(u_y))
            delta_s = delta_s + step_s
            x = torch.where(accept[:, None], y, x)
            u_x = torch.where(accept, u_y, u_x)
            n_accepted += int(accept.sum())
        self.last_acceptance = n_accepted / (self.n_steps * max(x.shape[0], 1))
        return x, delta_s


class SNFOutput(NamedTuple):
    """One batch of SNF paths.

    Attributes
    ----------
    x : torch.Tensor
        ``(B, D)`` end points.
    z : torch.Tensor
        ``(B, D)`` base samples.
    log_prob_base : torch.Tensor
        ``(B,)`` ``log p_Z(z) = −u_Z(z)``.
    delta_s : torch.Tensor
        ``(B,)`` ``Σ_t ΔS_t`` over all layers.
    u_target : torch.Tensor or None
        ``(B,)`` ``u_X(x)`` from the SNF's target (``None`` when not evaluated).
    """

    x: torch.Tensor
    z: torch.Tensor
    log_prob_base: torch.Tensor
    delta_s: torch.Tensor
    u_target: torch.Tensor | None

    @property
    def log_q_path(self) -> torch.Tensor:
        """``log p_Z(z) − Σ ΔS``: the log-weight is ``−u_X(x) − log_q_path``."""
        return self.log_prob_base - self.delta_s

    @property
    def log_weights(self) -> torch.Tensor:
        """``log w = u_Z(z) − u_X(x) + Σ ΔS``; ``−inf`` where any term is not finite."""
        if self.u_target is None:
            raise ValueError("the target energy was not evaluated (evaluate_target=False)")
        log_w = -self.u_target - self.log_q_path
        return torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))


class SNF(nn.Module):
    """A stochastic normalizing flow: base distribution, then flow layers and stochastic blocks.

    Parameters
    ----------
    base : BaseDistribution
        Latent distribution ``p_Z``.
    layers : sequence of Bijection or StochasticBlock
        Applied in order from the latent side; a ``Bijection`` uses its ``forward`` (generative)
        direction.
    target : callable
        Target reduced energy ``u_X``, torch ``(B, D) -> (B,)``, e.g. ``system.energy``.
    reference : callable, optional
        Reference energy of the interpolation ``u_λ = (1 − λ) u_ref + λ u_target``; default
        ``½‖x‖²``.

    Notes
    -----
    The module is float64 after ``.double()`` (recommended; energies are float64).
    """

    def __init__(
        self,
        base: BaseDistribution,
        layers: Sequence[Bijection | StochasticBlock],
        target: TorchEnergy,
        reference: TorchEnergy | None = None,
    ) -> None:
        super().__init__()
        for layer in layers:
            if not isinstance(layer, (Bijection, StochasticBlock)):
                raise TypeError(f"SNF layers must be Bijections or StochasticBlocks, got {type(layer).__name__}")
        self.base = base
        self.layers = nn.ModuleList(layers)
        self.energy = InterpolatedEnergy(target, reference)

    @property
    def dim(self) -> int:
        """Number of degrees of freedom."""
        return self.base.dim

    def forward(  # type: ignore[override]
        self, n: int, generator: torch.Generator | None = None, evaluate_target: bool = True,
        latent: DefensiveLatent | None = None,
    ) -> SNFOutput:
        """Draw ``n`` paths ``z → x``; differentiable in the parameters (reparameterised noise).

        Parameters
        ----------
        n : int
            Number of paths.
        generator : torch.Generator, optional
            Random source (base samples and all block noise).
        evaluate_target : bool
            Also evaluate ``u_X(x)`` with the SNF's target.
        latent : DefensiveLatent, optional
            Draw the base's normal features from this defensive mixture instead (circular features
            stay uniform); ``log_prob_base`` is then the mixture's density, so the path weights stay
            exact. Default: the base itself.

        Returns
        -------
        SNFOutput
        """
        z = self.base.sample(n, generator)
        log_prob_base = self.base.log_prob(z)
        if latent is not None and latent.fraction > 0:
            linear = ~self.base.circular
            z = latent.widen(z, generator, linear)
            log_prob_base = (self.base.log_prob(z) - DefensiveLatent().log_prob(z[:, linear])
                             + latent.log_prob(z[:, linear]))
        x = z
        delta_s = torch.zeros(n, dtype=z.dtype, device=z.device)
        for layer in self.layers:
            if isinstance(layer, StochasticBlock):
                x, ds = layer(x, self.energy, generator)
            else:
                x, ds = layer.forward(x)
            delta_s = delta_s + ds
        u = None
        if evaluate_target:
            u = self.energy.target(x).to(x)
            u = torch.where(torch.isnan(u), torch.full_like(u, math.inf), u)
        return SNFOutput(x, z, log_prob_base, delta_s, u)

    def sample(
        self, n: int, generator: torch.Generator | None = None, latent: DefensiveLatent | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` end points and their ``log q_path = log p_Z(z) − Σ ΔS`` (weights: ``−u − log q_path``).

        ``latent``: an optional defensive mixture for the base's normal features (see :meth:`forward`).
        """
        out = self.forward(n, generator, evaluate_target=False, latent=latent)
        return out.x, out.log_q_path

    def acceptance_rates(self) -> list[float]:
        """Last acceptance rate of each :class:`MetropolisBlock`, in layer order."""
        return [layer.last_acceptance for layer in self.layers if isinstance(layer, MetropolisBlock)]


def snf_loss(
    snf: SNF, n: int, generator: torch.Generator | None = None, u_high: float = 1e3, u_max: float = 1e9
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reverse KL ``mean[−log w]`` (up to ``log Z``) over ``n`` reparameterised SNF paths.

    Parameters
    ----------
    snf : SNF
        The SNF being trained.
    n : int
        Batch size.
    generator : torch.Generator, optional
        Random source.
    u_high, u_max : float
        Loss-only cut of the final target energy (:func:`~boltzflow.flows.training.cut_energy`).

    Returns
    -------
    loss : torch.Tensor
        Scalar; a constant zero (no graph) when every path failed.
    log_weights : torch.Tensor
        ``(n,)`` detached path log-weights (uncut energies, ``−inf`` for failures).
    n_dropped : int
        Paths with non-finite weight left out of the loss.
    """
    out = snf(n, generator)
    log_w = out.log_weights.detach()
    ok = torch.isfinite(log_w)
    n_ok = int(ok.sum())
    if n_ok == 0:
        return out.delta_s.new_zeros(()), log_w, n
    loss = (cut_energy(out.u_target[ok], u_high, u_max) + out.log_q_path[ok]).mean()
    return loss, log_w, n - n_ok


@dataclass
class SNFTrainingHistory:
    """Per-iteration reverse-KL loss, relative ESS of the batch, and dropped (failed) paths."""

    loss: list[float] = field(default_factory=list)
    relative_ess: list[float] = field(default_factory=list)
    n_dropped: list[int] = field(default_factory=list)


def train_snf(
    snf: SNF,
    n_iterations: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    clip_norm: float = 10.0,
    u_high: float = 1e3,
    u_max: float = 1e9,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SNFTrainingHistory:
    """Train an SNF end to end by reverse KL ``E[−log w]`` with Adam.

    Parameters
    ----------
    snf : SNF
        Trained in place (its flow layers' parameters; stochastic blocks have none).
    n_iterations : int
        Optimiser steps.
    batch_size : int
        Paths per step.
    lr : float
        Adam learning rate.
    seed : int
        Seed of the path noise.
    clip_norm : float
        Gradient-norm clipping.
    u_high, u_max : float
        Loss-only energy cut (:func:`~boltzflow.flows.training.cut_energy`).
    progress : bool
        Show a progress bar with the loss and the batch's relative ESS.
    checkpoint : path, optional
        Training checkpoint (SNF parameters, optimiser, iteration, random state, history), written
        atomically every ``checkpoint_seconds`` and at the end; an existing checkpoint of the same
        run is resumed, and the resumed run continues exactly as an uninterrupted one would. The
        caller deletes it once the model is saved.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SNFTrainingHistory
        The whole run's history (a resumed run includes the iterations done before).

    Raises
    ------
    ValueError
        If the SNF has no trainable parameters or the settings are invalid.
    boltzflow.flows.training.TrainingCheckpointError
        If the checkpoint is corrupted or belongs to a different run.
    """
    params = [p for p in snf.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the SNF has no trainable parameters (add flow layers)")
    if n_iterations < 0 or batch_size < 1:
        raise ValueError("n_iterations must be >= 0 and batch_size >= 1")
    optimizer = torch.optim.Adam(params, lr=lr)
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    history = SNFTrainingHistory()
    run = {
        "model": "snf", "config": getattr(snf, "config", None), "dim": snf.dim,
        "parameters": [[name, list(value.shape)] for name, value in snf.state_dict().items()],
        "n_iterations": n_iterations,
        "batch_size": batch_size, "lr": lr, "seed": seed, "clip_norm": clip_norm, "u_high": u_high, "u_max": u_max,
    }
    path = None if checkpoint is None else Path(checkpoint)
    start = 0
    saved = None if path is None else _load_checkpoint(path, run, str(device))
    if saved is not None:
        start = _restore_checkpoint(saved, snf, optimizer, None, generator)
        history = SNFTrainingHistory(**saved["history"])
    last_save = time.monotonic()
    bar = tqdm(total=n_iterations, initial=start, desc="train snf", disable=not progress, unit="it")
    snf.train()
    guard = InterruptGuard()  # a Ctrl-C saves the checkpoint at the end of the current step, then stops
    if path is not None:
        guard.arm()
    for iteration in range(start, n_iterations):
        loss, log_w, n_dropped = snf_loss(snf, batch_size, generator, u_high, u_max)
        optimizer.zero_grad()
        if loss.requires_grad and torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
        history.loss.append(float(loss.detach()))
        history.relative_ess.append(relative_ess(log_w))
        history.n_dropped.append(n_dropped)
        bar.update(1)
        if iteration % 10 == 0 or iteration == n_iterations - 1:
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}", ess=f"{history.relative_ess[-1]:.2f}")
        done = iteration + 1
        if path is not None and (done == n_iterations or guard.requested
                                 or time.monotonic() - last_save >= checkpoint_seconds):
            _save_checkpoint(path, run, done, snf, optimizer, None, generator, history, None)
            last_save = time.monotonic()
            guard.honour()
    guard.disarm()
    bar.close()
    snf.eval()
    return history


def _stages(n_layers: int, n_blocks: int) -> list[int]:
    """Coupling layers before each stochastic block (the last group follows the last block)."""
    if n_blocks == 0:
        return [n_layers]
    return [len(part) for part in np.array_split(np.arange(n_layers), n_blocks)]


def build_snf(
    system: System,
    kind: str = "spline",
    n_layers: int = 4,
    n_blocks: int = 2,
    block: str = "metropolis",
    n_steps: int = 10,
    step_size: float = 0.01,
    proposal_scale: float = 0.3,
    hidden: Sequence[int] = (64, 64),
    num_bins: int = 8,
    tail_bound: float = 5.0,
) -> SNF:
    """An SNF for a toy system on ``R^D``: coupling layers interleaved with stochastic blocks.

    The ``n_layers`` couplings (alternating masks, identity at start) are split into ``n_blocks``
    groups as evenly as possible; after group ``k`` comes a stochastic block on ``u_λ`` with
    ``λ_k = k / n_blocks`` (``k = 1 … n_blocks``), so the last block samples the target itself.
    With ``n_blocks = 0`` it is a plain normalizing flow with the same layers (trained and sampled
    the same way: the deterministic baseline of an SNF). Base ``N(0, I)``, reference energy
    ``½‖x‖²``, float64.

    Parameters
    ----------
    system : System
        Target (toy system without topology or particle symmetry); its energy is ``u_X``.
    kind : {"spline", "affine"}
        Coupling type.
    n_layers : int
        Number of coupling layers.
    n_blocks : int
        Number of stochastic blocks (``0``: none).
    block : {"metropolis", "langevin"}
        Block type: random-walk Metropolis (``proposal_scale``) or overdamped Langevin (``step_size``).
    n_steps : int
        Steps per block.
    step_size : float
        Langevin step ``ε``.
    proposal_scale : float
        Metropolis proposal standard deviation.
    hidden : sequence of int
        Hidden widths of each conditioner.
    num_bins : int
        Spline bins.
    tail_bound : float
        Half-width of the spline interval.

    Returns
    -------
    SNF
        With a ``config`` attribute (the arguments, for :func:`save_snf`).

    Raises
    ------
    ValueError
        For a molecular or particle system, fewer than 2 dimensions, or invalid settings.
    """
    if system.topology is not None or system.particles is not None:
        raise ValueError(
            f"build_snf makes SNFs for toy systems on R^D; '{system.name}' is a molecular or particle system"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown coupling kind '{kind}'; choose one of {', '.join(KINDS)}")
    if block not in BLOCKS:
        raise ValueError(f"unknown SNF block '{block}'; choose one of {', '.join(BLOCKS)}")
    if n_layers < 1 or n_blocks < 0:
        raise ValueError(f"need n_layers >= 1 and n_blocks >= 0, got {n_layers} and {n_blocks}")
    config = {
        "dim": system.dim, "kind": kind, "n_layers": int(n_layers), "n_blocks": int(n_blocks), "block": block,
        "n_steps": int(n_steps), "step_size": float(step_size), "proposal_scale": float(proposal_scale),
        "hidden": [int(h) for h in hidden], "num_bins": int(num_bins), "tail_bound": float(tail_bound),
    }
    masks = iter(alternating_masks(system.dim, n_layers))
    layers: list[Bijection | StochasticBlock] = []
    for k, size in enumerate(_stages(n_layers, n_blocks), start=1):
        for _ in range(size):
            mask = next(masks)
            if kind == "affine":
                layers.append(AffineCoupling(mask, hidden=hidden))
            else:
                layers.append(SplineCoupling(mask, num_bins=num_bins, hidden=hidden, tail_bound=tail_bound))
        if k <= n_blocks:
            lam = k / n_blocks
            if block == "metropolis":
                layers.append(MetropolisBlock(lam, proposal_scale, n_steps))
            else:
                layers.append(LangevinBlock(lam, step_size, n_steps))
    snf = SNF(BaseDistribution(system.dim), layers, system.energy).double()
    snf.config = config
    return snf


def save_snf(snf: SNF, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write an SNF made by :func:`build_snf` (configuration + exact state dict) atomically.

    Parameters
    ----------
    snf : SNF
        From :func:`build_snf` or :func:`load_snf`.
    path : path
        Output file (conventionally ``snf.pt``); parent folders are created.
    metadata : dict, optional
        JSON-like information (system, training settings), returned by :func:`load_snf` as
        ``snf.metadata``.

    Returns
    -------
    Path
    """
    if not hasattr(snf, "config"):
        raise ValueError("only SNFs made by build_snf/load_snf can be saved (they carry a config)")
    state = {k: v.detach().cpu() for k, v in snf.state_dict().items()}
    return save_model_file(path, "snf", snf.config, state, metadata)


def load_snf(path: str | Path, system: System) -> SNF:
    """Rebuild an SNF saved by :func:`save_snf`, with ``system.energy`` as its target.

    Parameters
    ----------
    path : path
        Model file.
    system : System
        The system it was trained for.

    Returns
    -------
    SNF
        With ``config`` and ``metadata`` attributes; in eval mode.

    Raises
    ------
    ModelFileError
        If the file is missing, corrupted (its SHA-256 does not match) or truncated, not an SNF
        file (a flow model is named as such; a pickle that would run code is refused unread), of
        another format version, or made for a system of another dimension.

    Warns
    -----
    boltzflow.integrity.UnverifiedFileWarning
        For an SNF file written before checksums were stored.
    """
    config, state, metadata = load_model_file(path, "snf")
    config = dict(config)
    dim = config.pop("dim", None)
    if dim != system.dim:
        raise ModelFileError(f"SNF {path} was trained for dimension {dim}, not for '{system.name}' (dimension {system.dim})")
    snf = load_state(lambda: build_snf(system, **config), state, path, "snf")
    snf.metadata = metadata
    snf.eval()
    return snf


__all__ = [
    "BLOCKS", "SNF", "InterpolatedEnergy", "LangevinBlock", "MetropolisBlock", "SNFOutput", "SNFTrainingHistory",
    "StochasticBlock", "build_snf", "load_snf", "save_snf", "snf_loss", "standard_normal_energy", "train_snf",
]
