"""The metadata every sampler writes into its SampleSet, in one place."""

from __future__ import annotations

from typing import Any

from ..systems.system import System
from .checkpoint import Checkpoint


def run_metadata(
    system: System, sampler: str, seed: int, correlated: bool, normalized_proposal: bool,
    checkpoint: Checkpoint | None = None, **extra: Any
) -> dict[str, Any]:
    """Common SampleSet metadata: which system (name and folder), temperature, sampler, seed, flags.

    With the run's ``checkpoint`` it also records whether the run was resumed from it
    (``resumed``) and the saved progress it resumed from (``resumed_from``, e.g. ``{"done": 120}``
    frames or ``{"step": 400}``).

    Parameters
    ----------
    system : System
        The sampled system.
    sampler : str
        Sampler name as registered in :data:`boltzflow.samplers.SAMPLERS`.
    seed : int
        Random seed of the run.
    correlated : bool
        Samples form Markov chains / trajectories (errors from autocorrelation).
    normalized_proposal : bool
        Log-weights are ``−u − log q`` with a normalised ``q`` (log Z can be estimated).
    checkpoint : Checkpoint, optional
        The run's checkpoint, after its :meth:`~boltzflow.samplers.checkpoint.Checkpoint.load`.
    **extra
        Sampler-specific settings and diagnostics (JSON-serialisable).

    Examples
    --------
    >>> import boltzflow as bf
    >>> system = bf.System.from_energy(lambda x: 0.5 * (x**2).sum(-1), dim=2, kT=1.0)
    >>> meta = run_metadata(system, "mala", 0, correlated=True, normalized_proposal=False,
    ...                     checkpoint=Checkpoint(None, run={}))
    >>> meta["sampler"], meta["resumed"]
    ('mala', False)
    """
    return {
        "system": system.name,
        "system_source": None if system.source is None else str(system.source),
        "temperature": system.temperature,
        "sampler": sampler,
        "seed": seed,
        "correlated": correlated,
        "normalized_proposal": normalized_proposal,
        **({} if checkpoint is None else checkpoint.resume_metadata()),
        **extra,
    }
