"""Sequential Monte Carlo with flow-perturbation weights on the extended space ``(x_T, ε)``.

Particles start from the priors ``x_T ~ N(0, I)``, ``ε ~ N(0, I)`` and are carried through targets
``π_β ∝ p_Z(x_T) N(ε) ω(x_T, ε)^β`` for ``β`` rising from ``beta_min`` to 1 along a sigmoid:

1. reweight: ``log W += (β_j − β_{j−1}) · log ω``;
2. resample (systematic) when the Kish ESS of a replica falls below ``ess_threshold · N_r``; the
   resampled particles share the replica's mean weight, so the weights keep the evidence and
   ``E[mean W] = Z``;
3. ``mcmc_steps`` Metropolis moves on ``π_β`` (:func:`~.flow_perturbation.refresh_move`) refreshing
   ``K_j`` coordinates of ``x_T`` and ``K_j`` per ``d`` of ``ε`` (the same fraction: ``N·K_j`` of
   the ``N·d`` noise coordinates of the default ``"multistep"`` estimator), ``K`` annealed
   geometrically from ``k_max`` (bold moves while the target is flat) to ``k_min``; then
   ``gradient_steps`` tamed-MALA moves (:mod:`.flow_perturbation_mala`: autograd through the flow
   and the forces), their step adapted after every temperature towards an acceptance of 0.574.

The particles run as ``n_replicas`` independent SMC populations in one batch. The SampleSet holds
the particles at ``β = 1`` with their final log-weights; they are correlated (common ancestors),
so they are returned as ``correlated`` with ``chain`` = replica and ``time`` = index of the initial
ancestor (descendants of one ancestor sit together, which the autocorrelation analysis of the
estimation layer sees); with 8 or more replicas the estimation layer also checks the spread of the
replica means.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.special import expit, logsumexp
from tqdm.auto import tqdm

from ..estimate.weights import relative_ess
from ..flows.continuous import ContinuousFlow
from ..flows.continuous_perturbation import STEP_NOISE
from ..flows.perturbation_target import ODE_PASSES, ExtendedTarget
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .cnf import resolve_continuous_model
from .flow_perturbation import refresh_move
from .flow_perturbation_mala import adapt_step, log_omega_with_gradient, mala_move
from .metadata import run_metadata


def sigmoid_schedule(n: int, beta_min: float, steepness: float = 6.0) -> np.ndarray:
    """``n`` exponents from ``beta_min`` to 1 along a sigmoid (slow at both ends), strictly increasing.

    Parameters
    ----------
    n : int
        Number of exponents (>= 1; ``n == 1`` gives ``[1.0]``).
    beta_min : float
        First exponent, in ``(0, 1]``.
    steepness : float
        ``a`` of ``sigmoid(a·(2j/(n−1) − 1))``, rescaled to ``[beta_min, 1]``.
    """
    if n < 1 or not 0 < beta_min <= 1:
        raise ValueError(f"need n >= 1 and 0 < beta_min <= 1, got {n}, {beta_min}")
    if n == 1:
        return np.ones(1)
    s = expit(steepness * np.linspace(-1.0, 1.0, n))
    s = (s - s[0]) / (s[-1] - s[0])
    return beta_min + (1.0 - beta_min) * s


def refresh_schedule(n: int, k_max: int, k_min: int, dim: int) -> np.ndarray:
    """``n`` refresh counts from ``k_max`` down to ``k_min`` (geometric), capped at ``dim``."""
    if k_min < 1 or k_max < k_min:
        raise ValueError(f"need 1 <= k_min <= k_max, got {k_min}, {k_max}")
    k = np.rint(np.geomspace(k_max, k_min, n)).astype(int) if n > 1 else np.array([k_min])
    return np.minimum(k, dim)


def systematic_resample(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a systematic resample of ``N`` particles with probabilities ∝ ``exp(log_w)``."""
    n = log_w.size
    p = np.exp(log_w - logsumexp(log_w))
    cumulative = np.cumsum(p)
    cumulative[-1] = 1.0
    return np.searchsorted(cumulative, (rng.uniform() + np.arange(n)) / n, side="right").clip(0, n - 1)


