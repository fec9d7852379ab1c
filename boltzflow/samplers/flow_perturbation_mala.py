"""Gradient-based (Metropolis-adjusted Langevin) moves on the extended space ``(x_T, ε)`` of flow perturbation.

The SMC targets ``π_β(y) ∝ N(x_T) N(ε) ω(x_T, ε)^β`` with ``y = (x_T, ε)`` (``d + m`` coordinates,
``m`` = :attr:`~boltzflow.flows.perturbation_target.ExtendedTarget.noise_dim`: ``N·d`` for ``"multistep"``),

    log π_β(y) = −½‖x_T‖² − ½‖ε‖² + β log ω(y) + const,

and ``log ω = −u(x0) + ΔS + log J_chart − log p_Z(x_T)`` is differentiable in ``y``: autograd runs
through both RK4 passes (B and F; for ``"multistep"`` the ``N`` noisy backward steps and the
``N`` forward steps from each), σ_F and the chart, and the energy's gradient ``∂u/∂x`` (forces)
is chained in at the configuration. A move proposes

    y' = y + m(y) + √h ξ,   m(y) = (h/2) ∇log π_β(y) / max(1, ‖(h/2) ∇log π_β(y)‖ / √(2 d h)),

the Langevin drift *tamed* so that it is never longer than the noise's typical length (a steric
clash's gradient of 10⁶ kT/nm would otherwise throw the proposal anywhere), and accepts with the
Metropolis–Hastings ratio of ``π_β`` and the Gaussian proposal densities both ways. The taming
changes the proposal, not the target: the move keeps ``π_β`` invariant for any drift.

``∇ log ω`` is stored with each state (independent of ``β``), so a move costs one weight-and-gradient
evaluation per particle: the two ODE passes of ``"multistep"`` or ``"perturbed"`` plus their backward passes (about
three times a refresh move), and for ``"hutchinson"`` a second-order backward pass through the
velocity network.
"""

from __future__ import annotations

import numpy as np
import torch

from ..flows.continuous_perturbation import flow_perturbation, log_omega
from ..flows.perturbation_target import ExtendedTarget

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance in high dimension (Roberts & Rosenthal 1998)


