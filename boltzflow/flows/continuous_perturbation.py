"""Flow perturbation (Peng & Gao 2024): importance weights of a continuous flow without its Jacobian.

A sample is the pair ``(x_T, ε)`` of a latent vector and a noise vector, both standard normal
(``d`` coordinates each). Its configuration ``x0`` and the entropy term ``ΔS`` come from one of two
estimators; the log-weight toward ``exp(−u)`` is (:func:`log_omega`)

    log ω = −u(x0) + ΔS − log p_Z(x_T).

* ``"perturbed"`` (the preprint's estimator): ``x0 = B(x_T) + σ_B·ε``,
  ``ε̃ = (x_T − F(x0)) / σ_F(x0)``, ``ΔS = −½(‖ε̃‖² − ‖ε‖²) − d·log σ_F + d·log σ_B``. Then
  ``ω = e^{−u(x0)} N(x_T; F(x0), σ_F²) / (p_Z(x_T) N(x0; B(x_T), σ_B²))``, and integrating over
  ``x_T`` gives ``E[ω f(x0)] = ∫ e^{−u} f`` exactly, for *any* maps F, B and any σ_F: the weights
  are unbiased (and ``E[ω] = Z``) whatever the RK4 error or the training quality. Their variance
  is another matter: it is finite only while σ_F is not much wider than the forward residual
  ``‖J_F ε‖σ_B`` (in 1D: less than √2 times it), which is what training σ_F achieves. Costs two
  ODE passes.
* ``"stretch"`` (the simplified estimator): ``x0 = B(x_T)``; with ``x0± = x0 ± δ·ε`` and
  ``δx_T = F(x0+) − F(x0−)``, ``α² = ‖δx_T‖² / ‖δx0‖²`` and ``ΔS = −(d/2) log α²``. For isotropic
  ``ε``, ``E[α^{−d}] = 1/|det J_F|`` exactly (:func:`stretch_delta_s`), so the weights are
  unbiased up to the central-difference error and the RK4 mismatch between ``F`` and ``B⁻¹``.
  Costs three ODE passes.
* ``"hutchinson"`` — *not* flow perturbation, the biased baseline it replaces, in the same extended
  space: ``x0 = B(x_T)`` and ``ΔS = ε^T (∫ ∂v/∂x dt) ε``, Hutchinson's estimate of ``log|det ∂x0/∂x_T|``
  with ``ε`` as one Gaussian probe held along the path. ``E_ε[ΔS]`` is the exact log-determinant, so
  ``E_ε[ω]`` is not ``e^{−u}/q`` (Jensen): MCMC or SMC on ``(x_T, ε)`` with these weights samples a
  distorted distribution. One ODE pass with a vector-Jacobian product per RK4 stage.

All live on the flow's internal coordinates (``d`` = the centre-of-mass-free dimension for
particles), in float64 (the central differences need it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .continuous import ContinuousFlow
from .ode import HutchinsonDivergence

ESTIMATORS = ("perturbed", "stretch", "hutchinson")


def stretch_delta_s(
    forward: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, eps: torch.Tensor, fd_step: float = 1e-3
) -> torch.Tensor:
    """``ΔS = −(d/2) log α²`` with ``α² = ‖F(x0 + δε) − F(x0 − δε)‖² / ‖2δε‖²`` (central difference).

    Parameters
    ----------
    forward : callable
        The map ``F``, ``(B, d) -> (B, d)``.
    x0 : torch.Tensor
        ``(B, d)`` points.
    eps : torch.Tensor
        ``(B, d)`` isotropic directions (standard normal).
    fd_step : float
        ``δ``, in the units of ``x0``.

    Returns
    -------
    torch.Tensor
        ``(B,)``; ``exp`` of it averages to ``1/|det J_F(x0)|`` over ``ε``.
    """
    if fd_step <= 0:
        raise ValueError(f"fd_step must be positive, got {fd_step}")
    delta_z = forward(x0 + fd_step * eps) - forward(x0 - fd_step * eps)
    alpha_sq = (delta_z**2).sum(-1) / (4.0 * fd_step**2 * (eps**2).sum(-1))
    return -0.5 * x0.shape[1] * torch.log(alpha_sq)


def perturbed_delta_s(
    z: torch.Tensor, eps: torch.Tensor, forward_z: torch.Tensor, sigma_f: torch.Tensor, sigma_b: float
) -> torch.Tensor:
    """``ΔS = −½(‖ε̃‖² − ‖ε‖²) − d·log σ_F + d·log σ_B`` with ``ε̃ = (x_T − F(x0)) / σ_F``.

    Parameters
    ----------
    z : torch.Tensor
        ``(B, d)`` latent vectors ``x_T``.
    eps : torch.Tensor
        ``(B, d)`` backward noise ``ε``.
    forward_z : torch.Tensor
        ``(B, d)`` ``F(x0)``.
    sigma_f : torch.Tensor
        ``(B,)`` ``σ_F(x0)``.
    sigma_b : float
        ``σ_B``.
    """
    d = z.shape[1]
    eps_tilde_sq = ((z - forward_z) ** 2).sum(-1) / sigma_f**2
    return -0.5 * (eps_tilde_sq - (eps**2).sum(-1)) - d * torch.log(sigma_f) + d * math.log(sigma_b)


def flow_perturbation(
    flow: ContinuousFlow,
    z: torch.Tensor,
    eps: torch.Tensor,
    estimator: str = "perturbed",
    sigma_b: float | None = None,
    fd_step: float = 1e-3,
    n_steps: int | None = None,
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Configuration (internal coordinates) and ``ΔS`` of extended samples ``(x_T, ε)``.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow (``decode`` is B, ``encode`` is F).
    z, eps : torch.Tensor
        ``(B, d)`` latent vectors and noise vectors.
    estimator : {"perturbed", "stretch", "hutchinson"}
        See the module docstring (``"hutchinson"``: the biased baseline, ``ε`` its probe).
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the flow's, which its σ_F was trained for).
    fd_step : float
        ``δ`` of ``"stretch"``.
    n_steps : int, optional
        RK4 steps (default: the flow's).
    differentiable : bool
        Keep the autograd graph from ``z`` and ``eps`` (gradient-based moves on the extended space;
        second order through the velocity for ``"hutchinson"``); default: no graph.

    Returns
    -------
    x0 : torch.Tensor
        ``(B, d)`` internal coordinates (:meth:`ContinuousFlow.to_configuration` gives ``x``).
    delta_s : torch.Tensor
        ``(B,)``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow-perturbation estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    if z.shape != eps.shape or z.ndim != 2 or z.shape[1] != flow.latent_dim:
        raise ValueError(f"x_T and eps must both have shape (batch, {flow.latent_dim}), got {tuple(z.shape)}, "
                         f"{tuple(eps.shape)}")
    with torch.set_grad_enabled(differentiable):
        if estimator == "hutchinson":
            return flow.decode_with_log_det(z, HutchinsonDivergence(eps.unsqueeze(0), differentiable), n_steps)
        x0 = flow.decode(z, n_steps)
        if estimator == "stretch":
            return x0, stretch_delta_s(lambda y: flow.encode(y, n_steps), x0, eps, fd_step)
        sigma_b = flow.sigma_b if sigma_b is None else float(sigma_b)
        if not sigma_b > 0:
            raise ValueError(f"sigma_b must be positive, got {sigma_b}")
        x0 = x0 + sigma_b * eps
        return x0, perturbed_delta_s(z, eps, flow.encode(x0, n_steps), flow.sigma_forward(x0), sigma_b)


def log_omega(energies: np.ndarray, delta_s: np.ndarray, log_pz: np.ndarray) -> np.ndarray:
    """``log ω = −u + ΔS − log p_Z(x_T)``; ``−inf`` (zero weight) wherever a term is not finite."""
    valid = np.isfinite(energies) & np.isfinite(delta_s) & np.isfinite(log_pz)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(valid, -energies + delta_s - log_pz, -np.inf)


__all__ = ["ESTIMATORS", "flow_perturbation", "log_omega", "perturbed_delta_s", "stretch_delta_s"]
