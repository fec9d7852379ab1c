"""Independent samples of a stochastic normalizing flow with exact path importance weights.

Each sample is the end point ``x`` of an SNF path ``z → x`` (:mod:`boltzflow.flows.snf`) with the
log-weight ``log w = u_Z(z) − u(x) + Σ ΔS = −u(x) − log q_path``, where ``u`` is re-evaluated with
``system.energy`` (the SNF's own intermediate energies may differ from it without biasing
anything). The base density is normalised, so ``E[w] = Z``: like a normalised flow's weights, the
path weights estimate the partition function, and ``normalized_proposal`` is set.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..flows.snf import SNF
from ..samples import SampleSet
from ..systems.system import System
from .flow import _batch_generator
from .metadata import run_metadata


def sample_snf(
    system: System,
    n: int,
    seed: int = 0,
    model: SNF | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> SampleSet:
    """Draw ``n`` independent SNF samples with path log-weights ``u_Z(z) − u(x) + Σ ΔS``.

    Parameters
    ----------
    system : System
        Target; its energy gives the final ``u(x)`` of every weight.
    n : int
        Number of samples.
    seed : int
        Seed of the base samples and of the stochastic blocks' noise (one stream per batch).
    model : SNF
        A (trained) :class:`~boltzflow.flows.snf.SNF` object. Required: no SNF is shipped.
    batch_size : int
        Paths drawn per batch.
    progress : bool
        Show a progress bar.

    Returns
    -------
    SampleSet
        Uncorrelated samples, ``normalized_proposal=True`` (``E[w] = Z`` for SNF path weights, so
        log Z is estimable). Samples whose energy failed keep their place with ``+inf`` energy and
        ``−inf`` log-weight (counted in ``n_failed``); paths whose ``log q_path`` is not finite (e.g.
        a Metropolis move out of a failed region) get ``−inf`` too, counted in
        ``metadata["n_invalid_path"]``. Metadata also holds the mean acceptance rate of each
        Metropolis block (``mc_acceptance``).

    Raises
    ------
    ValueError
        If ``model`` is ``None``, the dimensions differ, or ``n``/``batch_size`` < 1.
    TypeError
        If ``model`` is not an SNF.
    """
    if model is None:
        raise ValueError(
            "the 'snf' sampler needs model= (an SNF object, see boltzflow.flows.snf: build one with SNF(...) "
            "and train it with train_snf); no trained SNF is shipped"
        )
    if not isinstance(model, SNF):
        raise TypeError(f"model must be a boltzflow.flows.snf.SNF, got {type(model).__name__}")
    if model.dim != system.dim:
        raise ValueError(f"the SNF has dimension {model.dim}, the system {system.dim}")
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be >= 1")
    x = np.empty((n, system.dim))
    log_q = np.empty(n)
    energies = np.empty(n)
    acceptance: list[list[float]] = []
    model.eval()
    device = model.base._like.device
    bar = tqdm(total=n, desc=f"snf {system.name}", disable=not progress, unit="sample")
    done = 0
    while done < n:
        size = min(batch_size, n - done)
        with torch.no_grad():
            xb, lqb = model.sample(size, _batch_generator(seed, done // batch_size, device))
        acceptance.append(model.acceptance_rates())
        rows = slice(done, done + size)
        x[rows] = xb.cpu().to(torch.float64).numpy()
        log_q[rows] = lqb.cpu().to(torch.float64).numpy()
        energies[rows] = system.energy.evaluate(x[rows], need_gradient=False).energy
        done += size
        bar.update(size)
    bar.close()

    valid = np.isfinite(log_q) & np.isfinite(x).all(axis=1)
    with np.errstate(invalid="ignore"):
        log_weights = np.where(valid & np.isfinite(energies), -energies - log_q, -np.inf)
    log_weights[np.isnan(log_weights)] = -np.inf
    mc_acceptance = np.mean(np.asarray(acceptance, dtype=float), axis=0).tolist() if acceptance[0] else []
    return SampleSet(
        x=x,
        energies=energies,
        log_weights=log_weights,
        metadata=run_metadata(
            system, "snf", seed, correlated=False, normalized_proposal=True,
            model="in-memory SNF",
            batch_size=batch_size,
            n_invalid_path=int(np.count_nonzero(~valid)),
            mc_acceptance=mc_acceptance,
        ),
    )