def log_omega_with_gradient(
    target: ExtendedTarget, z: np.ndarray, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Configurations, energies, ``log ω`` and ``∇_(x_T, ε) log ω`` of states ``(z, eps)``.

    Parameters
    ----------
    target : ExtendedTarget
        Flow, estimator and system.
    z, eps : np.ndarray
        ``(B, d)`` latent and ``(B, m)`` noise vectors.

    Returns
    -------
    x : np.ndarray
        ``(B, D)`` configurations.
    u : np.ndarray
        ``(B,)`` reduced energies (``+inf`` where the energy failed).
    log_w : np.ndarray
        ``(B,)`` ``log ω`` (``−inf``: zero weight).
    gradient : np.ndarray
        ``(B, d + m)`` ``∂ log ω / ∂(x_T, ε)``; NaN rows where it or ``log ω`` is not finite (such
        states are never moved to or from by :func:`mala_move`, which keeps ``π_β`` invariant).
    """
    n, d = z.shape
    flow, system = target.flow, target.system
    x = np.empty((n, system.dim))
    u = np.empty(n)
    log_w = np.empty(n)
    gradient = np.empty((n, d + eps.shape[1]))
    for start in range(0, n, target.batch_size):
        rows = slice(start, start + target.batch_size)
        zt = torch.tensor(z[rows], dtype=torch.float64, device=target.device, requires_grad=True)
        et = torch.tensor(eps[rows], dtype=torch.float64, device=target.device, requires_grad=True)
        with torch.enable_grad():
            y0, delta_s = flow_perturbation(flow, zt, et, target.estimator, target.sigma_b, target.fd_step,
                                            target.ode_steps, differentiable=True, step_noise=target.step_noise)
            xb, chart_log_det = flow.to_configuration_with_log_det(y0)
            xb_np = xb.detach().cpu().numpy()
            result = system.energy.evaluate(xb_np, need_gradient=True)
            log_rest = delta_s + chart_log_det - flow.latent_log_prob(zt)  # log ω + u
            force_term = (xb * torch.as_tensor(result.gradient, dtype=xb.dtype, device=xb.device)).sum()
            objective = torch.where(torch.isfinite(log_rest), log_rest, 0.0).sum() - force_term
            gz, ge = torch.autograd.grad(objective, (zt, et))
        x[rows], u[rows] = xb_np, result.energy
        log_w[rows] = log_omega(result.energy, (delta_s + chart_log_det).detach().cpu().numpy(),
                                flow.latent_log_prob(zt).detach().cpu().numpy())
        gradient[rows] = torch.cat([gz, ge], 1).cpu().numpy()
    target.n_evaluations += n
    gradient[~np.isfinite(log_w) | ~np.isfinite(gradient).all(1)] = np.nan
    return x, u, log_w, gradient


def tamed_drift(grad_log_pi: np.ndarray, step: float) -> np.ndarray:
    """``(h/2) g`` shortened to at most the noise length ``√(h · n_coordinates)`` per row."""
    drift = 0.5 * step * grad_log_pi
    length = np.linalg.norm(drift, axis=1, keepdims=True)
    return drift / np.maximum(1.0, length / np.sqrt(step * grad_log_pi.shape[1]))


def _log_pi_and_gradient(y: np.ndarray, log_w: np.ndarray, grad_log_w: np.ndarray, beta: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        return -0.5 * (y * y).sum(1) + beta * log_w, -y + beta * grad_log_w


def mala_move(
    target: ExtendedTarget,
    z: np.ndarray,
    eps: np.ndarray,
    x: np.ndarray,
    u: np.ndarray,
    log_w: np.ndarray,
    grad_log_w: np.ndarray,
    beta: float,
    step: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One tamed-MALA move of every state on ``π_β ∝ N(x_T) N(ε) ω^β``.

    Parameters
    ----------
    target : ExtendedTarget
        Weights of extended states.
    z, eps, x, u, log_w : np.ndarray
        Current states, configurations, energies and ``log ω``.
    grad_log_w : np.ndarray
        ``(B, d + m)`` ``∇ log ω`` of the current states (:func:`log_omega_with_gradient`); NaN rows
        (states of zero weight) are not moved.
    beta : float
        Exponent of ``ω``.
    step : float
        ``h``, the variance of the proposal noise per coordinate.
    rng : np.random.Generator
        Random source.

    Returns
    -------
    z, eps, x, u, log_w, grad_log_w : np.ndarray
        The new states and their terms.
    accepted : np.ndarray
        ``(B,)`` boolean.
    n_nonfinite : int
        Proposals of zero weight or without a finite gradient (rejected).
    """
    if not step > 0:
        raise ValueError(f"the MALA step must be positive, got {step}")
    n, d = z.shape
    y = np.concatenate([z, eps], 1)
    movable = ~np.isnan(grad_log_w[:, 0])
    log_pi, g = _log_pi_and_gradient(y, log_w, grad_log_w, beta)
    mean = y + np.where(movable[:, None], tamed_drift(np.nan_to_num(g), step), 0.0)
    y_new = mean + np.sqrt(step) * rng.standard_normal(y.shape)
    x_new, u_new, log_w_new, grad_new = log_omega_with_gradient(target, y_new[:, :d], y_new[:, d:])
    log_pi_new, g_new = _log_pi_and_gradient(y_new, log_w_new, grad_new, beta)
    valid = ~np.isnan(grad_new[:, 0])
    back = y_new + tamed_drift(np.where(valid[:, None], g_new, 0.0), step)
    with np.errstate(invalid="ignore"):
        log_alpha = (log_pi_new - log_pi - ((y - back) ** 2).sum(1) / (2 * step)
                     + ((y_new - mean) ** 2).sum(1) / (2 * step))
    log_alpha = np.where(valid & movable, np.nan_to_num(log_alpha, nan=-np.inf), -np.inf)
    accepted = np.log(rng.uniform(size=n)) < log_alpha
    keep = accepted[:, None]
    return (np.where(keep, y_new[:, :d], z), np.where(keep, y_new[:, d:], eps), np.where(keep, x_new, x),
            np.where(accepted, u_new, u), np.where(accepted, log_w_new, log_w), np.where(keep, grad_new, grad_log_w),
            accepted, int(np.count_nonzero(~valid)))


def adapt_step(step: float, acceptance: float) -> float:
    """The next MALA step: ``h · exp(2 (acceptance − 0.574))``, towards the optimal acceptance."""
    return float(step * np.exp(2.0 * (acceptance - TARGET_ACCEPTANCE)))


__all__ = ["TARGET_ACCEPTANCE", "adapt_step", "log_omega_with_gradient", "mala_move", "tamed_drift"]
