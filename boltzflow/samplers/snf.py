"""Independent samples of a stochastic normalizing flow with exact path importance weights.

Each sample is the end point ``x`` of an SNF path ``z → x`` (:mod:`boltzflow.flows.snf`) with the
log-weight ``log w = u_Z(z) − u(x) + Σ ΔS = −u(x) − log q_path``, where ``u`` is re-evaluated with
``system.energy`` (the SNF's own intermediate energies may differ from it without biasing
anything). The base density is normalised, so ``E[w] = Z``: like a normalised flow's weights, the
path weights estimate the partition function, and ``normalized_proposal`` is set.

The SNF is an object or a file written by :func:`~boltzflow.flows.snf.save_snf` (``boltzflow train
SYSTEM --snf``). Every batch has its own random stream, so a run resumed from its checkpoint draws
exactly the samples of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..flows.snf import SNF, load_snf
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .flow import _batch_generator
from .metadata import run_metadata


def sample_snf(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | SNF | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
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
    model : path or SNF
        A (trained) :class:`~boltzflow.flows.snf.SNF` object, or an SNF file written by
        :func:`~boltzflow.flows.snf.save_snf` (loaded for ``system``). Required: no SNF is shipped.
    batch_size : int
        Paths drawn per batch.
    progress : bool
        Show a progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Uncorrelated samples, ``normalized_proposal=True`` (``E[w] = Z`` for SNF path weights, so
        log Z is estimable). Samples whose energy failed keep their place with ``+inf`` energy and
        ``−inf`` log-weight (counted in ``n_failed``); paths whose ``log q_path`` is not finite (e.g.
        a Metropolis move out of a failed region) get ``−inf`` too, counted in
        ``metadata["n_invalid_path"]``. Metadata also holds the model (file path or ``"in-memory
        SNF"``) and the mean acceptance rate of each Metropolis block (``mc_acceptance``).

    Raises
    ------
    ValueError
        If ``model`` is ``None``, the dimensions differ, or ``n``/``batch_size`` < 1.
    boltzflow.flows.models.ModelFileError
        If the model file is missing, corrupted or not an SNF file.
    TypeError
        If ``model`` is neither a path nor an SNF.
    """
    if model is None:
        raise ValueError(
            "the 'snf' sampler needs model= (an SNF file from `boltzflow train SYSTEM --snf`, or an SNF object: "
            "see boltzflow.flows.snf.build_snf and train_snf); no trained SNF is shipped"
        )
    if isinstance(model, (str, Path)):
        model_name = str(Path(model).resolve())
        model = load_snf(model, system)
    elif isinstance(model, SNF):
        model_name = "in-memory SNF"
    else:
        raise TypeError(f"model must be an SNF file path or a boltzflow.flows.snf.SNF, got {type(model).__name__}")
    if model.dim != system.dim:
        raise ValueError(f"the SNF has dimension {model.dim}, the system {system.dim}")
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be >= 1")
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "snf", "n": n, "seed": seed, "batch_size": batch_size,
             "model": model_name},
        every_seconds=checkpoint_seconds,
    )
    x = np.empty((n, system.dim))
    log_q = np.empty(n)
    energies = np.empty(n)
    acceptance: list[list[float]] = []
    done = 0
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        done = info["done"]
        x[:done], log_q[:done], energies[:done] = arrays["x"], arrays["log_q"], arrays["energies"]
        acceptance = arrays["acceptance"].tolist()
    model.eval()
    device = model.base._like.device
    bar = tqdm(total=n, initial=done, desc=f"snf {system.name}", disable=not progress, unit="sample")
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
        if ckpt.due() or (done == n and ckpt.path is not None):
            ckpt.save({"x": x[:done], "log_q": log_q[:done], "energies": energies[:done],
                       "acceptance": np.asarray(acceptance, dtype=float).reshape(len(acceptance), -1)},
                      {"done": done})
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
            model=model_name,
            batch_size=batch_size,
            n_invalid_path=int(np.count_nonzero(~valid)),
            mc_acceptance=mc_acceptance,
        ),
    )
