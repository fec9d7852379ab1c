"""Flow perturbation (Peng & Gao 2024, 2026): importance weights of a continuous flow without its Jacobian.

A sample is the pair ``(x_T, ε)`` of a latent vector (``d`` coordinates) and a noise vector, both
standard normal (``ε``: ``N·d`` coordinates for ``"multistep"`` with ``N`` RK4 steps, ``d`` for
the others; :func:`noise_dim`). Its configuration ``x0`` and the entropy term ``ΔS`` come from one
of the estimators below; the log-weight toward ``exp(−u)`` is (:func:`log_omega`)

    log ω = −u(x0) + ΔS − log p_Z(x_T).

When each is safe:

* ``"multistep"`` (the default; Flow Perturbation++, Peng & Gao 2026): **unbiased and of finite
  variance**. On standardised coordinates ``s`` the ODE is cut into its ``N`` RK4 steps of length
  ``h = 1/N``; generation runs ``s_N = x_T`` and, for ``j = N..1``, ``s_{j−1} = B_j(s_j) + σ ε_j``
  (``B_j``: one RK4 step towards the data, ``σ = σ₀ √h``, ``σ₀`` = ``step_noise``); the target
  side has the kernels ``N(s_j; F_j(s_{j−1}), σ²)`` (``F_j``: the RK4 step from ``s_{j−1}`` back
  towards the latent), so

      ΔS = Σ log scale − ½ Σ_j (‖(s_j − F_j(s_{j−1})) / σ‖² − ‖ε_j‖²).

  ``E[ω f(x0)] = ∫ e^{−u} f`` exactly, for any velocity, steps and σ (the kernels integrate out
  from ``s_N`` down). A step's Jacobian is ``I + h ∂v``, so the finite-variance condition of each
  kernel pair, ``s_min(J_{F_j})² > ½``, holds whenever ``h ‖∂v/∂s‖ < 1 − 1/√2``, and the log-weight
  variance the noise adds is ``O(h)`` in the linear regime, whatever ``σ``. ``σ₀`` must be much
  larger than the RK4 round trip ``|F_j(B_j(s)) − s|`` (``O(h⁵)``) and small against the scale on
  which ``∂v`` changes (the data's, 1 in ``s``); it blurs the samples by about ``σ₀·scale``.
  Two ODE passes (``N`` backward and ``N`` forward RK4 steps). Raise ``N`` (``n_steps``) where the
  velocity is stiff.
* ``"perturbed"`` (the 2024 preprint's estimator): unbiased, but of **infinite variance unless
  σ_F < √2·σ_B·s_min(J_F)** in every direction, which an isotropic σ_F trained to the average
  residual violates for any anisotropic flow (heavy-tailed weights, confidently wrong estimates):
  kept for comparison, unsafe for anisotropic flows. ``x0 = B(x_T) + σ_B·ε``,
  ``ε̃ = (x_T − F(x0)) / σ_F(x0)``, ``ΔS = −½(‖ε̃‖² − ‖ε‖²) − d·log σ_F + d·log σ_B``. Then
  ``ω = e^{−u(x0)} N(x_T; F(x0), σ_F²) / (p_Z(x_T) N(x0; B(x_T), σ_B²))``: integrating over
  ``x_T`` gives ``E[ω f(x0)] = ∫ e^{−u} f`` exactly, for *any* maps F, B and any σ_F. Two ODE passes.
* ``"stretch"`` (the simplified estimator): finite variance (``α^{−d} ≤ s_min(J_F)^{−d}``, large in
  high ``d``), biased by the central differences and the RK4 mismatch of F and B⁻¹.
  ``x0 = B(x_T)``; with ``x0± = x0 ± δ·ε`` and ``δx_T = F(x0+) − F(x0−)``,
  ``α² = ‖δx_T‖² / ‖δx0‖²`` and ``ΔS = −(d/2) log α²``. For isotropic ``ε``,
  ``E[α^{−d}] = 1/|det J_F|`` exactly (:func:`stretch_delta_s`), so the weights are
  unbiased up to the central-difference error and the RK4 mismatch between ``F`` and ``B⁻¹``.
  Costs three ODE passes.
* ``"hutchinson"`` — *not* flow perturbation, the biased baseline it replaces (never for
  estimates), in the same extended space: ``x0 = B(x_T)`` and ``ΔS = ε^T (∫ ∂v/∂x dt) ε``,
  Hutchinson's estimate of ``log|det ∂x0/∂x_T|`` with ``ε`` as one Gaussian probe held along
  the path. ``E_ε[ΔS]`` is the exact log-determinant, so ``E_ε[ω]`` is not ``e^{−u}/q``
  (Jensen): MCMC or SMC on ``(x_T, ε)`` with these weights samples a distorted distribution. One
  ODE pass with a vector-Jacobian product per RK4 stage.

All live on the flow's internal coordinates (``d`` = the centre-of-mass-free dimension for
particles), in float64 (the central differences and the small per-step noise need it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .continuous import ContinuousFlow
from .ode import HutchinsonDivergence, rk4_step

ESTIMATORS = ("multistep", "perturbed", "stretch", "hutchinson")
STEP_NOISE = 0.01  # σ₀ of "multistep", standardised units: the per-step noise is σ₀ √h


def noise_dim(flow: ContinuousFlow, estimator: str, n_steps: int | None = None) -> int:
    """Coordinates of ``ε``: ``N·d`` for ``"multistep"`` (one ``d``-vector per RK4 step), ``d`` otherwise."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow-perturbation estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    return flow.latent_dim * ((n_steps or flow.n_steps) if estimator == "multistep" else 1)


