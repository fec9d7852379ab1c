"""Metropolis-adjusted Langevin (MALA): the exact local-move baseline for non-OpenMM systems.

Many chains run as one batch through the system's energy (numba kernels evaluate a batch in one
call). Proposal ``y = x − h·∇u(x) + sqrt(2h)·ξ``, accepted with the Metropolis–Hastings ratio of
the two Gaussian proposal densities, so the chains sample ``exp(−u)`` exactly. Each chain's step
size ``h`` is adapted toward ``target_acceptance`` during warm-up only and frozen afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .metadata import run_metadata


def _log_q(to: np.ndarray, frm: np.ndarray, grad_frm: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Log proposal density log q(to | frm) up to a constant shared by both directions."""
    diff = to - frm + h[:, None] * grad_frm
    return -(diff**2).sum(1) / (4.0 * h)


def sample_mala(
    system: System,
    n: int,
    seed: int = 0,
    n_chains: int = 32,
    thin: int = 10,
    warmup: int = 2000,
    step_size: float = 1e-3,
    target_acceptance: float = 0.57,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Sample ``exp(−u)`` with batched MALA chains started at ``system.x0``.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the numpy random generator.
    n_chains : int
        Number of independent chains, evaluated as one batch.
    thin : int
        MALA steps between stored samples.
    warmup : int
        Steps of burn-in and step-size adaptation (discarded).
    step_size : float
        Initial step size ``h`` (in the units of x², per unit of reduced energy gradient).
    target_acceptance : float
        Acceptance rate the warm-up adapts toward (0.574 is optimal for MALA in high dimension).
    progress : bool
        Show a progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed (the caller deletes it
        once the samples are saved).
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples with ``chain`` and ``time`` (MALA step) columns; metadata
        holds the acceptance rate and final step sizes.
    """
    if n < 1 or n_chains < 1 or thin < 1 or warmup < 0:
        raise ValueError("n, n_chains and thin must be >= 1 and warmup >= 0")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    total_steps = warmup + per_chain * thin
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "mala", "n": n, "seed": seed, "n_chains": n_chains,
             "thin": thin, "warmup": warmup},
        every_seconds=checkpoint_seconds,
    )
    rng = np.random.default_rng(seed)
    x = np.repeat(system.x0.numpy()[None], n_chains, axis=0)
    h = np.full(n_chains, float(step_size))
    stored = np.empty((per_chain, n_chains, system.dim))
    step, n_accepted, n_proposed = 0, 0, 0
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        x, h = arrays["x"], arrays["h"]
        stored[: arrays["stored"].shape[0]] = arrays["stored"]
        step, n_accepted, n_proposed = info["step"], info["n_accepted"], info["n_proposed"]
        rng.bit_generator.state = info["rng"]

    result = system.energy.evaluate(x)
    u, g = result.energy, result.gradient
    if not np.isfinite(u).all():
        raise ValueError(f"system '{system.name}': non-finite energy at the starting configuration")
    bar = tqdm(total=total_steps, initial=step, desc=f"MALA {system.name}", disable=not progress, unit="step")
    while step < total_steps:
        noise = rng.standard_normal(x.shape)
        y = x - h[:, None] * g + np.sqrt(2.0 * h)[:, None] * noise
        proposal = system.energy.evaluate(y)
        log_alpha = (
            u - proposal.energy + _log_q(x, y, proposal.gradient, h) - _log_q(y, x, g, h)
        )
        accept = np.log(rng.uniform(size=n_chains)) < np.where(np.isfinite(log_alpha), log_alpha, -np.inf)
        x = np.where(accept[:, None], y, x)
        u = np.where(accept, proposal.energy, u)
        g = np.where(accept[:, None], proposal.gradient, g)
        step += 1
        if step <= warmup:
            # Robbins-Monro on log h, decaying so the step sizes settle before production.
            h *= np.exp((accept - target_acceptance) / math.sqrt(step + 10.0))
        else:
            n_accepted += int(accept.sum())
            n_proposed += n_chains
            if (step - warmup) % thin == 0:
                stored[(step - warmup) // thin - 1] = x
        if step % 50 == 0 or step == total_steps:
            bar.update(step - bar.n)
            if n_proposed:
                bar.set_postfix(acceptance=f"{n_accepted / n_proposed:.2f}")
        if ckpt.due() or (step == total_steps and ckpt.path is not None):
            n_stored = max(0, (step - warmup) // thin)
            ckpt.save(
                {"x": x, "h": h, "stored": stored[:n_stored]},
                {"step": step, "n_accepted": n_accepted, "n_proposed": n_proposed, "rng": rng.bit_generator.state},
            )
    bar.close()

    xs = stored.transpose(1, 0, 2).reshape(-1, system.dim)[:n]
    chain = np.repeat(np.arange(n_chains), per_chain)[:n]
    time = np.tile((np.arange(per_chain) + 1) * thin, n_chains)[:n]
    energies = system.energy.evaluate(xs, need_gradient=False).energy
    samples = SampleSet(
        x=xs,
        energies=energies,
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "mala", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            n_chains=n_chains,
            thin=thin,
            warmup=warmup,
            acceptance_rate=n_accepted / max(n_proposed, 1),
            step_size_median=float(np.median(h)),
        ),
    )
    return samples
