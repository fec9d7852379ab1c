"""Flow-perturbation samplers of continuous flows: ``fp-is`` importance weights and ``fp`` chains.

Both take ``model=`` a continuous-flow file (``boltzflow train-cnf``) or a
:class:`~boltzflow.flows.continuous.ContinuousFlow`; energies are the system's own; the weights
``ω`` of extended states ``(x_T, ε)`` come from
:class:`~boltzflow.flows.perturbation_target.ExtendedTarget`.

* ``fp-is`` — independent extended samples ``(x_T, ε)`` with flow-perturbation weights ``ω``
  (:mod:`boltzflow.flows.continuous_perturbation`): unbiased, ``E[ω] = Z``. The default
  estimator, ``"multistep"`` (noise after every RK4 step, ``ε`` of ``N·d`` coordinates), also has
  finite variance; ``"perturbed"`` (one noise vector, learned σ_F) has infinite variance for
  anisotropic flows (σ_F > √2·σ_B·s_min(J_F)) and is kept for comparison only.
* ``fp`` — Metropolis chains on the extended space: each move refreshes ``n_refresh`` random
  coordinates of ``x_T`` and the same fraction of ``ε``'s coordinates (``n_refresh`` per ``d``)
  from their standard normal priors and is accepted with ``min(1, ω'/ω)`` (the prior factors
  cancel); unweighted correlated samples.
* ``fp-smc`` — sequential Monte Carlo on the extended space (:mod:`.flow_perturbation_smc`).

The importance samplers of a continuous flow without the extended space (``cnf-exact``,
``cnf-hutchinson``) are in :mod:`.cnf`. Failed energies or non-finite flow terms give zero weight,
counted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ..flows.continuous import ContinuousFlow
from ..flows.continuous_perturbation import STEP_NOISE
from ..flows.distributions import DEFENSIVE_FRACTION, DEFENSIVE_SCALE, DefensiveLatent
from ..flows.perturbation_target import ODE_PASSES, ExtendedTarget
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint, restore_stored
from .cnf import importance_samples, resolve_continuous_model
from .hmc import chain_columns
from .metadata import run_metadata


def _extended_draw(
    target: ExtendedTarget, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` extended states ``(x_T, ε)`` from their standard normal priors."""
    return rng.standard_normal((n, target.dim)), rng.standard_normal((n, target.noise_dim))


def sample_fp_is(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | ContinuousFlow | None = None,
    estimator: Literal["multistep", "perturbed", "stretch", "hutchinson"] = "multistep",
    sigma_b: float | None = None,
    fd_step: float = 1e-3,
    ode_steps: int | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    step_noise: float = STEP_NOISE,
    defensive: float = DEFENSIVE_FRACTION,
    defensive_scale: float = DEFENSIVE_SCALE,
) -> SampleSet:
    """Independent extended samples ``(x_T, ε)`` with flow-perturbation importance weights ``ω``.

    Unbiased (``E[ω f(x0)] = ∫ e^{−u} f``; exactly for ``"multistep"`` and ``"perturbed"``, up to
    finite differences and the RK4 mismatch of F and B⁻¹ for ``"stretch"``), 2 or 3 ODE passes per
    sample; of finite variance for ``"multistep"`` and ``"stretch"``, not for ``"perturbed"`` with an
    anisotropic flow. In high dimension the weights' variance grows quickly: use ``fp`` or
    ``fp-smc`` there.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples.
    seed : int
        Seed of ``x_T`` and ``ε``.
    model : path or ContinuousFlow
        A continuous-flow file or object.
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        Flow-perturbation estimator (see :mod:`boltzflow.flows.continuous_perturbation`), or the
        biased ``"hutchinson"`` baseline.
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the model's, which its σ_F was trained for).
    fd_step : float
        Central-difference step δ of ``"stretch"`` (system length units).
    ode_steps : int, optional
        RK4 steps (default: the model's); for ``"multistep"`` also its noisy steps.
    batch_size : int
        Samples per batch.
    progress : bool
        Progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Seconds between checkpoints.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; ``σ₀ √h`` per step).
    defensive : float
        Fraction of the latents drawn from the wider normal ``N(0, defensive_scale² I)`` (a defensive
        mixture, :class:`~boltzflow.flows.distributions.DefensiveLatent`: the weights stay exact, and
        their tail stays light where the flow is narrower than the target). Default 0.1, chosen by the
        calibration benchmark; 0 for the flow's own latent (a few per cent more ESS on a well-fitted
        flow; no widened latent leaves an internal-coordinate chart's one-to-one domain, which costs
        zero-weight samples).
    defensive_scale : float
        Width of the wider component (default 1.5).

    Returns
    -------
    SampleSet
        Independent weighted samples, ``normalized_proposal=True`` (``E[ω] = Z``; False for the
        biased ``"hutchinson"`` weights).
    """
    flow, model_name = resolve_continuous_model(system, model)
    latent = DefensiveLatent(defensive, defensive_scale)
    target = ExtendedTarget(system, flow, estimator, sigma_b, fd_step, ode_steps, batch_size, step_noise, latent)

    def draw(batch: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, batch])
        z, eps = latent.sample_numpy(rng, size, target.dim), rng.standard_normal((size, target.noise_dim))
        x, energies, log_proposal = target.evaluate_proposal(z, eps)
        return x, log_proposal, energies

    settings = {"estimator": estimator, "sigma_b": sigma_b if sigma_b is not None else flow.sigma_b,
                "fd_step": fd_step, "ode_steps": ode_steps or flow.n_steps, "step_noise": step_noise,
                "defensive": defensive, "defensive_scale": defensive_scale}
    return importance_samples(system, n, seed, "fp-is", model_name, draw, batch_size, progress, checkpoint,
                              checkpoint_seconds, settings, estimator != "hutchinson",
                              {**settings, "ode_passes_per_sample": ODE_PASSES[estimator]})


