"""Neutra-MCMC: HMC in a flow's latent space on the pulled-back target, samples mapped back.

With the flow's generative map ``x = T(z)``, the target ``exp(−u(x))`` pulled back to the latent
space is ``exp(−u(T(z)) + log|det J_T(z)|)``. A good flow makes this potential nearly the standard
normal one, so plain HMC with unit masses mixes fast there; a poor flow still gives an exact
sampler, only a slower one. The chains are those of :func:`.hmc.run_hmc_chains` (step sizes
adapted in warm-up only); each stored ``z`` is mapped back with ``T`` and carries the true
energy ``u(T(z))``. The latent potential's gradient flows through the energy's forces and the
flow by autograd.

Latent features that are circular (angles of molecular flows) would need periodic HMC moves; they
are refused rather than handled wrongly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..energy.base import Energy
from ..flows.distributions import FlowDistribution
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .flow import resolve_model
from .hmc import chain_columns, run_hmc_chains
from .local_kernels import Potential
from .metadata import run_metadata


def latent_potential(flow: FlowDistribution, energy: Energy) -> Potential:
    """The pulled-back reduced potential ``u(T(z)) − log|det J_T(z)|`` and its gradient in ``z``.

    Parameters
    ----------
    flow : FlowDistribution
        Flow whose ``bijection.forward`` is ``T``.
    energy : Energy
        Target reduced energy on configurations ``x``.

    Returns
    -------
    Potential
        ``z (B, d) -> (u_z (B,), du_z/dz (B, d))`` on float64 numpy arrays; rows where ``T(z)``,
        the energy, the log-determinant or the gradient is not finite get ``+inf`` and a zero
        gradient.
    """
    device = next(flow.buffers()).device
    dtype = flow.base.dtype

    def potential(z_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = torch.as_tensor(z_np, dtype=dtype, device=device).requires_grad_(True)
        with torch.enable_grad():
            x, logdet = flow.bijection.forward(z)
            total = energy(x) - logdet
            (grad,) = torch.autograd.grad(total.sum(), z)
        u = total.detach().cpu().to(torch.float64).numpy()
        g = grad.detach().cpu().to(torch.float64).numpy()
        bad = ~(np.isfinite(u) & np.isfinite(g).all(axis=1))
        if bad.any():
            u, g = u.copy(), g.copy()
            u[bad], g[bad] = np.inf, 0.0
        return u, g

    return potential


def sample_neutra(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 500,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    target_acceptance: float = 0.65,
    jitter: float = 0.2,
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Sample ``exp(−u)`` with HMC chains in the latent space of a flow (neutra-MCMC).

    Parameters
    ----------
    system : System
        Target (its energy must provide gradients).
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the numpy random generator.
    model : path or FlowDistribution, optional
        A model file written by :func:`~boltzflow.flows.models.save_model`, or a flow object.
        Default: the model shipped for a built-in system (see :func:`.flow.resolve_model`).
    n_chains : int
        Number of chains, evaluated as one batch, all started at ``T⁻¹(system.x0)``.
    thin : int
        HMC iterations between stored samples.
    warmup : int
        Iterations of burn-in and step-size adaptation (discarded).
    step_size : float
        Initial leapfrog step in latent units (about 1 for a perfect flow's standard normal).
    n_leapfrog : int
        Leapfrog steps per trajectory (``1`` makes it latent-space MALA).
    target_acceptance : float
        Acceptance probability the warm-up adapts toward.
    jitter : float
        Relative uniform jitter of the step size per trajectory (``0 <= jitter < 1``).
    batch_size : int
        Latent samples mapped back through the flow per batch at the end.
    progress : bool
        Show a progress bar with the acceptance rate.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples ``x = T(z)`` with their true energies ``u(x)``, ``chain``
        and ``time`` (HMC iteration) columns; metadata as for :func:`.hmc.sample_hmc` (step sizes in
        latent units) plus the model.

    Raises
    ------
    ValueError
        If the flow has circular latent features, without a model for a system that ships none,
        or when ``T⁻¹(system.x0)`` or its potential is not finite.
    """
    flow, model_name = resolve_model(system, model)
    if bool(flow.base.circular.any()):
        raise ValueError(
            f"neutra needs a flow without circular latent features; this one has "
            f"{int(flow.base.circular.sum())} (angles of a molecular flow): use the 'imh' or 'isir' sampler"
        )
    if n < 1 or n_chains < 1 or batch_size < 1:
        raise ValueError("n, n_chains and batch_size must be >= 1")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "neutra", "n": n, "seed": seed, "model": model_name,
             "n_chains": n_chains, "thin": thin, "warmup": warmup, "step_size": step_size,
             "n_leapfrog": n_leapfrog, "target_acceptance": target_acceptance, "jitter": jitter},
        every_seconds=checkpoint_seconds,
    )
    flow.eval()
    device, dtype = next(flow.buffers()).device, flow.base.dtype
    with torch.no_grad():
        z0, _ = flow.bijection.inverse(torch.as_tensor(system.x0[None], dtype=dtype, device=device))
    z0 = z0.cpu().to(torch.float64).numpy()
    if not np.isfinite(z0).all():
        raise ValueError(f"the flow's inverse is not finite at the starting configuration of '{system.name}'")
    latent, _, diagnostics = run_hmc_chains(
        latent_potential(flow, system.energy), np.repeat(z0, n_chains, axis=0), per_chain, seed, thin, warmup,
        step_size, n_leapfrog, target_acceptance, jitter, progress, ckpt, f"neutra {system.name}",
    )
    z = latent.reshape(-1, latent.shape[-1])[:n]
    x = np.empty((n, system.dim))
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            xb, _ = flow.bijection.forward(torch.as_tensor(z[rows], dtype=dtype, device=device))
            x[rows] = xb.cpu().to(torch.float64).numpy().reshape(-1, system.dim)
    chain, time = chain_columns(n, n_chains, per_chain, thin)
    return SampleSet(
        x=x,
        energies=system.energy.evaluate(x, need_gradient=False).energy,
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "neutra", seed, correlated=True, normalized_proposal=False,
            model=model_name, kernel="hmc", n_chains=n_chains, thin=thin, warmup=warmup, **diagnostics,
        ),
    )
