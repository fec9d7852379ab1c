"""Samplers of continuous flows: importance weights (exact, Hutchinson, flow perturbation) and FP chains.

All take ``model=`` a continuous-flow file (``boltzflow train-cnf``) or a
:class:`~boltzflow.flows.continuous.ContinuousFlow`; energies are the system's own.

* ``cnf-exact`` — independent flow samples, ``log w = −u − log q`` with ``log q`` from the exact
  divergence integrated along the RK4 path (``D`` vector-Jacobian products per RK4 stage);
  ``log q`` is the flow's continuous-time density, exact up to the RK4 quadrature error.
* ``cnf-hutchinson`` — the same with Hutchinson's divergence (``n_probes`` per path): ``log q`` is
  unbiased, so the weights ``exp(−u − log q)`` are **biased** (Jensen). Kept as the baseline
  flow perturbation replaces.
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

Importance samplers store for every sample its weight's ingredients only: the estimation layer
turns them into numbers. Failed energies or non-finite flow terms give zero weight, counted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..flows.continuous import ContinuousFlow, load_continuous_flow
from ..flows.continuous_perturbation import ESTIMATORS, STEP_NOISE, flow_perturbation, log_omega, noise_dim
from ..flows.distributions import DEFENSIVE_FRACTION, DEFENSIVE_SCALE, DefensiveLatent
from ..flows.ode import PROBES, HutchinsonDivergence, exact_divergence
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint, restore_stored
from .flow import _batch_generator
from .hmc import chain_columns
from .importance_draws import draw_in_batches
from .metadata import run_metadata

# ODE passes (each n_steps RK4 steps) per weight, the unit of the cost comparisons (Hutchinson's one pass
# carries a vector-Jacobian product per RK4 stage)
ODE_PASSES = {"multistep": 2, "perturbed": 2, "stretch": 3, "hutchinson": 1}


def resolve_continuous_model(system: System, model: str | Path | ContinuousFlow | None) -> tuple[ContinuousFlow, str]:
    """The continuous flow a sampler uses and the name identifying it in metadata and checkpoints.

    Raises
    ------
    ValueError
        Without a model (no continuous flow is shipped).
    ModelFileError
        For an unreadable or mismatched model file.
    """
    if model is None:
        raise ValueError(
            f"the continuous-flow samplers need model= (a file written by `boltzflow train-cnf {system.name}` "
            "or a ContinuousFlow); none is shipped"
        )
    if isinstance(model, ContinuousFlow):
        if model.dim != system.dim:
            raise ValueError(f"the continuous flow has dimension {model.dim}, the system {system.dim}")
        model.eval()
        return model, "in-memory continuous flow"
    return load_continuous_flow(model, system), str(Path(model).resolve())


def _check_fp_options(
    estimator: str, sigma_b: float | None, fd_step: float, ode_steps: int | None, step_noise: float
) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow-perturbation estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    if sigma_b is not None and not sigma_b > 0:
        raise ValueError(f"sigma_b must be positive, got {sigma_b}")
    if not fd_step > 0:
        raise ValueError(f"fd_step must be positive, got {fd_step}")
    if ode_steps is not None and ode_steps < 1:
        raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
    if not step_noise > 0:
        raise ValueError(f"step_noise must be positive, got {step_noise}")


class ExtendedTarget:
    """Flow-perturbation log-weights of extended states ``(x_T, ε)`` (numpy in, numpy out, in batches).

    Parameters
    ----------
    system : System
        Target (its energy gives ``u(x0)``).
    flow : ContinuousFlow
        The flow.
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        Flow-perturbation estimator, or ``"hutchinson"``: the biased baseline on the same extended
        space (``ε`` as its probe), for side-by-side comparisons.
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the flow's).
    fd_step : float
        Central-difference step of ``"stretch"``.
    ode_steps : int, optional
        RK4 steps (default: the flow's); for ``"multistep"`` also its noisy steps ``N``.
    batch_size : int
        States pushed through the flow at once.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; ``σ₀ √h`` per step).
    latent : DefensiveLatent, optional
        The density ``x_T`` is drawn from, in ``log ω`` (default: the flow's standard normal; only
        independent draws — ``fp-is`` — may use another: the moves of ``fp``/``fp-smc`` preserve
        the standard normal).
    """

    def __init__(
        self, system: System, flow: ContinuousFlow, estimator: str = "multistep", sigma_b: float | None = None,
        fd_step: float = 1e-3, ode_steps: int | None = None, batch_size: int = 1024, step_noise: float = STEP_NOISE,
        latent: DefensiveLatent | None = None,
    ) -> None:
        _check_fp_options(estimator, sigma_b, fd_step, ode_steps, step_noise)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.system, self.flow = system, flow
        self.estimator, self.sigma_b, self.fd_step, self.ode_steps = estimator, sigma_b, fd_step, ode_steps
        self.step_noise = step_noise
        self.latent = latent or DefensiveLatent()
        self.batch_size = batch_size
        self.device = flow.loc.device
        self.n_evaluations = 0

    @property
    def dim(self) -> int:
        """``d``, the dimension of ``x_T``."""
        return self.flow.latent_dim

    @property
    def noise_dim(self) -> int:
        """The dimension of ``ε``: ``N·d`` for ``"multistep"`` (``N`` RK4 steps), ``d`` otherwise."""
        return noise_dim(self.flow, self.estimator, self.ode_steps)

    def evaluate(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Configurations ``x (B, D)``, energies ``u (B,)`` and ``log ω (B,)`` of states ``(z, eps)``."""
        x, energies, delta_s, log_pz = self._terms(z, eps)
        return x, energies, log_omega(energies, delta_s, log_pz)

    def evaluate_proposal(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Configurations, energies and ``log p_Z(x_T) − ΔS`` (``log ω = −u −`` that; NaN where not finite)."""
        x, energies, delta_s, log_pz = self._terms(z, eps)
        with np.errstate(invalid="ignore", over="ignore"):
            log_proposal = log_pz - delta_s
        return x, energies, np.where(np.isfinite(log_proposal), log_proposal, np.nan)

    def _terms(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``x``, ``u(x)``, ``ΔS`` and ``log p_Z(x_T)``, the flow in batches of ``batch_size``."""
        n = z.shape[0]
        x = np.empty((n, self.system.dim))
        delta_s = np.empty(n)
        log_pz = np.empty(n)
        for start in range(0, n, self.batch_size):
            rows = slice(start, start + self.batch_size)
            zt = torch.as_tensor(z[rows], dtype=torch.float64, device=self.device)
            et = torch.as_tensor(eps[rows], dtype=torch.float64, device=self.device)
            y0, ds = flow_perturbation(self.flow, zt, et, self.estimator, self.sigma_b, self.fd_step, self.ode_steps,
                                       step_noise=self.step_noise)
            with torch.no_grad():
                xb, chart_log_det = self.flow.to_configuration_with_log_det(y0)  # −inf off the chart's domain
                x[rows] = xb.cpu().numpy()
                log_pz[rows] = self.latent.log_prob(zt).cpu().numpy()
            delta_s[rows] = (ds + chart_log_det).cpu().numpy()
        energies = self.system.energy.evaluate(x, need_gradient=False).energy
        self.n_evaluations += n
        return x, energies, delta_s, log_pz


def _importance(
    system: System, n: int, seed: int, name: str, model_name: str,
    draw: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    batch_size: int, progress: bool, checkpoint: str | Path | None, checkpoint_seconds: float,
    run: dict, normalized: bool, extra: dict,
) -> SampleSet:
    """Independent weighted samples, ``log w = −u − log_proposal``.

    ``draw(batch_index, size) -> (x, log_proposal, energies or None)`` (``None``: evaluated here).
    """
    draws = draw_in_batches(system, n, seed, name, model_name, draw, batch_size, progress, checkpoint,
                            checkpoint_seconds, run=run)
    valid = np.isfinite(draws.log_proposal)
    return SampleSet(
        x=draws.x, energies=draws.energies, log_weights=draws.log_weights(valid),
        metadata=run_metadata(system, name, seed, correlated=False, normalized_proposal=normalized, model=model_name,
                              batch_size=batch_size, n_invalid_log_q=int(np.count_nonzero(~valid)), **draws.resume,
                              **extra),
    )


def _cnf_draw(flow: ContinuousFlow, seed: int, divergence: Callable[[torch.Tensor, torch.Generator], Callable],
              ode_steps: int | None, latent: DefensiveLatent) -> Callable[[int, int], tuple[np.ndarray, np.ndarray, None]]:
    """Flow samples with ``log q = log p(x_T) − log|det ∂x0/∂x_T|`` (``x_T ~ latent``) under the given divergence."""

    def draw(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        generator = _batch_generator(seed, batch, flow.loc.device)
        z = latent.widen(flow.sample_latent(size, generator), generator)
        with torch.no_grad():
            y, log_det = flow.decode_with_log_det(z, divergence(z, generator), ode_steps)
            x, chart_log_det = flow.to_configuration_with_log_det(y)  # −inf off the chart's domain: log q = +inf
            log_q = latent.log_prob(z) - log_det - chart_log_det
        log_q = log_q.cpu().numpy()
        return x.cpu().numpy(), np.where(np.isfinite(log_q), log_q, np.nan), None

    return draw


def sample_cnf_exact(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | ContinuousFlow | None = None,
    batch_size: int = 64,
    chunk_size: int | None = None,
    ode_steps: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    defensive: float = DEFENSIVE_FRACTION,
    defensive_scale: float = DEFENSIVE_SCALE,
) -> SampleSet:
    """Independent samples of a continuous flow with exact-divergence weights ``−u − log q``.

    Costs ``1 + d`` velocity passes per RK4 stage (the Jacobian trace); ``log q`` is exact up to
    the RK4 quadrature of the divergence.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples.
    seed : int
        Seed of the latent draws.
    model : path or ContinuousFlow
        A file written by ``boltzflow train-cnf`` (or :func:`~boltzflow.flows.continuous.save_continuous_flow`).
    batch_size : int
        Samples per batch.
    chunk_size : int, optional
        Samples whose ``(d, d)`` Jacobians are formed at once (memory bound); default: the batch.
    ode_steps : int, optional
        RK4 steps (default: the model's).
    progress : bool
        Progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Seconds between checkpoints.
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
        Independent weighted samples, ``normalized_proposal=True``.
    """
    flow, model_name = resolve_continuous_model(system, model)
    if ode_steps is not None and ode_steps < 1:
        raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
    latent = DefensiveLatent(defensive, defensive_scale)
    divergence = functools.partial(exact_divergence, chunk_size=chunk_size)
    draw = _cnf_draw(flow, seed, lambda z, g: divergence, ode_steps, latent)
    settings = {"ode_steps": ode_steps or flow.n_steps, "defensive": defensive, "defensive_scale": defensive_scale}
    return _importance(system, n, seed, "cnf-exact", model_name, draw, batch_size, progress, checkpoint,
                       checkpoint_seconds, settings, True, {**settings, "ode_passes_per_sample": 1 + flow.latent_dim})


def sample_cnf_hutchinson(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | ContinuousFlow | None = None,
    n_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    batch_size: int = 256,
    ode_steps: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Continuous-flow samples weighted with Hutchinson's log-density estimate — **biased** weights.

    ``log q`` is unbiased for the flow's log-density, so ``exp(−u − log q)`` is not unbiased for
    the weight (Jensen): estimates converge to a distorted distribution. This is the cheap baseline
    that flow perturbation fixes; ``normalized_proposal`` is False (no log Z from these weights).

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples.
    seed : int
        Seed of the latent draws and probes.
    model : path or ContinuousFlow
        A continuous-flow file or object.
    n_probes : int
        Probes per path (each one vector-Jacobian product per RK4 stage).
    probe : {"rademacher", "gaussian"}
        Probe distribution.
    batch_size : int
        Samples per batch.
    ode_steps : int, optional
        RK4 steps (default: the model's).
    progress : bool
        Progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Seconds between checkpoints.

    Returns
    -------
    SampleSet
        Independent samples with (biased) log-weights.
    """
    flow, model_name = resolve_continuous_model(system, model)
    if probe not in PROBES or n_probes < 1:
        raise ValueError(f"need n_probes >= 1 and probe in {PROBES}, got {n_probes}, {probe!r}")
    if ode_steps is not None and ode_steps < 1:
        raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
    draw = _cnf_draw(flow, seed, lambda z, g: HutchinsonDivergence.draw(n_probes, z, probe, g), ode_steps,
                     DefensiveLatent())
    steps = ode_steps or flow.n_steps
    return _importance(system, n, seed, "cnf-hutchinson", model_name, draw, batch_size, progress, checkpoint,
                       checkpoint_seconds, {"ode_steps": steps, "n_probes": n_probes, "probe": probe}, False,
                       {"ode_steps": steps, "n_probes": n_probes, "probe": probe, "ode_passes_per_sample": 1 + n_probes,
                        "weights": "biased: exp of an unbiased log-density estimate (Hutchinson)"})


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
    return _importance(system, n, seed, "fp-is", model_name, draw, batch_size, progress, checkpoint,
                       checkpoint_seconds, settings, estimator != "hutchinson", {**settings, "ode_passes_per_sample": ODE_PASSES[estimator]})


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


__all__ = ["ExtendedTarget", "refresh_move", "resolve_continuous_model", "sample_cnf_exact", "sample_cnf_hutchinson",
           "sample_fp", "sample_fp_is"]