def sample_fp_smc(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | ContinuousFlow | None = None,
    n_replicas: int = 8,
    n_temperatures: int = 40,
    mcmc_steps: int = 2,
    beta_min: float = 0.01,
    k_max: int = 100,
    k_min: int = 2,
    ess_threshold: float = 0.95,
    gradient_steps: int = 0,
    mala_step: float = 1e-3,
    estimator: Literal["multistep", "perturbed", "stretch", "hutchinson"] = "multistep",
    sigma_b: float | None = None,
    fd_step: float = 1e-3,
    ode_steps: int | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    step_noise: float = STEP_NOISE,
) -> SampleSet:
    """Flow-perturbation SMC: annealed, resampled, Metropolis-moved particles on ``(x_T, ε)``.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of particles (all replicas together).
    seed : int
        Seed of the initial particles, resampling and moves.
    model : path or ContinuousFlow
        A continuous-flow file (``boltzflow train-cnf``) or object.
    n_replicas : int
        Independent SMC populations (the estimation layer's "chains").
    n_temperatures : int
        Exponents ``β`` from ``beta_min`` to 1 (sigmoid schedule, :func:`sigmoid_schedule`).
    mcmc_steps : int
        Metropolis moves per temperature.
    beta_min : float
        First exponent.
    k_max, k_min : int
        Refreshed coordinates of ``x_T`` (and per ``d`` of ``ε``) per move at the first and the last
        temperature (geometric in between).
    ess_threshold : float
        Resample a replica when its Kish ESS is below this fraction of its particles.
    gradient_steps : int
        Tamed-MALA moves per temperature after the refresh moves (0: none). Each costs about three
        refresh moves and moves every coordinate along ``∇ log π_β``.
    mala_step : float
        Initial MALA step ``h`` (noise variance per coordinate), adapted after every temperature.
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        Flow-perturbation estimator (:mod:`boltzflow.flows.continuous_perturbation`), or
        ``"hutchinson"``: the biased baseline on the same extended space (``ε`` as its probe), for
        side-by-side comparisons.
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the model's).
    fd_step : float
        Central-difference step of ``"stretch"``.
    ode_steps : int, optional
        RK4 steps (default: the model's); for ``"multistep"`` also its noisy steps.
    batch_size : int
        States pushed through the flow at once.
    progress : bool
        Progress bar with β, acceptance and ESS.
    checkpoint : path, optional
        Checkpoint file (after every temperature); an existing one from the same run is resumed.
    checkpoint_seconds : float
        Seconds between checkpoints.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; ``σ₀ √h`` per step).

    Returns
    -------
    SampleSet
        The particles at ``β = 1``: configurations, energies and SMC log-weights (``E[mean w] = Z``,
        ``normalized_proposal=True``; False for the biased ``"hutchinson"`` weights), ``chain`` = replica, ``time`` = initial ancestor,
        ``correlated=True``. Metadata: ``acceptance_rates`` and ``refresh`` per temperature (and
        ``mala_acceptance_rates``, ``mala_steps`` with gradient moves),
        ``n_resampling_events``, ``n_unique`` (distinct final particles), ``n_nonfinite_proposals``.
    """
    flow, model_name = resolve_continuous_model(system, model)
    target = ExtendedTarget(system, flow, estimator, sigma_b, fd_step, ode_steps, batch_size, step_noise)
    if n < 2 or n_replicas < 1 or n_temperatures < 1 or mcmc_steps < 0 or gradient_steps < 0:
        raise ValueError("need n >= 2, n_replicas >= 1, n_temperatures >= 1, mcmc_steps >= 0 and gradient_steps >= 0")
    if not mala_step > 0:
        raise ValueError(f"mala_step must be positive, got {mala_step}")
    if not 0 < ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold}")
    n_replicas = min(n_replicas, n // 2)
    betas = sigmoid_schedule(n_temperatures, beta_min)
    refresh = refresh_schedule(n_temperatures, k_max, k_min, target.dim)
    groups = np.array_split(np.arange(n), n_replicas)
    replica = np.concatenate([np.full(len(g), r) for r, g in enumerate(groups)])
    settings = {"n_replicas": n_replicas, "n_temperatures": n_temperatures, "mcmc_steps": mcmc_steps,
                "beta_min": beta_min, "k_max": k_max, "k_min": k_min, "ess_threshold": ess_threshold,
                "gradient_steps": gradient_steps, "mala_step": mala_step, "estimator": estimator, "sigma_b": sigma_b if sigma_b is not None else flow.sigma_b,
                "fd_step": fd_step, "ode_steps": ode_steps or flow.n_steps, "step_noise": step_noise}
    ckpt = Checkpoint(checkpoint, run={"system": system.name, "sampler": "fp-smc", "n": n, "seed": seed,
                                       "model": model_name, **settings}, every_seconds=checkpoint_seconds)
    rng = np.random.default_rng(seed)
    info = {"step": 0, "acceptance": [], "mala_acceptance": [], "mala_steps": [], "h": mala_step, "resampled": 0,
            "nonfinite": 0, "evaluations": 0}
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        z, eps, x, u, log_w, log_big_w, origin, grad, stale = (
            arrays[k] for k in ("z", "eps", "x", "u", "log_w", "W", "origin", "grad", "stale"))
        rng.bit_generator.state = info.pop("rng")
    else:
        z, eps = rng.standard_normal((n, target.dim)), rng.standard_normal((n, target.noise_dim))
        x, u, log_w = target.evaluate(z, eps)
        log_big_w = np.zeros(n)
        origin = np.arange(n)
        grad = np.full((n, target.dim + target.noise_dim) if gradient_steps else (n, 0), np.nan)  # ∇ log ω
        stale = np.ones(n, dtype=bool)  # gradients not computed for the current state yet
    evaluated = info["evaluations"]  # weight evaluations of earlier sessions of a resumed run
    bar = tqdm(total=n_temperatures, initial=info["step"], desc=f"FP-SMC {system.name}", disable=not progress,
               unit="β")
    while info["step"] < n_temperatures:
        j = info["step"]
        delta = betas[j] - (betas[j - 1] if j > 0 else 0.0)
        log_big_w = np.where(np.isfinite(log_w), log_big_w + delta * log_w, -np.inf)
        ess = []
        for rows in groups:
            lw = log_big_w[rows]
            ess.append(relative_ess(lw))
            if ess[-1] < ess_threshold:
                if not np.isfinite(lw).any():
                    raise ValueError(f"FP-SMC: every particle of a replica has zero weight at beta={betas[j]:.3g} "
                                     "(failed energies or a diverging flow)")
                pick = rows[systematic_resample(lw, rng)]
                z[rows], eps[rows], x[rows], u[rows], log_w[rows] = z[pick], eps[pick], x[pick], u[pick], log_w[pick]
                grad[rows], stale[rows] = grad[pick], stale[pick]
                origin[rows] = origin[pick]
                log_big_w[rows] = logsumexp(lw) - math.log(len(rows))
                info["resampled"] += 1
        accepted = 0
        for _ in range(mcmc_steps):
            z, eps, x, u, log_w, ok, n_nonfinite = refresh_move(target, z, eps, x, u, log_w, betas[j], refresh[j], rng)
            accepted += int(ok.sum())
            info["nonfinite"] += n_nonfinite
            stale |= ok
        info["acceptance"].append(accepted / max(n * mcmc_steps, 1))
        if gradient_steps:
            if stale.any():
                grad[stale] = log_omega_with_gradient(target, z[stale], eps[stale])[3]
                stale[:] = False
            accepted = 0
            for _ in range(gradient_steps):
                z, eps, x, u, log_w, grad, ok, n_nonfinite = mala_move(target, z, eps, x, u, log_w, grad, betas[j],
                                                                       info["h"], rng)
                accepted += int(ok.sum())
                info["nonfinite"] += n_nonfinite
            info["mala_acceptance"].append(accepted / (n * gradient_steps))
            info["mala_steps"].append(info["h"])
            info["h"] = adapt_step(info["h"], info["mala_acceptance"][-1])
        info["step"] = j + 1
        info["evaluations"] = evaluated + target.n_evaluations
        bar.update(1)
        bar.set_postfix(beta=f"{betas[j]:.3f}", K=int(refresh[j]), acc=f"{info['acceptance'][-1]:.2f}",
                        ess=f"{min(ess):.2f}", **({"mala": f"{info['mala_acceptance'][-1]:.2f}"} if gradient_steps else {}))
        if ckpt.due() or (info["step"] == n_temperatures and ckpt.path is not None):
            ckpt.save({"z": z, "eps": eps, "x": x, "u": u, "log_w": log_w, "W": log_big_w, "origin": origin,
                       "grad": grad, "stale": stale},
                      {**info, "rng": rng.bit_generator.state})
    bar.close()
    order = np.lexsort((origin, replica))  # within a replica, descendants of one ancestor side by side
    return SampleSet(
        x=x[order],
        energies=u[order],
        log_weights=log_big_w[order],
        chain=replica[order],
        time=origin[order],
        metadata=run_metadata(
            system, "fp-smc", seed, correlated=True, normalized_proposal=estimator != "hutchinson", checkpoint=ckpt,
            model=model_name, **settings,
            acceptance_rates=[float(a) for a in info["acceptance"]],
            acceptance_rate=float(info["acceptance"][-1]),
            **({"mala_acceptance_rates": [float(a) for a in info["mala_acceptance"]],
                "mala_steps": [float(h) for h in info["mala_steps"]]} if gradient_steps else {}),
            refresh=[int(k) for k in refresh],
            n_resampling_events=int(info["resampled"]),
            n_unique=int(np.unique(x, axis=0).shape[0]),
            n_nonfinite_proposals=int(info["nonfinite"]),
            ode_passes_per_weight=ODE_PASSES[estimator],
            n_weight_evaluations=int(info["evaluations"]),
        ),
    )


__all__ = ["refresh_schedule", "sample_fp_smc", "sigmoid_schedule", "systematic_resample"]
