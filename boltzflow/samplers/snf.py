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

from ..flows.distributions import DEFENSIVE_FRACTION, DEFENSIVE_SCALE, DefensiveLatent
from ..flows.snf import SNF, load_snf
from ..samples import SampleSet
from ..systems.system import System
from .flow import _batch_generator
from .importance_draws import draw_in_batches
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
    defensive: float = DEFENSIVE_FRACTION,
    defensive_scale: float = DEFENSIVE_SCALE,
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
    defensive : float
        Fraction of the base's normal features drawn from the wider normal ``N(0, defensive_scale² I)``
        (a defensive mixture, :class:`~boltzflow.flows.distributions.DefensiveLatent`; ``u_Z`` is the
        mixture's, so the path weights stay exact). A reverse-KL SNF is narrower than its target and
        its weights' tail is where it rarely samples; the mixture lightens that tail. Default 0.1,
        chosen by the calibration benchmark; 0 for the SNF's own base.
    defensive_scale : float
        Width of the wider component (default 1.5).

    Returns
    -------
    SampleSet
        Uncorrelated samples, ``normalized_proposal=True`` (``E[w] = Z`` for SNF path weights, so
        log Z is estimable). Samples whose energy failed keep their place with ``+inf`` energy and
        ``−inf`` log-weight (counted in ``n_failed``); paths whose ``log q_path`` is not finite (e.g.
        a Metropolis move out of a failed region) get ``−inf`` too, counted in
        ``metadata["n_invalid_path"]``. Metadata also holds the model (file path or ``"in-memory
        SNF"``), the defensive mixture (``defensive``, ``defensive_scale``) and the mean acceptance rate
        of each Metropolis block (``mc_acceptance``).

    Raises
    ------
    ValueError
        If ``model`` is ``None``, the dimensions differ, ``n``/``batch_size`` < 1, ``defensive`` is
        outside ``[0, 1)`` or ``defensive_scale`` < 1.
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
    latent = DefensiveLatent(defensive, defensive_scale)
    model.eval()
    device = model.base._like.device

    def draw(batch: int, size: int) -> tuple[np.ndarray, np.ndarray, None]:
        with torch.no_grad():
            xb, lqb = model.sample(size, _batch_generator(seed, batch, device), latent)
        return xb.cpu().to(torch.float64).numpy(), lqb.cpu().to(torch.float64).numpy(), None

    draws = draw_in_batches(system, n, seed, "snf", model_name, draw, batch_size, progress, checkpoint,
                            checkpoint_seconds, {"defensive": defensive, "defensive_scale": defensive_scale},
                            record=model.acceptance_rates)
    valid = np.isfinite(draws.log_proposal) & np.isfinite(draws.x).all(axis=1)
    acceptance = draws.batch_records
    mc_acceptance = acceptance.mean(axis=0).tolist() if acceptance.shape[1] else []
    return SampleSet(
        x=draws.x,
        energies=draws.energies,
        log_weights=draws.log_weights(valid),
        metadata=run_metadata(
            system, "snf", seed, correlated=False, normalized_proposal=True, **draws.resume,
            model=model_name,
            batch_size=batch_size,
            defensive=defensive,
            defensive_scale=defensive_scale,
            n_invalid_path=int(np.count_nonzero(~valid)),
            mc_acceptance=mc_acceptance,
        ),
    )