def multistep_perturbation(
    flow: ContinuousFlow, z: torch.Tensor, eps: torch.Tensor, n_steps: int, step_noise: float = STEP_NOISE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy RK4 generation ``s_{j−1} = B_j(s_j) + σ ε_j`` and its ``ΔS`` (the ``"multistep"`` estimator).

    Parameters
    ----------
    flow : ContinuousFlow
        The flow (its velocity on standardised coordinates).
    z : torch.Tensor
        ``(B, d)`` latent vectors ``x_T = s_N``.
    eps : torch.Tensor
        ``(B, N·d)`` noise: ``eps[:, k·d:(k+1)·d]`` is added after the ``k``-th backward step
        (``k = 0`` starts from the latent, ``t = 1``).
    n_steps : int
        ``N``, the RK4 steps (``h = 1/N``).
    step_noise : float
        ``σ₀``: the per-step noise is ``σ = σ₀ √h`` in standardised units.

    Returns
    -------
    y0 : torch.Tensor
        ``(B, d)`` internal coordinates.
    delta_s : torch.Tensor
        ``(B,)`` ``Σ log scale − ½ Σ_j (‖(s_j − F_j(s_{j−1})) / σ‖² − ‖ε_j‖²)``.
    """
    if not step_noise > 0:
        raise ValueError(f"step_noise must be positive, got {step_noise}")
    h = 1.0 / n_steps
    sigma = step_noise * math.sqrt(h)
    noise = eps.reshape(eps.shape[0], n_steps, flow.latent_dim)
    s = z
    mismatch = z.new_zeros(z.shape[0])
    for k in range(n_steps):
        t = 1.0 - k * h
        s_prev = rk4_step(flow.velocity_field, s, t, -h) + sigma * noise[:, k]
        forward = rk4_step(flow.velocity_field, s_prev, t - h, h)
        mismatch = mismatch + (((s - forward) / sigma) ** 2).sum(-1)
        s = s_prev
    delta_s = flow.log_scale.to(s) - 0.5 * (mismatch - (noise**2).sum((1, 2)))
    return flow.loc.to(s) + flow.scale.to(s) * s, delta_s


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
    estimator: str = "multistep",
    sigma_b: float | None = None,
    fd_step: float = 1e-3,
    n_steps: int | None = None,
    differentiable: bool = False,
    step_noise: float = STEP_NOISE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Configuration (internal coordinates) and ``ΔS`` of extended samples ``(x_T, ε)``.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow (``decode`` is B, ``encode`` is F).
    z : torch.Tensor
        ``(B, d)`` latent vectors.
    eps : torch.Tensor
        ``(B, noise_dim)`` noise vectors (:func:`noise_dim`: ``N·d`` for ``"multistep"``, else ``d``).
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        See the module docstring (``"hutchinson"``: the biased baseline, ``ε`` its probe).
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the flow's, which its σ_F was trained for).
    fd_step : float
        ``δ`` of ``"stretch"``.
    n_steps : int, optional
        RK4 steps (default: the flow's); for ``"multistep"`` also the number of noisy steps.
    differentiable : bool
        Keep the autograd graph from ``z`` and ``eps`` (gradient-based moves on the extended space;
        second order through the velocity for ``"hutchinson"``); default: no graph.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; per step ``σ₀ √h``).

    Returns
    -------
    x0 : torch.Tensor
        ``(B, d)`` internal coordinates (:meth:`ContinuousFlow.to_configuration` gives ``x``).
    delta_s : torch.Tensor
        ``(B,)``.
    """
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    m = noise_dim(flow, estimator, n_steps)
    if z.ndim != 2 or eps.ndim != 2 or z.shape[1] != flow.latent_dim or eps.shape != (z.shape[0], m):
        raise ValueError(f"x_T and eps must have shapes (batch, {flow.latent_dim}) and (batch, {m}), got "
                         f"{tuple(z.shape)}, {tuple(eps.shape)}")
    with torch.set_grad_enabled(differentiable):
        if estimator == "multistep":
            return multistep_perturbation(flow, z, eps, n_steps or flow.n_steps, step_noise)
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


__all__ = ["ESTIMATORS", "STEP_NOISE", "flow_perturbation", "log_omega", "multistep_perturbation", "noise_dim",
           "perturbed_delta_s", "stretch_delta_s"]