def refresh_move(
    target: ExtendedTarget,
    z: np.ndarray,
    eps: np.ndarray,
    x: np.ndarray,
    u: np.ndarray,
    log_w: np.ndarray,
    beta: float,
    n_refresh: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One Metropolis move of every state on ``p_Z(x_T) N(ε) ω(x_T, ε)^β``.

    ``K = n_refresh`` random coordinates of ``x_T`` (``d`` of them) and, independently chosen, the
    same fraction of ``ε``'s: ``K·m/d`` of its ``m`` coordinates (``K`` of each step's ``d`` on
    average for ``"multistep"``, whose ``ε`` has ``m = N·d``; ``K`` otherwise), are redrawn from
    their standard normal priors; the move is accepted with
    ``min(1, exp(β (log ω' − log ω)))``. A proposal of zero weight is never accepted; a state of
    zero weight accepts any proposal of nonzero weight.

    Returns
    -------
    z, eps, x, u, log_w : np.ndarray
        The new states and their configurations, energies and log-weights.
    accepted : np.ndarray
        ``(B,)`` boolean.
    n_nonfinite : int
        Proposals of zero weight (failed energy or non-finite flow terms), all rejected.
    """
    n, d = z.shape
    k = min(max(int(n_refresh), 1), d)
    z_new, eps_new = z.copy(), eps.copy()
    for array, count in ((z_new, k), (eps_new, k * (eps.shape[1] // d))):
        columns = np.argpartition(rng.random(array.shape), count - 1, axis=1)[:, :count]
        np.put_along_axis(array, columns, rng.standard_normal((n, count)), axis=1)
    x_new, u_new, log_w_new = target.evaluate(z_new, eps_new)
    with np.errstate(invalid="ignore"):
        log_alpha = beta * (log_w_new - log_w)
    log_alpha = np.where(np.isfinite(log_w_new), np.nan_to_num(log_alpha, nan=-np.inf), -np.inf)
    accepted = np.log(rng.uniform(size=n)) < log_alpha
    keep = accepted[:, None]
    return (np.where(keep, z_new, z), np.where(keep, eps_new, eps), np.where(keep, x_new, x),
            np.where(accepted, u_new, u), np.where(accepted, log_w_new, log_w), accepted,
            int(np.count_nonzero(~np.isfinite(log_w_new))))


def _pick(log_w: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn with probability ∝ ``exp(log_w)`` (uniform when every weight is zero)."""
    finite = np.isfinite(log_w)
    if not finite.any():
        return int(rng.integers(len(log_w)))
    p = np.where(finite, np.exp(log_w - log_w[finite].max()), 0.0)
    return int(rng.choice(len(log_w), p=p / p.sum()))


def sample_fp(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | ContinuousFlow | None = None,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 200,
    n_refresh: int = 2,
    init_candidates: int = 16,
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
    """Metropolis chains on the extended space ``(x_T, ε)`` with flow-perturbation weights.

    The chains target ``p_Z(x_T) N(ε) ω(x_T, ε)``, whose marginal of ``x0`` is the Boltzmann
    distribution; each iteration refreshes ``n_refresh`` coordinates of ``x_T`` and of ``ε``
    (:func:`refresh_move`, 2 or 3 ODE passes and one energy per chain).

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the proposals and decisions.
    model : path or ContinuousFlow
        A continuous-flow file or object.
    n_chains : int
        Chains, run as one batch.
    thin : int
        Iterations between stored samples.
    warmup : int
        Discarded iterations.
    n_refresh : int
        Coordinates ``K`` of ``x_T`` redrawn per move, and ``K`` per ``d`` of ``ε``
        (:func:`refresh_move`; ``K ≥ d``: independent moves).
    init_candidates : int
        Each chain starts from one of this many prior draws, picked by weight (shortens warm-up).
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        Flow-perturbation estimator, or ``"hutchinson"``: the biased baseline on the same extended
        space (``ε`` as its probe), for side-by-side comparisons.
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the model's).
    fd_step : float
        Central-difference step of ``"stretch"``.
    ode_steps : int, optional
        RK4 steps (default: the model's); for ``"multistep"`` also its noisy steps.
    batch_size : int
        States pushed through the flow at once.
    progress : bool
        Progress bar with the acceptance rate.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Seconds between checkpoints.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; ``σ₀ √h`` per step).

    Returns
    -------
    SampleSet
        Unweighted, correlated samples with ``chain`` and ``time`` columns; metadata
        ``acceptance_rate`` (production), ``warmup_acceptance_rate``, ``n_nonfinite_proposals``.
    """
    flow, model_name = resolve_continuous_model(system, model)
    target = ExtendedTarget(system, flow, estimator, sigma_b, fd_step, ode_steps, batch_size, step_noise)
    if n < 1 or n_chains < 1 or thin < 1 or warmup < 0 or n_refresh < 1 or init_candidates < 1:
        raise ValueError("n, n_chains, thin, n_refresh and init_candidates must be >= 1, warmup >= 0")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    total = warmup + per_chain * thin
    settings = {"n_chains": n_chains, "thin": thin, "warmup": warmup, "n_refresh": n_refresh,
                "init_candidates": init_candidates, "estimator": estimator,
                "sigma_b": sigma_b if sigma_b is not None else flow.sigma_b, "fd_step": fd_step,
                "ode_steps": ode_steps or flow.n_steps, "step_noise": step_noise}
    ckpt = Checkpoint(checkpoint, run={"system": system.name, "sampler": "fp", "n": n, "seed": seed,
                                       "model": model_name, **settings}, every_seconds=checkpoint_seconds)
    rng = np.random.default_rng(seed)
    stored = np.empty((per_chain, n_chains, system.dim))
    stored_u = np.empty((per_chain, n_chains))
    counts = {"accepted": 0, "accepted_warmup": 0, "nonfinite": 0}
    step = 0
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        z, eps, x, u, log_w = (arrays[k] for k in ("z", "eps", "x", "u", "log_w"))
        restore_stored(arrays, stored, stored_u)
        step, counts = info["step"], info["counts"]
        rng.bit_generator.state = info["rng"]
    else:
        z, eps = _extended_draw(target, rng, n_chains * init_candidates)
        x, u, log_w = target.evaluate(z, eps)
        pick = np.array([c * init_candidates + _pick(log_w[c * init_candidates:(c + 1) * init_candidates], rng)
                         for c in range(n_chains)])
        z, eps, x, u, log_w = z[pick], eps[pick], x[pick], u[pick], log_w[pick]
    bar = tqdm(total=total, initial=step, desc=f"FP-MCMC {system.name}", disable=not progress, unit="step")
    while step < total:
        warm = step < warmup
        move = refresh_move(target, z, eps, x, u, log_w, 1.0, n_refresh, rng)
        z, eps, x, u, log_w, accepted, n_nonfinite = move
        counts["accepted_warmup" if warm else "accepted"] += int(accepted.sum())
        counts["nonfinite"] += n_nonfinite
        step += 1
        if not warm and (step - warmup) % thin == 0:
            stored[(step - warmup) // thin - 1] = x
            stored_u[(step - warmup) // thin - 1] = u
        if step % 10 == 0 or step == total:
            bar.update(step - bar.n)
            phase = ("accepted", step - warmup) if step > warmup else ("accepted_warmup", step)
            bar.set_postfix(acceptance=f"{counts[phase[0]] / max(phase[1] * n_chains, 1):.2f}")
        if ckpt.due() or (step == total and ckpt.path is not None):
            n_stored = max(0, (step - warmup) // thin)
            ckpt.save({"z": z, "eps": eps, "x": x, "u": u, "log_w": log_w, "stored": stored[:n_stored],
                       "stored_u": stored_u[:n_stored]},
                      {"step": step, "counts": counts, "rng": rng.bit_generator.state})
    bar.close()
    chain, time = chain_columns(n, n_chains, per_chain, thin)
    return SampleSet(
        x=stored.transpose(1, 0, 2).reshape(-1, system.dim)[:n],
        energies=stored_u.T.reshape(-1)[:n],
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "fp", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt, model=model_name,
            **settings,
            acceptance_rate=counts["accepted"] / max((total - warmup) * n_chains, 1),
            warmup_acceptance_rate=counts["accepted_warmup"] / max(warmup * n_chains, 1),
            n_nonfinite_proposals=counts["nonfinite"],
            ode_passes_per_weight=ODE_PASSES[estimator],
        ),
    )




__all__ = ["refresh_move", "sample_fp", "sample_fp_is"]
