"""Hamiltonian Monte Carlo: batched chains with leapfrog trajectories through the forces.

Every chain draws fresh unit-mass momenta, runs ``n_leapfrog`` leapfrog steps (one batched energy
and force evaluation each) and accepts the end point with the Metropolis ratio of the Hamiltonians,
so the chains sample ``exp(−u)`` exactly. Each chain's step size is adapted toward
``target_acceptance`` by dual averaging during warm-up only and frozen afterwards. The chain
driver :func:`run_hmc_chains` works on any potential; :mod:`.neutra` reuses it in a flow's latent
space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint, restore_stored
from .local_kernels import DualAveraging, LocalMove, Potential, hmc_step, target_potential
from .metadata import run_metadata

Kernel = Callable[[Potential, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator], LocalMove]
"""``(potential, x, u, g, h, rng) -> LocalMove``: one batched Metropolis step with step sizes ``h``."""


def run_hmc_chains(
    potential: Potential,
    start: np.ndarray,
    per_chain: int,
    seed: int,
    thin: int,
    warmup: int,
    step_size: float,
    n_leapfrog: int,
    target_acceptance: float,
    jitter: float,
    progress: bool,
    ckpt: Checkpoint,
    desc: str,
    kernel: Kernel | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run batched HMC chains on ``potential`` from ``start`` and store every ``thin``-th state.

    Parameters
    ----------
    potential : Potential
        Reduced potential with gradient (failed rows ``+inf``).
    start : np.ndarray
        ``(n_chains, d)`` starting states with finite potential.
    per_chain : int
        Stored states per chain.
    seed : int
        Seed of the numpy random generator.
    thin : int
        HMC iterations between stored states.
    warmup : int
        Iterations of burn-in and step-size adaptation (discarded).
    step_size, n_leapfrog, target_acceptance, jitter
        See :func:`sample_hmc`.
    progress : bool
        Show a progress bar.
    ckpt : Checkpoint
        Checkpoint of the run (resumed if it exists).
    desc : str
        Progress-bar label.
    kernel : callable, optional
        ``kernel(potential, x, u, g, h, rng) -> LocalMove``, one step of every chain leaving
        ``exp(−potential)`` invariant (e.g. the periodic moves of :mod:`.neutra`); default the HMC
        step with ``n_leapfrog`` and ``jitter``.

    Returns
    -------
    states : np.ndarray
        ``(n_chains, per_chain, d)`` stored states.
    potentials : np.ndarray
        ``(n_chains, per_chain)`` their potentials.
    diagnostics : dict
        Acceptance rates (warm-up and production), divergent trajectories, the per-chain step
        sizes at the end of warm-up and those used at the end of production.

    Raises
    ------
    ValueError
        If a starting state has a non-finite potential or the settings are invalid.
    """
    if n_leapfrog < 1 or thin < 1 or warmup < 0 or not step_size > 0 or not 0 <= jitter < 1:
        raise ValueError("need n_leapfrog >= 1, thin >= 1, warmup >= 0, step_size > 0 and 0 <= jitter < 1")
    n_chains, dim = start.shape
    total = warmup + per_chain * thin
    rng = np.random.default_rng(seed)
    adapter = DualAveraging(step_size, n_chains, target_acceptance)
    x = np.array(start, dtype=np.float64)
    h = adapter.step_size if warmup > 0 else adapter.final()
    h_warmup_end = h.copy() if warmup == 0 else None
    stored = np.empty((per_chain, n_chains, dim))
    stored_u = np.empty((per_chain, n_chains))
    step = 0
    counts = {"accepted_warmup": 0, "accepted": 0, "divergent_warmup": 0, "divergent": 0}
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        x, h = arrays["x"], arrays["h"]
        adapter.load(arrays)
        restore_stored(arrays, stored, stored_u)
        step, counts = info["step"], info["counts"]
        if "h_warmup_end" in arrays:
            h_warmup_end = arrays["h_warmup_end"]
        rng.bit_generator.state = info["rng"]
    u, g = potential(x)
    if not np.isfinite(u).all():
        raise ValueError(f"{desc}: non-finite energy at the starting configuration")

    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, unit="step")
    while step < total:
        if kernel is None:
            move = hmc_step(potential, x, u, g, h, n_leapfrog, rng, jitter)
        else:
            move = kernel(potential, x, u, g, h, rng)
        x, u, g = move.x, move.u, move.g
        step += 1
        if step <= warmup:
            counts["accepted_warmup"] += int(move.accepted.sum())
            counts["divergent_warmup"] += move.n_divergent
            adapter.update(move.accept_prob)
            h = adapter.step_size
            if step == warmup:
                h = adapter.final()  # frozen from here on: production is exact
                h_warmup_end = h.copy()
        else:
            counts["accepted"] += int(move.accepted.sum())
            counts["divergent"] += move.n_divergent
            if (step - warmup) % thin == 0:
                stored[(step - warmup) // thin - 1] = x
                stored_u[(step - warmup) // thin - 1] = u
        if step % 10 == 0 or step == total:
            bar.update(step - bar.n)
            done = step - warmup
            rate = counts["accepted"] / (done * n_chains) if done > 0 else counts["accepted_warmup"] / (step * n_chains)
            bar.set_postfix(acceptance=f"{rate:.2f}", phase="production" if done > 0 else "warm-up")
        if ckpt.due() or (step == total and ckpt.path is not None):
            n_stored = max(0, (step - warmup) // thin)
            arrays = {"x": x, "h": h, "stored": stored[:n_stored], "stored_u": stored_u[:n_stored], **adapter.state()}
            if h_warmup_end is not None:
                arrays["h_warmup_end"] = h_warmup_end
            ckpt.save(arrays, {"step": step, "counts": counts, "rng": rng.bit_generator.state})
    bar.close()

    n_production = per_chain * thin * n_chains
    diagnostics = {
        "acceptance_rate": counts["accepted"] / n_production,
        "warmup_acceptance_rate": counts["accepted_warmup"] / max(warmup * n_chains, 1),
        "n_divergent": counts["divergent"],
        "n_divergent_warmup": counts["divergent_warmup"],
        "n_leapfrog": n_leapfrog,
        "initial_step_size": float(step_size),
        "step_size_median": float(np.median(h)),
        "step_sizes": [float(v) for v in h],
        "step_sizes_warmup_end": [float(v) for v in h_warmup_end],
        "target_acceptance": target_acceptance,
    }
    return stored.transpose(1, 0, 2), stored_u.T, diagnostics


def chain_columns(n: int, n_chains: int, per_chain: int, thin: int) -> tuple[np.ndarray, np.ndarray]:
    """Chain index and production step of ``n`` samples stored chain-major, every ``thin`` steps."""
    chain = np.repeat(np.arange(n_chains), per_chain)[:n]
    time = np.tile((np.arange(per_chain) + 1) * thin, n_chains)[:n]
    return chain, time


def sample_hmc(
    system: System,
    n: int,
    seed: int = 0,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 500,
    step_size: float = 0.05,
    n_leapfrog: int = 10,
    target_acceptance: float = 0.65,
    jitter: float = 0.2,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Sample ``exp(−u)`` with batched HMC chains started at ``system.x0``.

    Parameters
    ----------
    system : System
        Target (its energy must provide gradients: numba, torch or OpenMM forces).
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the numpy random generator.
    n_chains : int
        Number of independent chains, evaluated as one batch.
    thin : int
        HMC iterations (trajectories) between stored samples.
    warmup : int
        Iterations of burn-in and step-size adaptation (discarded).
    step_size : float
        Initial leapfrog step (units of x, for unit masses and reduced energies).
    n_leapfrog : int
        Leapfrog steps per trajectory (energy and force evaluations per iteration).
    target_acceptance : float
        Acceptance probability the warm-up adapts toward.
    jitter : float
        Relative uniform jitter of the step size per trajectory (``0 <= jitter < 1``).
    progress : bool
        Show a progress bar with the acceptance rate.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples with ``chain`` and ``time`` (HMC iteration) columns;
        metadata holds acceptance rates, divergent trajectories and the per-chain step sizes at
        the end of warm-up (``step_sizes_warmup_end``) and in production (``step_sizes``), which
        are equal: adaptation stops with the warm-up.
    """
    if n < 1 or n_chains < 1:
        raise ValueError("n and n_chains must be >= 1")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "hmc", "n": n, "seed": seed, "n_chains": n_chains, "thin": thin,
             "warmup": warmup, "step_size": step_size, "n_leapfrog": n_leapfrog,
             "target_acceptance": target_acceptance, "jitter": jitter},
        every_seconds=checkpoint_seconds,
    )
    start = np.repeat(system.x0.numpy()[None], n_chains, axis=0)
    states, energies, diagnostics = run_hmc_chains(
        target_potential(system.energy), start, per_chain, seed, thin, warmup, step_size, n_leapfrog,
        target_acceptance, jitter, progress, ckpt, f"HMC {system.name}",
    )
    chain, time = chain_columns(n, n_chains, per_chain, thin)
    return SampleSet(
        x=states.reshape(-1, system.dim)[:n],
        energies=energies.reshape(-1)[:n],
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "hmc", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            n_chains=n_chains, thin=thin, warmup=warmup, **diagnostics,
        ),
    )
