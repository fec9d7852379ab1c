"""Independent samples from a trained flow, importance-weighted toward the Boltzmann distribution.

Each sample ``x ~ q`` carries its true reduced energy ``u(x)`` (``+inf`` when the evaluation
fails) and the log-weight ``−u(x) − log q(x)``. The flow density is normalised, so the weights
also estimate the partition function (for molecules: per unit volume of the rigid-motion
quotient, see :mod:`boltzflow.flows.models`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..flows.distributions import FlowDistribution
from ..flows.models import load_model
from ..reference_data import shipped_model
from ..samples import SampleSet
from ..systems.registry import is_builtin
from ..systems.system import System
from .importance_draws import draw_in_batches
from .metadata import run_metadata


def _batch_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    """An independent random stream per batch, so a resumed run draws exactly the same samples."""
    state = np.random.SeedSequence([seed, batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def resolve_model(
    system: System, model: str | Path | FlowDistribution | None
) -> tuple[FlowDistribution, str]:
    """The flow a flow-based sampler uses, and the name that identifies it in metadata and checkpoints.

    Parameters
    ----------
    system : System
        Target.
    model : path, FlowDistribution or None
        A model file written by :func:`~boltzflow.flows.models.save_model` (loaded for ``system``),
        a flow object (used as is), or ``None`` for the model shipped with a built-in system
        (``data/<system>/flow.pt``).

    Returns
    -------
    flow : FlowDistribution
    name : str
        The model file's absolute path, or ``"in-memory flow"``.

    Raises
    ------
    ValueError
        If ``model`` is ``None`` and no trained flow is shipped for ``system``.
    """
    if model is None:
        model = shipped_model(system.name) if is_builtin(system) else None
    if model is None:
        raise ValueError(
            f"no trained flow is shipped for '{system.name}': pass model= (a saved model file or a "
            "FlowDistribution), e.g. one written by `boltzflow train`"
        )
    if isinstance(model, FlowDistribution):
        return model, "in-memory flow"
    return load_model(model, system), str(Path(model).resolve())


def sample_flow(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Draw ``n`` independent flow samples with importance weights ``−u − log q``.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples.
    seed : int
        Seed of the latent samples.
    model : path or FlowDistribution, optional
        A model file written by :func:`~boltzflow.flows.models.save_model` (or ``boltzflow
        train``), or a flow object. Default: the model shipped for a built-in system
        (``data/<system>/flow.pt``).
    batch_size : int
        Samples drawn and evaluated per batch.
    progress : bool
        Show a progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Uncorrelated samples from a normalised proposal. Samples whose energy failed keep their
        place with ``+inf`` energy and ``−inf`` log-weight; samples whose flow density is not
        finite get ``−inf`` log-weight too and are counted in ``metadata["n_invalid_log_q"]``.
    """
    flow, model_name = resolve_model(system, model)
    flow.eval()
    device = next(flow.buffers()).device

    def draw(batch: int, size: int) -> tuple[np.ndarray, np.ndarray, None]:
        with torch.no_grad():
            xb, lqb = flow.sample(size, _batch_generator(seed, batch, device))
        return xb.cpu().to(torch.float64).numpy(), lqb.cpu().to(torch.float64).numpy(), None

    draws = draw_in_batches(system, n, seed, "flow", model_name, draw, batch_size, progress, checkpoint,
                            checkpoint_seconds)
    valid_q = np.isfinite(draws.log_proposal)
    return SampleSet(
        x=draws.x,
        energies=draws.energies,
        log_weights=draws.log_weights(valid_q),
        metadata=run_metadata(
            system, "flow", seed, correlated=False, normalized_proposal=True, **draws.resume,
            model=model_name,
            batch_size=batch_size,
            n_invalid_log_q=int(np.count_nonzero(~valid_q)),
        ),
    )
